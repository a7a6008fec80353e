"""Turn stimulus texts into token ids, with the chat template and the spans pooling needs.

For every text we keep the token ids the model sees, the token span of the stimulus itself
(``content``: excluding the template and system prompt), and optionally the token of a target
word (for ``token`` pooling). Spans come from the fast tokenizer's character offsets, so they
are exact for any template.

>>> enc = encode(tok, ["I lost my keys."], chat_template=True)  # doctest: +SKIP
>>> enc.content[0]  # doctest: +SKIP
(22, 27)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from probe.errors import EmoprobeError


class EncodingError(EmoprobeError, ValueError):
    """Texts cannot be encoded as asked (too long, no target word, no offsets)."""


@dataclass(frozen=True)
class Encoded:
    """Token ids per text plus the content span and target-token index of each.

    ``modality`` (multimodal inputs only, see :mod:`probe.multimodal.encode`) holds each token's
    modality code as the model's processor assigns it: 0 text, 1 image, 2 video, 3 audio.
    """

    ids: list[list[int]]
    content: list[tuple[int, int]]
    target: list[int | None]
    modality: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def render(tokenizer, text: str, *, chat_template: bool, system_prompt: str | None) -> tuple[str, int]:
    """The string fed to the tokenizer and the character offset of ``text`` inside it."""
    if not chat_template:
        return text, 0
    messages = [{"role": "user", "content": text}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    start = rendered.rfind(text)
    if start < 0:
        raise EncodingError(
            "the chat template changed the stimulus text (it is not found verbatim in the rendered "
            f"prompt): {text[:60]!r}. Use --no-chat-template, or clean the text"
        )
    return rendered, start


def word_span(text: str, word: str) -> tuple[int, int] | None:
    """Character span of ``word`` in ``text``: a whole-word match first (any case), else any."""
    m = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE)
    if m is None:
        m = re.search(re.escape(word), text, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else None


_word_span = word_span  # the old private name


def encode(
    tokenizer,
    texts: Sequence[str],
    *,
    chat_template: bool,
    system_prompt: str | None = None,
    target_words: Sequence[str | None] | None = None,
    max_length: int | None = None,
    truncate: bool = False,
) -> Encoded:
    """Tokenize ``texts`` (with the chat template if asked) and locate content and target tokens.

    A text longer than ``max_length`` tokens is refused, or with ``truncate`` cut at the end of
    its content (the template's tokens around it are kept, so ``last`` pooling still reads the
    end of the prompt); see :func:`truncate_row`.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise EncodingError("a fast (Rust) tokenizer is needed for character offsets")
    rendered, starts = zip(*(render(tokenizer, t, chat_template=chat_template,
                                    system_prompt=system_prompt) for t in texts))
    batch = tokenizer(list(rendered), add_special_tokens=not chat_template,
                      return_offsets_mapping=True)
    ids, content, target = [], [], []
    for i, text in enumerate(texts):
        tok_ids, offsets = batch["input_ids"][i], batch["offset_mapping"][i]
        lo, hi = starts[i], starts[i] + len(text)
        inside = [j for j, (a, b) in enumerate(offsets) if b > a and a < hi and b > lo]
        if not inside:
            raise EncodingError(f"text {i} ({text[:40]!r}) maps to no tokens")
        content.append((inside[0], inside[-1] + 1))
        target.append(_target_token(offsets, lo, text, target_words[i] if target_words else None, i))
        ids.append(list(tok_ids))
    if max_length is not None and truncate:
        for i in range(len(ids)):
            if len(ids[i]) > max_length:
                ids[i], content[i], target[i] = truncate_row(ids[i], content[i], target[i],
                                                             max_length, i)
    if max_length is not None:
        too_long = [i for i, x in enumerate(ids) if len(x) > max_length]
        if too_long:
            raise EncodingError(
                f"{len(too_long)} text(s) are longer than --max-length {max_length} tokens (the "
                f"longest has {max(len(ids[i]) for i in too_long)}; first is row {too_long[0]}). "
                "Nothing is truncated silently: raise --max-length, shorten/drop those texts, or "
                "pass --truncate to cut them to --max-length"
            )
    return Encoded(ids=ids, content=content, target=target)


def truncate_row(ids: list[int], content: tuple[int, int], target: int | None, limit: int,
                 row: int) -> tuple[list[int], tuple[int, int], int | None]:
    """Drop the last tokens of a row's content so that the row fits ``limit`` tokens."""
    excess = len(ids) - limit
    lo, hi = content
    if hi - excess <= lo:
        raise EncodingError(f"row {row}: even without its text the prompt has "
                            f"{len(ids) - (hi - lo)} tokens, more than {limit}; shorten the "
                            "system prompt or the template")
    if target is not None and target >= hi - excess:
        raise EncodingError(f"row {row}: its target word lies in the part --truncate cuts "
                            f"(token {target}, the text keeps tokens {lo}-{hi - excess - 1})")
    return ids[:hi - excess] + ids[hi:], (lo, hi - excess), target


def context_limit(config, tokenizer=None) -> int | None:
    """The most tokens the model takes at once: ``max_position_embeddings`` (``n_positions``)
    of its (text) config, or the tokenizer's ``model_max_length`` where that is smaller and
    real (tokenizers without one report ~1e30). None when neither says."""
    text = getattr(config, "text_config", None) or config
    limits = [getattr(text, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**7]
    return min(limits) if limits else None


def _target_token(offsets, lo: int, text: str, word: str | None, row: int) -> int | None:
    if word is None or word != word or word == "":
        return None
    span = _word_span(text, word)
    if span is None:
        raise EncodingError(f"row {row}: target word {word!r} does not occur in its text {text!r}")
    a, b = span[0] + lo, span[1] + lo
    hits = [j for j, (x, y) in enumerate(offsets) if y > x and x < b and y > a]
    if not hits:
        raise EncodingError(f"row {row}: target word {word!r} maps to no token")
    return hits[-1]
