"""Text as the prompt policy compares it, so that look-alikes and invisible characters hide no term.

A term and a prompt are compared as sequences of tokens in several *views*; a term is found when
its tokens appear, in a row, in the prompt's tokens of the same view. Each view:

1. NFKC; default-ignorable code points (joiners, variation selectors, the Hangul fillers, soft
   hyphens...) removed, or, in half of the views, turned into spaces;
2. NFKD with the combining marks dropped (`İ` is `I`, `é` is `e`);
3. upper or lower case (the confusables data is case-sensitive: Cyrillic `К` is Latin `K`);
4. each character mapped to one representative of its class of confusables (Unicode TR39
   `confusables.txt`, as the `confusable_homoglyphs` package ships it), then marks dropped again
   and case folded;
5. split into tokens of letters: spaces, punctuation, `_` and digits all separate. In half of
   the views the split happens before step 4, so `bomb1` is `bomb` and `b0mb` (0 is confusable
   with o) is `bomb` too.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import regex
from confusable_homoglyphs.confusables import confusables_data

_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_MARKS = regex.compile(r"\p{Mn}+")
_NOT_LETTERS = regex.compile(r"[^\p{L}]+")


@lru_cache(maxsize=1)
def _confusable_table() -> dict[int, str]:
    """For str.translate: each confusable character to its class's representative (an ASCII
    letter when the class has one, lower case first), or to its prototype sequence when that is
    longer than one character (`m` is `rn`)."""
    parent: dict[str, str] = {}

    def find(ch: str) -> str:
        while (up := parent.get(ch, ch)) != ch:
            parent[ch] = parent.get(up, up)
            ch = up
        return ch

    sequences: dict[str, str] = {}
    seen: set[str] = set()
    for source, homoglyphs in confusables_data.items():
        for glyph in homoglyphs:
            target = glyph["c"].replace("\u200e", "")  # the data wraps right-to-left glyphs in LRMs
            if len(source) == 1 and len(target) == 1:
                seen.update((source, target))
                a, b = find(source), find(target)
                if a != b:
                    parent[a] = b
            elif len(source) == 1 and target:
                sequences[source] = target
    classes: dict[str, list[str]] = {}
    for ch in seen:
        classes.setdefault(find(ch), []).append(ch)
    table: dict[int, str] = {ord(k): v for k, v in sequences.items()}
    for members in classes.values():
        rep = min(members, key=lambda c: (not (c.isascii() and c.islower()), not (c.isascii() and c.isalpha()),
                                          not c.isascii(), c))
        table.update({ord(ch): rep for ch in members if ch != rep})
    return table


def _letters(text: str) -> str:
    return _MARKS.sub("", unicodedata.normalize("NFKD", text))


def _fold(text: str) -> str:
    return _letters(text.translate(_confusable_table())).casefold()


_fold_token = lru_cache(maxsize=65536)(_fold)
"""Per-token folding, cached: prompts repeat their words."""


def _tokens(text: str) -> list[str]:
    return [t for t in _NOT_LETTERS.split(text) if t]


def _joined(tokens: list[str]) -> str:
    return f" {' '.join(tokens)} "


def views(text: str) -> list[str]:
    """`text` in every view, always in the same order: tokens joined by single spaces, with a
    space at either end, so that a term is found with `in`."""
    nfkc = unicodedata.normalize("NFKC", text)
    hidden = _IGNORABLE.search(nfkc) is not None
    out: list[str] = []
    for ignorable in ("", " "):
        if out and not hidden:
            return out * 2
        base = _letters(_IGNORABLE.sub(ignorable, nfkc) if hidden else nfkc)
        for cased in (base.upper(), base.lower()):
            out.append(_joined([folded for t in _tokens(cased) if (folded := _fold_token(t))]))
            out.append(_joined(_tokens(_fold(cased))))
    return out


class TermMatcher:
    """Which of `terms` a text contains, in any view."""

    def __init__(self, terms: Iterable[str]) -> None:
        forms = ((term, views(term)) for term in terms)
        self.terms = [(term, found) for term, found in forms if any(f.strip() for f in found)]

    def __bool__(self) -> bool:
        return bool(self.terms)

    def find(self, seen: list[str]) -> list[str]:
        """The terms found in a text whose `views` are `seen`."""
        return [term for term, forms in self.terms
                if any(form.strip() and form in view for form, view in zip(forms, seen))]
