"""The `/` filter language of the panes: `state:running !user:bob lighthouse`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Term:
    text: str
    field: str | None
    negate: bool


class RowFilter:
    """Words that must all match (case-insensitive substrings). `field:value` matches one field;
    a leading `!` negates a word. `state:running !user:bob lighthouse`."""

    def __init__(self, text: str = "") -> None:
        self.text = text.strip()
        self.terms: list[Term] = []
        for word in self.text.split():
            negate = word.startswith("!")
            word = word[1:] if negate else word
            field, sep, value = word.partition(":")
            if sep and field and value:
                self.terms.append(Term(value.lower(), field.lower(), negate))
            elif word:
                self.terms.append(Term(word.lower(), None, negate))

    def __bool__(self) -> bool:
        return bool(self.terms)

    def matches(self, fields: dict[str, str]) -> bool:
        for term in self.terms:
            if term.field is None:
                hit = any(term.text in value for value in fields.values())
            else:
                hit = term.text in fields.get(term.field, "")
            if hit == term.negate:
                return False
        return True


def filtered(items: Iterable[Any], row_filter: RowFilter, fields: Callable[[Any], dict[str, str]]) -> list[Any]:
    if not row_filter:
        return list(items)
    return [item for item in items if row_filter.matches(fields(item))]
