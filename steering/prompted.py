"""Directions from the model's own prompted replies ("Always reply in {emotion}."), as Wang et al.

Wang et al. (2025) prompt the model with a system prompt per emotion over scenario prompts,
keep the replies a judge accepts, read the residual stream at the last token, and build
context-agnostic directions (per prompt: subtract the mean over emotions; average; normalise).
Their code (``scripts/02_emotion_direction_extraction/1_dump_residual_aligned_sublayer_
activations.py``) reads the last token of the *prompt* (the chat template's generation prompt,
with the emotion's system prompt), i.e. the state from which the model writes the reply; the
reply itself is used only to keep the rows the judge accepted. ``read="prompt"`` (default) does
that; ``read="generation"`` reads the last token of the reply instead.

Generating is the slow part, so replies are cached as JSON (token ids and text) under
``$EMOPROBE_CACHE`` (or ``./cache``)``/<model>/prompted-<key>.json``, keyed by everything that
determines them; a second call (another site, layers, read position or judge) reuses them.

>>> vecs = directions(lm, method="prompted", layers=range(10, 20))  # doctest: +SKIP
>>> vecs = directions(lm, method="prompted", accept=my_judge)  # keep replies a judge accepts  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from probe.io import atomic_write
from steering.vector import SteeringError, VectorSet

EMOTIONS = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
SYSTEM = "Always reply in {emotion}.\nKeep the reply to at most two sentences."


def default_prompts() -> list[str]:
    """The 64 neutral items of emotion-scenarios (a scenario and an uneventful event)."""
    from probe.data import load_dataset

    ds = load_dataset("emotion-scenarios")
    return [t for t, e in zip(ds.texts, ds.frame["emotion"]) if e == "neutral"]


def prompted_generations(lm, prompts: Sequence[str], emotions: Sequence[str], *,
                         system: str = SYSTEM, max_new_tokens: int = 48, batch_size: int = 32,
                         cache_dir: str | os.PathLike | None = None,
                         progress: bool = False) -> dict:
    """Greedy replies to every prompt under every emotion's system prompt (cached as JSON).

    Returns:
        ``{"emotions", "prompts", "system", "new_ids": [e][p] token ids, "texts": [e][p]}``.
    """
    if not lm.chat_template:
        raise SteeringError("prompted directions need a chat model (a system prompt); this model "
                            "was loaded without a chat template")
    if "{emotion}" not in system:
        raise SteeringError("the system prompt must contain '{emotion}'")
    key = hashlib.sha256(json.dumps([lm.provenance()["weight_fingerprint"], list(prompts),
                                     list(emotions), system, max_new_tokens]).encode()).hexdigest()
    path = _cache_root(cache_dir) / lm.spec.alias / f"prompted-{key[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from probe.forward import generate_batch, make_batch
    from probe.tokens import encode

    new_ids, texts = [], []
    for e in emotions:
        enc = encode(lm.tokenizer, list(prompts), chat_template=True,
                     system_prompt=system.format(emotion=e))
        ids_e, texts_e = [], []
        for i in range(0, len(prompts), batch_size):
            part = _slice(enc, range(i, min(i + batch_size, len(prompts))))
            gen = generate_batch(lm, make_batch(lm, part), max_new_tokens=max_new_tokens)
            ids_e += [_trim(row.tolist(), lm.tokenizer) for row in gen.new_ids]
            texts_e += gen.texts
        if progress:
            print(f"  prompted replies: {e} done ({len(prompts)} prompts)")
        new_ids.append(ids_e)
        texts.append(texts_e)
    out = {"emotions": list(emotions), "prompts": list(prompts), "system": system,
           "max_new_tokens": max_new_tokens, "model": lm.spec.alias,
           "weight_fingerprint": lm.fingerprint, "new_ids": new_ids, "texts": texts}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(out))
    out["path"] = str(path)
    return out


def prompted_directions(lm, *, site: str = "resid_post", layers: Iterable[int] | None = None,
                        emotions: Sequence[str] | None = None, normalize: bool = True,
                        prompts: Sequence[str] | None = None, system: str = SYSTEM,
                        read: Literal["prompt", "generation"] = "prompt",
                        accept: Callable[[str, str], bool] | None = None,
                        max_new_tokens: int = 48, batch_size: int = 32,
                        cache_dir: str | os.PathLike | None = None,
                        progress: bool = False) -> VectorSet:
    """Context-agnostic directions from the model's replies under emotion system prompts.

    Args:
        lm: A loaded chat model.
        site, layers, emotions, normalize: As :func:`steering.directions.directions`
            (default emotions: the six of Wang et al.).
        prompts: User prompts, each a context (default: :func:`default_prompts`).
        system: System prompt with ``{emotion}`` (default: Wang et al.'s).
        read: ``"prompt"`` (last prompt token, Wang et al.'s code) or ``"generation"``.
        accept: ``accept(reply, emotion) -> bool`` keeps only replies a judge accepts (Wang
            et al. used GPT-4o-mini); contexts that lose an emotion are dropped.
        max_new_tokens, batch_size, cache_dir, progress: Generation settings and cache.
    """
    from steering.methods import Rows, compute, site_kind, to_vectors

    if not hasattr(lm, "model") or not hasattr(lm, "tokenizer"):
        raise SteeringError("method 'prompted' needs a loaded model as its source (it generates)")
    if read not in ("prompt", "generation"):
        raise SteeringError(f"read must be 'prompt' or 'generation', not {read!r}")
    emotions = list(emotions) if emotions is not None else list(EMOTIONS)
    prompts = list(prompts) if prompts is not None else default_prompts()
    if len(prompts) < 2 or len(emotions) < 2:
        raise SteeringError("prompted directions need >= 2 prompts and >= 2 emotions")
    kind = site_kind(site)
    layers = list(range(lm.n_layers)) if layers is None else [int(x) for x in layers]
    if not layers or max(layers) >= lm.n_layers or min(layers) < 0:
        raise SteeringError(f"layers {layers} are out of range: the model has {lm.n_layers} (0-"
                            f"{lm.n_layers - 1})")
    gens = prompted_generations(lm, prompts, emotions, system=system, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    X, labels, ctx, keep = _read_rows(lm, gens, kind, layers, read, accept, batch_size)
    meta = {**lm.provenance(), "store": None, "dataset": "prompted",
            "dataset_hash": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]}
    rows = Rows(X, labels, ctx, layers, kind, f"last-{read}", "emotion", meta)
    raw = compute(rows, "context-agnostic", emotions=emotions, neutral=None)
    extra = {"system_prompt": system, "read": read, "n_prompts": len(prompts),
             "n_accepted": int(keep.sum()), "n_generated": int(keep.size),
             "generations": gens.get("path"), "judge": getattr(accept, "__name__", None)}
    return to_vectors(raw, rows, "prompted", normalize=normalize, extra=extra)


def _read_rows(lm, gens: dict, kind: str, layers: list[int], read: str, accept, batch_size: int):
    """Pooled last-token rows ``[n, L, d]`` of every (emotion, prompt) reply kept by ``accept``."""
    import torch

    from probe.capture import iter_blocks
    from probe.sites import Site
    from probe.tokens import Encoded, encode

    ids, labels, ctx, keep = [], [], [], []
    for e, new_e, text_e in zip(gens["emotions"], gens["new_ids"], gens["texts"]):
        enc = encode(lm.tokenizer, gens["prompts"], chat_template=True,
                     system_prompt=gens["system"].format(emotion=e))
        for p, (prompt_ids, new, text) in enumerate(zip(enc.ids, new_e, text_e)):
            ok = accept(text, e) if accept is not None else True
            keep.append(bool(ok))
            if ok and (read == "prompt" or new):
                ids.append(list(prompt_ids) + (list(new) if read == "generation" else []))
                labels.append(e)
                ctx.append(str(p))
    if not ids:
        raise SteeringError("no reply was kept (the judge rejected all of them?)")
    enc = Encoded(ids=ids, content=[(0, len(x)) for x in ids], target=[None] * len(ids))
    sites = [Site(kind, layer) for layer in layers]
    parts: list[np.ndarray] = [None] * len(ids)  # type: ignore[list-item]
    with torch.inference_mode():
        for first, pooled in iter_blocks(lm, enc, sites, ["last"], batch_size=batch_size,
                                         block_size=max(batch_size, 256)):
            block = torch.stack([pooled[s][:, 0] for s in sites], dim=1).cpu().numpy()
            for i, row in enumerate(block):
                parts[first + i] = row
    X = np.stack(parts).astype(np.float32)
    return X.reshape(len(ids), len(layers), -1), np.array(labels), np.array(ctx), np.array(keep)


def _slice(enc, idx: range):
    from probe.tokens import Encoded

    return Encoded(ids=[enc.ids[i] for i in idx], content=[enc.content[i] for i in idx],
                   target=[None] * len(idx))


def _trim(ids: list[int], tok) -> list[int]:
    """Generated ids up to (not including) the first end-of-turn / pad token."""
    stops = {tok.eos_token_id, tok.pad_token_id}
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i]
    return ids


def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("EMOPROBE_CACHE", "cache"))
