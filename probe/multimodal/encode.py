"""Rows with an image and/or audio and text -> token ids, modality layout, model inputs.

The model's processor does the work (placeholder expansion, image and audio features), so the
image-token positions are the processor's. For each row we keep what capture and the store need:

* the token ids the language backbone sees (placeholders expanded);
* each token's modality code (0 text, 1 image, 3 audio;
  :func:`probe.multimodal.processors.modality_codes`);
* the stimulus text's own token span (``content``) and the target word's token, located through
  the tokenizer's character offsets in the *expanded* prompt;
* the prompt before expansion and the row's media, so :meth:`MultimodalEncoded.model_inputs`
  can rebuild a batch's pixel values / audio features when it runs (features are never all held
  in memory at once).

A row's media sit before its text in the user turn (the usual layout of LLaVA, Qwen2-VL,
Gemma 3 and Qwen2-Audio prompts); without a chat template the prompt is the placeholders, a
newline and the text.

>>> enc = encode_multimodal(lm.processor, ["A child smiles."], images=["face.png"],
...                         chat_template=True)  # doctest: +SKIP
>>> layout_string(enc.modality[0])  # doctest: +SKIP
't4 i16 t9'
"""

from __future__ import annotations

import bisect
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probe.modality import CODE_NAMES, MODALITY_CODES
from probe.tokens import Encoded, EncodingError, word_span
from probe.multimodal.processors import placeholder

#: Processor outputs with one entry per token (padded like input_ids); the rest are per item.
PER_TOKEN_KEYS = ("token_type_ids", "mm_token_type_ids")
_TEXT_KEYS = ("input_ids", "attention_mask", "offset_mapping", "text_replacement_offsets")
Media = str | Path | Any  # a path, a PIL image, or a 1-D float array of audio samples


@dataclass(frozen=True)
class MultimodalEncoded(Encoded):
    """:class:`~probe.tokens.Encoded` plus what a multimodal forward needs per row.

    Attributes:
        prompts: The text given to the processor (placeholders not yet expanded).
        images, audio: Per row, the row's images / audio clips (paths, PIL images or arrays).
        processor: The model's processor.
    """

    prompts: list[str] = field(default_factory=list)
    images: list[tuple[Media, ...]] = field(default_factory=list)
    audio: list[tuple[Media, ...]] = field(default_factory=list)
    processor: Any = field(default=None, repr=False, compare=False)

    def model_inputs(self, rows: Sequence[int], *, width: int, padding_side: str,
                     device=None, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Image / audio inputs of ``rows`` as one batch (per-token ones padded to ``width``).

        Rebuilt with the processor, and checked to give exactly the ids encoded before.
        """
        per_token: dict[str, list[Tensor]] = {}
        per_item: dict[str, list[Tensor]] = {}
        for r in rows:
            out = _process(self.processor, self.prompts[r], self.images[r], self.audio[r])
            ids = out["input_ids"][0].tolist()
            if ids != self.ids[r]:
                raise EncodingError(f"row {r}: the processor now gives other token ids than when "
                                    "the rows were encoded (did a media file change?)")
            for key, value in out.items():
                if key in _TEXT_KEYS or not isinstance(value, Tensor):
                    continue
                if key in PER_TOKEN_KEYS:
                    per_token.setdefault(key, []).append(_pad(value[0], width, padding_side))
                else:
                    per_item.setdefault(key, []).append(value)
        batch = {k: torch.stack(v) for k, v in per_token.items()}
        batch.update({k: torch.cat(v) for k, v in per_item.items()})
        return {k: _to(v, device, dtype) for k, v in batch.items()}


def _pad(row: Tensor, width: int, side: str) -> Tensor:
    out = row.new_zeros(width)
    if side == "left":
        out[width - len(row):] = row
    else:
        out[:len(row)] = row
    return out


def _to(value: Tensor, device, dtype) -> Tensor:
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value.to(device) if device is not None else value


# ----------------------------------------------------------------------------- encoding
def encode_multimodal(
    processor,
    texts: Sequence[str],
    *,
    images: Sequence[Media | Sequence[Media] | None] | None = None,
    audio: Sequence[Media | Sequence[Media] | None] | None = None,
    chat_template: bool,
    system_prompt: str | None = None,
    target_words: Sequence[str | None] | None = None,
    max_length: int | None = None,
    root: str | Path | None = None,
) -> MultimodalEncoded:
    """Encode rows of text with their images / audio through the model's processor.

    Args:
        processor: the model's processor (``lm.processor``).
        texts: one stimulus text per row.
        images, audio: per row ``None``, one item or a list of items: a path (relative paths
            are resolved against ``root``), a PIL image, or (audio) a float array already at the
            processor's sampling rate. Paths are opened when a batch runs.
        chat_template: render each row as a user turn with the processor's chat template.
        system_prompt: replaces the template's system prompt.
        target_words: per row, a word of the text whose last token ``token`` pooling reads.
        max_length: refuse rows longer than this many tokens (image tokens included).
        root: directory that relative media paths are relative to.
    """
    n = len(texts)
    imgs, auds = _per_row(images, n, "images", root), _per_row(audio, n, "audio", root)
    ids, content, target, codes, prompts = [], [], [], [], []
    for i, text in enumerate(texts):
        prompt, lo = render(processor, text, n_images=len(imgs[i]), n_audio=len(auds[i]),
                            chat_template=chat_template, system_prompt=system_prompt)
        out = _process(processor, prompt, imgs[i], auds[i], offsets=True)
        row_ids = out["input_ids"][0].tolist()
        offsets = [tuple(map(int, o)) for o in out["offset_mapping"][0].tolist()]
        shift = _shifter(out.get("text_replacement_offsets"))
        a, b = shift(lo), shift(lo + len(text))
        inside = [j for j, (x, y) in enumerate(offsets) if y > x and x < b and y > a]
        if not inside:
            raise EncodingError(f"text {i} ({text[:40]!r}) maps to no tokens")
        ids.append(row_ids)
        prompts.append(prompt)
        content.append((inside[0], inside[-1] + 1))
        codes.append(_codes(processor, row_ids, inside))
        word = target_words[i] if target_words is not None else None
        target.append(_target(offsets, text, word, lo, shift, i))
    _check_length(ids, max_length)
    return MultimodalEncoded(ids=ids, content=content, target=target, modality=codes,
                             prompts=prompts, images=imgs, audio=auds, processor=processor)


def render(processor, text: str, *, n_images: int, n_audio: int, chat_template: bool,
           system_prompt: str | None = None) -> tuple[str, int]:
    """The prompt for the processor and the character offset of ``text`` inside it."""
    for kind, count in (("image", n_images), ("audio", n_audio)):
        token = getattr(processor, f"{kind}_token", None)
        if count and token is None:
            raise EncodingError(f"{type(processor).__name__} takes no {kind} input, but a row "
                                f"has {count} (drop the '{kind}' column or use another model)")
        if token and token in text:
            raise EncodingError(f"a text contains the {kind} placeholder {token!r}; media go in "
                                f"the dataset's '{kind}' column, not in the text: {text[:60]!r}")
    media = [{"type": "image"}] * n_images + [{"type": "audio"}] * n_audio
    if not chat_template:
        prefix = "".join(placeholder(processor, k["type"]) for k in media)
        prompt = f"{prefix}\n{text}" if prefix else text
        return prompt, len(prompt) - len(text)
    messages = [{"role": "user", "content": [*media, {"type": "text", "text": text}]}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    start = prompt.rfind(text)
    if start < 0:
        raise EncodingError("the chat template changed the stimulus text (it is not found "
                            f"verbatim in the rendered prompt): {text[:60]!r}")
    return prompt, start


def layout_string(codes: Sequence[int]) -> str:
    """Run-length modality layout of one row: ``'t4 i16 t9'`` (t text, i image, a audio)."""
    runs: list[list] = []
    for c in codes:
        if runs and runs[-1][0] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return " ".join(f"{CODE_NAMES[c][0]}{k}" for c, k in runs)


def layout_coords(encoded: Encoded) -> dict[str, np.ndarray]:
    """Per-sample store coordinates: the layout string and token counts per modality."""
    if encoded.modality is None:
        return {}
    codes = encoded.modality
    out = {"layout": np.asarray([layout_string(c) for c in codes], dtype=str)}
    for name in ("text", "image", "audio"):
        out[f"n_{name}_tokens"] = np.asarray([sum(x == MODALITY_CODES[name] for x in c)
                                              for c in codes], dtype=np.int64)
    return out


# ----------------------------------------------------------------------------- helpers
def _per_row(values, n: int, name: str, root) -> list[tuple[Media, ...]]:
    if values is None:
        return [()] * n
    if isinstance(values, (str, Path)) or len(values) != n:
        raise EncodingError(f"{name} must be a list with one entry per text ({n}); "
                            f"got {type(values).__name__}")
    out = []
    for v in values:
        items = () if _missing(v) else tuple(v) if isinstance(v, (list, tuple)) else (v,)
        out.append(tuple(_resolve(x, root) for x in items if not _missing(x)))
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _resolve(item, root):
    if isinstance(item, (str, Path)):
        p = Path(item).expanduser()
        if not p.is_absolute() and root is not None:
            p = Path(root) / p
        if not p.is_file():
            raise EncodingError(f"media file {p} does not exist (relative paths are relative to "
                                f"the dataset file's folder{f', {root}' if root else ''})")
        return str(p)
    return item


def _process(processor, prompt: str, images, audio, *, offsets: bool = False) -> dict:
    kwargs: dict = {"return_tensors": "pt"}
    if offsets:
        kwargs.update(return_offsets_mapping=True, return_text_replacement_offsets=True)
    if images:
        kwargs["images"] = [load_image(x) for x in images]
    if audio:
        rate = getattr(getattr(processor, "feature_extractor", None), "sampling_rate", None)
        kwargs["audio"] = [load_audio(x, rate) for x in audio]
        if rate is not None:
            kwargs["sampling_rate"] = rate
    try:
        return dict(processor(text=[prompt], **kwargs))
    except (ValueError, TypeError) as exc:
        raise EncodingError(f"the processor refused a row ({exc}); prompt "
                            f"{prompt[:80]!r}") from None


def load_image(item):
    """A PIL RGB image from a path (or a PIL image as it is)."""
    if not isinstance(item, (str, Path)):
        return item
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise EncodingError(f"cannot read image {item}: {exc}") from None


def load_audio(item, rate: int | None) -> np.ndarray:
    """Mono float32 samples from a ``.wav`` (PCM) or ``.npy`` file, or an array as it is."""
    if not isinstance(item, (str, Path)):
        return np.asarray(item, dtype=np.float32)
    path = Path(item)
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    if path.suffix.lower() != ".wav":
        raise EncodingError(f"audio {path}: use a PCM .wav or a .npy of samples at {rate} Hz")
    with wave.open(str(path), "rb") as w:
        width, channels, got = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if rate is not None and got != rate:
        raise EncodingError(f"audio {path} is sampled at {got} Hz; the model's processor needs "
                            f"{rate} Hz: resample it first (e.g. sox in.wav -r {rate} out.wav)")
    kind = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
    if kind is None:
        raise EncodingError(f"audio {path}: {8 * width}-bit samples are not supported")
    x = np.frombuffer(raw, dtype=kind).astype(np.float32)
    x = (x - 128) / 128 if width == 1 else x / float(np.iinfo(kind).max)
    return x.reshape(-1, channels).mean(1)


def _shifter(replacements):
    """Map a character offset of the prompt to the processor's expanded prompt."""
    def grown(r) -> int:
        return (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0])

    reps = sorted((r["span"][1], grown(r)) for r in (replacements[0] if replacements else []))
    ends = [e for e, _ in reps]
    deltas = np.cumsum([0] + [d for _, d in reps]).tolist()

    def shift(pos: int) -> int:
        return pos + deltas[bisect.bisect_right(ends, pos)]
    return shift


def _codes(processor, ids, content) -> list[int]:
    from probe.multimodal.processors import modality_codes

    codes = modality_codes(processor, ids)
    clash = [j for j in content if codes[j] != 0]
    if clash:
        raise EncodingError(f"token {clash[0]} of a stimulus text is an image/audio token")
    return codes


def _target(offsets, text, word, lo, shift, row) -> int | None:
    if word is None or word != word or word == "":
        return None
    span = word_span(text, word)
    if span is None:
        raise EncodingError(f"row {row}: target word {word!r} does not occur in its text {text!r}")
    a, b = shift(span[0] + lo), shift(span[1] + lo)
    hits = [j for j, (x, y) in enumerate(offsets) if y > x and x < b and y > a]
    if not hits:
        raise EncodingError(f"row {row}: target word {word!r} maps to no token")
    return hits[-1]


def _check_length(ids, max_length) -> None:
    if max_length is None:
        return
    too_long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if too_long:
        raise EncodingError(
            f"{len(too_long)} row(s) are longer than --max-length {max_length} tokens, image and "
            f"audio tokens included (the longest has {max(len(ids[i]) for i in too_long)}; first "
            f"is row {too_long[0]}). Nothing is truncated: raise --max-length")
