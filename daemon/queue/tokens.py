"""A prompt's length in tokens as each text encoder of the job's model reads it.

Each model family has its own text encoders and limits (daemon.models.families: CLIP reads 77
tokens, SD3's T5 256, Flux's 512, PixArt's 300); a submit is warned, with the count of that
encoder's own tokenizer, for every encoder that will drop part of the prompt. The tokenizers come
from the model's own files: a diffusers directory's `tokenizer*/` folders, or, for a single-file
checkpoint and a built-in not built yet, the config tree its load uses (the model's `config_dir`,
else the one the package ships for the family, which is what the built-ins are built with).

Loading reads local files only and runs in a thread, once per model (and again only when where
its files are changes: a built-in built since, a family found at load); counting a prompt takes
microseconds and runs where the submit does.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.catalog import ModelCatalog, ModelEntry
from daemon.models.families import FAMILIES, Encoder, token_warnings
from daemon.models.shipped import absent_components, built_in_tree, tokenizer_tree

log = logging.getLogger("sai.queue")

Count = Callable[[str], int]
"""A prompt's token count with one tokenizer, special tokens included."""
SPECIALS = 3
"""At most this many tokens of an encoding stand for no byte of the text: CLIP's start and end, T5's
end and the leading `▁` its pre-tokenizer puts before the first word. Every other token of the
byte-level BPE and sentencepiece tokenizers these families use covers at least one UTF-8 byte."""


def estimate(text: str) -> int:
    """About how many tokens `text` is, for an encoder whose tokenizer is not at hand."""
    return math.ceil(len(text.split()) * 1.3) + 2


def load_tokenizer(folder: Path) -> Count:
    """The tokenizer in `folder`, from its `tokenizer.json` (a local file, read by the tokenizers
    library: no hub, no transformers in the daemon). FileNotFoundError when there is none: a slow
    tokenizer's vocab.json/merges.txt or spiece.model alone is not read, its counts are estimated."""
    from tokenizers import Tokenizer

    fast = Tokenizer.from_file(str(folder / "tokenizer.json")) if (folder / "tokenizer.json").is_file() else None
    if fast is None:
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    return lambda text: len(fast.encode(text).ids)


@dataclass
class PromptTokens:
    """One model's tokenizers, one per kind of text encoder its family has (None: estimated)."""

    family: str
    counts: dict[str, Count | None] = field(default_factory=dict)
    shortest: int = 0
    """The fewest tokens any of its encoders reads."""

    def warnings(self, prompt: str) -> list[str]:
        """A warning for each of the family's text encoders that reads less than `prompt`."""
        if not self.counts or len(prompt.encode("utf-8")) + SPECIALS <= self.shortest:
            return []
        counted = {kind: estimate(prompt) if count is None else count(prompt) for kind, count in self.counts.items()}
        return token_warnings(self.family, counted, {kind for kind, count in self.counts.items() if count is None})


NOT_JUDGED = PromptTokens("")
"""For a model whose family is not known yet (`auto`, before the load that detects it)."""


class TokenizerCache:
    """Each configured model's PromptTokens, loaded in a thread on its first submit and kept."""

    def __init__(self, models: ModelCatalog) -> None:
        self.models = models
        self._loaded: dict[tuple[str, str, str], asyncio.Task[PromptTokens]] = {}

    def tree(self, entry: ModelEntry, family: str) -> tuple[Path | None, tuple[str, ...]]:
        """Where the model's tokenizer folders are (None: nowhere known), and the components a
        single file runs without (SD3 without T5). Blocking: it may read a single file's header,
        to find the shipped tree that file loads with."""
        files = self.models.files_of(entry)
        if files is not None and (files / "model_index.json").is_file():
            return files, ()
        if entry.config_dir:
            return Path(entry.config_dir).expanduser(), ()
        if files is None:
            return built_in_tree(family), ()  # a built-in not built yet: its tokenizers are the shipped tiny ones
        shipped = tokenizer_tree(files, family) if files.is_file() else None
        return (shipped.path, shipped.left_out) if shipped is not None else (None, ())

    async def of(self, entry: ModelEntry) -> PromptTokens:
        """The tokenizers `entry`'s jobs are counted with; concurrent first submits share one load."""
        family = entry.family_now
        if family not in FAMILIES:
            return NOT_JUDGED
        built = self.models.files_of(entry) is not None
        key = (entry.name, family, str(built))
        task = self._loaded.get(key)
        if task is None:
            task = self._loaded[key] = asyncio.get_running_loop().create_task(
                asyncio.to_thread(lambda: prompt_tokens(entry.name, family, *self.tree(entry, family))))
        return await asyncio.shield(task)


def prompt_tokens(name: str, family: str, tree: Path | None, left_out: tuple[str, ...] = ()) -> PromptTokens:
    """Model `name`'s tokenizers, one per kind of its family's text encoders, from `tree` (blocking:
    file reads); one that is missing or unreadable is logged and its counts estimated. `left_out`:
    components the model runs without beyond those the tree leaves out (shipped.ShippedTree)."""
    encoders: dict[str, Encoder] = {}
    for encoder in FAMILIES[family].encoders:
        encoders.setdefault(encoder.kind, encoder)
    tokens = PromptTokens(family, shortest=min(e.max_tokens for e in FAMILIES[family].encoders))
    absent = [*left_out, *(absent_components(tree) if tree is not None and (tree / "model_index.json").is_file()
                           else [])]
    for kind, encoder in encoders.items():
        if encoder.tokenizer in absent:
            continue  # the model runs without that encoder (SD3 without T5): nothing of the prompt is cut there
        if tree is None:
            tokens.counts[kind] = None
            continue
        try:
            tokens.counts[kind] = load_tokenizer(tree / encoder.tokenizer)
        except Exception as exc:  # any unreadable tokenizer: its count is estimated, submits go on
            log.warning("model %s: no %s tokenizer in %s (%s); its prompts' %s tokens are estimated",
                        name, kind.upper(), tree / encoder.tokenizer, exc, kind.upper())
            tokens.counts[kind] = None
    return tokens
