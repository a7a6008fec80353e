"""Persistence: how long an emotional stimulus stays readable while the text moves on.

Probes are fitted per layer on a store's pooled activations (the sweep's logistic probe, its
group-aware folds: fitted on the training scenarios only). Every held-out stimulus is then
followed by a continuation -- a neutral passage we ship (``datasets/persistence/``) or the
model's own greedy reply -- and the residual stream is read at **every position** after the
stimulus, in one forward per batch (:func:`probe.forward.run_with_cache`). The probe of the
item's fold reads each position: P(true emotion) and accuracy as a function of the distance
from the stimulus's end, per layer.

Which pooling is read along the way: the probe is trained on ``last`` pooling (the residual
at the last token of the prompt as the store rendered it, i.e. where the assistant's turn
starts). In a causal model the residual at position t is exactly the ``last`` pooling of the
text cut after t, so reading one position at distance d is the probe's own pooling applied to
"stimulus + the first d continuation tokens"; distance 0 is the store's row itself.

Against what: the chance/prior level (the training folds' share of the item's class) and a
**control**: the same continuation after a neutral stimulus (the same scenario's neutral
event when the dataset has a ``neutral`` class, else a neutral sentence we ship), read by the
same probe. ``stimulus - control`` is what the emotional stimulus still contributes at that
distance; CIs are cluster-bootstrap intervals over the items' groups.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from probe.behaviour.paired import Bootstrap
from probe.evaluate import EvalConfig, make_folds
from probe.stats import ProbeError
from probe.store import cached_layers, open_store
from probe.sweep import probe_targets

Mode = Literal["neutral", "generate"]
#: Neutral control stimulus for datasets without a ``neutral`` class.
CONTROL_STIMULUS = "The meeting is on Tuesday at ten in the small room on the second floor."
#: Distance bins of the tables and the heatmap: [lo, hi] token distances, inclusive.
BINS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127), (128, 255),
        (256, 511), (512, 1023))


@dataclass(frozen=True, kw_only=True)
class PersistenceConfig:
    """What to read.

    Attributes:
        mode: ``neutral`` (the shipped passage, the same for every item) or ``generate`` (the
            model's own greedy reply to each stimulus, which the control then reuses).
        max_distance: Continuation tokens read after the stimulus (the passage is cut there).
        passage: A text file to use as the neutral continuation (None: the shipped one).
        site: Store array whose layers are probed and read (a residual-stream site).
        pooling: The store's pooling the probe is trained on; only ``last`` matches a single
            position read along the continuation.
        batch_size: Sequences per forward.
        layers: Layers to probe and read (None: every cached one); the forward stops after
            the deepest.
        max_items: Read at most this many held-out stimuli (whole scenarios, in store order;
            None: all), for a quick look.
        decode_at: Distances where probes are also fitted on the readings themselves.
        eval: Folds, probe C, bootstrap and seed (the sweep's protocol).
    """

    mode: Mode = "neutral"
    max_distance: int = 256
    passage: str | None = None
    site: str = "hook_resid_post"
    pooling: str = "last"
    batch_size: int = 8
    layers: tuple[int, ...] | None = None
    max_items: int | None = None
    decode_at: tuple[int, ...] = (1, 4, 16, 64, 256)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(control=False, lexical=False))


def passage_path() -> Path:
    """The shipped neutral passage (in the wheel, or in a source checkout)."""
    from probe.data.loaders import shipped_file

    found = shipped_file("persistence", "neutral_passage.txt")
    if found is not None:
        return found
    raise ProbeError("the neutral passage (datasets/persistence/neutral_passage.txt) is missing "
                     "from this installation; reinstall emoprobe or pass a passage file")


@dataclass(frozen=True)
class FoldProbes:
    """Probes of every fold at every layer, in raw activation space.

    Attributes:
        coef: ``[F, L, K, d]`` weights; ``intercept``: ``[F, L, K]``.
        classes: The K class labels; ``layers``: the L layers.
        fold: ``[n]`` the fold that holds each usable row out; ``rows``: the usable rows of the
            store; ``y``: their labels; ``groups``: their groups; ``prior``: ``[F, K]`` class
            shares of each fold's training rows.
    """

    coef: np.ndarray
    intercept: np.ndarray
    classes: list[str]
    layers: list[int]
    fold: np.ndarray
    rows: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    prior: np.ndarray

    def log_proba(self, fold: int, X: torch.Tensor) -> torch.Tensor:
        """``[L, T, K]`` log-probabilities of fold ``fold``'s probes on ``X [L, T, d]``."""
        W = torch.as_tensor(self.coef[fold], dtype=X.dtype, device=X.device)
        b = torch.as_tensor(self.intercept[fold], dtype=X.dtype, device=X.device)
        return torch.log_softmax(torch.einsum("ltd,lkd->ltk", X, W) + b[:, None], -1)


def fit_fold_probes(store, *, target: str | None = None,
                    config: PersistenceConfig = PersistenceConfig()) -> FoldProbes:
    """Fit the sweep's logistic probe on every fold's training rows at every cached layer."""
    from probe.engine import fit_probes

    ds = store if hasattr(store, "data_vars") else open_store(store)
    tt = probe_targets(ds, target)
    target, task, y, rows = tt.target, tt.task, tt.y, tt.rows
    if task != "classification":
        raise ProbeError(f"persistence needs a classification target; {target!r} is continuous")
    if config.site not in ds.data_vars or config.pooling not in ds["pooling"].values:
        raise ProbeError(f"the store has no {config.site} with pooling {config.pooling!r}; "
                         "cache it with --pooling last")
    groups = ds["group"].values.astype(str)[rows]
    cfg = config.eval
    folds = make_folds(y, groups, task, cfg)
    layers = cached_layers(ds, config.site)
    if config.layers is not None:
        missing = sorted(set(config.layers) - set(layers))
        if missing:
            raise ProbeError(f"layers {missing} are not cached in the store (it has "
                             f"{layers[0]}-{layers[-1]})")
        layers = sorted(config.layers)
    X = np.asarray(ds[config.site].sel(pooling=config.pooling, layer=layers).values,
                   dtype=np.float32)[rows].transpose(1, 0, 2)  # [L, n, d]
    classes = sorted(np.unique(y).tolist())
    fold = np.full(len(y), -1)
    coef, intercept, prior = [], [], []
    for f, (train, test) in enumerate(folds):
        fit = fit_probes(np.ascontiguousarray(X[:, train]), y[train], task=task, C=cfg.C,
                         tol=cfg.tol, max_iter=cfg.max_iter, device="cpu")
        if list(fit.classes) != classes:
            raise ProbeError(f"fold {f} lacks a class in its training rows; use fewer --folds")
        coef.append(fit.coef)
        intercept.append(fit.intercept)
        prior.append([np.mean(y[train] == c) for c in classes])
        fold[test] = f
    return FoldProbes(coef=np.stack(coef), intercept=np.stack(intercept), classes=classes,
                      layers=layers, fold=fold, rows=rows, y=y, groups=groups,
                      prior=np.asarray(prior))


@dataclass(frozen=True)
class Persistence:
    """Per-position readings of the held-out stimuli and their controls.

    Attributes:
        p_true: ``[2, n, L, D + 1]`` P(the item's class) at distance 0..D from the stimulus's
            end, condition 0 the stimulus, 1 the control; NaN past a continuation's end.
        correct: The same shape, 1.0 where the probe's argmax is the item's class.
        ids, labels, groups, control_ids: ``[n]`` per item; ``n_tokens``: continuation tokens.
        prior: ``[n]`` share of the item's class in its fold's training rows.
        layers, classes: As in :class:`FoldProbes`.
        continuations: The continuation text of every item (the passage, or its reply).
        decode_at: Distances where probes were also fitted on the readings themselves.
        decode_correct: ``[2, n, L, len(decode_at)]`` out-of-fold correctness of those
            position-specific probes (NaN where a sequence had ended), or None.
    """

    p_true: np.ndarray
    correct: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    control_ids: np.ndarray
    n_tokens: np.ndarray
    prior: np.ndarray
    layers: list[int]
    classes: list[str]
    continuations: list[str]
    decode_at: tuple[int, ...] = ()
    decode_correct: np.ndarray | None = None


def decode_correct(kept: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: EvalConfig
                   ) -> np.ndarray:
    """Out-of-fold correctness ``[2, n, L, J]`` of probes fitted on the readings AT each kept
    distance (stimulus and control separately; group folds over the items): is the emotion
    still linearly decodable there at all, whether or not the end-of-prompt probe transfers?"""
    from probe.evaluate import cross_val_predict

    out = np.full(kept.shape[:-1], np.nan)
    for c in range(2):
        for j in range(kept.shape[3]):
            have = ~np.isnan(kept[c, :, 0, j, 0])
            if len(np.unique(y[have])) < 2 or len(np.unique(groups[have])) < cfg.n_folds:
                continue
            yy, gg = y[have], groups[have]
            folds = make_folds(yy, gg, "classification", cfg)
            X = np.ascontiguousarray(kept[c, have, :, j].transpose(1, 0, 2))
            proba = cross_val_predict(X, yy, folds, task="classification", config=cfg)
            classes = np.array(sorted(np.unique(yy)))
            hit = (classes[proba.argmax(-1)] == yy[None]).astype(float)  # [L, n_have]
            hit[np.isnan(proba[..., 0])] = np.nan
            out[c, have, :, j] = hit.T
    return out


def _controls(ds, probes: FoldProbes) -> tuple[np.ndarray, list[int | None]]:
    """Items (usable rows that are not ``neutral``) and each one's control row (the same
    group's neutral row) or None (use :data:`CONTROL_STIMULUS`)."""
    neutral = {}
    if "neutral" in probes.classes:
        for i in np.flatnonzero(probes.y == "neutral"):
            neutral.setdefault(probes.groups[i], i)
    items = np.flatnonzero(probes.y != "neutral")
    if not len(items):
        raise ProbeError("no emotional items to read (every usable row is neutral)")
    return items, [neutral.get(probes.groups[i]) for i in items]


def _whole_groups(groups: np.ndarray, n: int) -> np.ndarray:
    """Mask of the first groups (in order of appearance) whose items add up to at most n."""
    order = list(dict.fromkeys(groups))
    counts = {g: int((groups == g).sum()) for g in order}
    chosen, total = set(), 0
    for g in order:
        if total + counts[g] > n and chosen:
            break
        chosen.add(g)
        total += counts[g]
    return np.array([g in chosen for g in groups])


def _prompts(lm, ds, texts: Sequence[str]):
    from probe.tokens import encode

    prov = ds.attrs["emoprobe"]
    if bool(prov.get("chat_template")) != bool(lm.chat_template):
        raise ProbeError("the store was cached with chat_template="
                         f"{prov.get('chat_template')} but the model is loaded with "
                         f"{lm.chat_template}; load it as the store was made")
    return encode(lm.tokenizer, list(texts), chat_template=lm.chat_template,
                  system_prompt=prov.get("system_prompt")).ids


def _continuations(lm, prompts: list[list[int]], config: PersistenceConfig,
                   progress: bool) -> list[list[int]]:
    """Token ids after each prompt: the passage (cut at ``max_distance``) or greedy replies."""
    if config.mode == "neutral":
        text = Path(config.passage or passage_path()).read_text(encoding="utf-8").strip()
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:config.max_distance]
        return [list(ids) for _ in prompts]
    if config.mode != "generate":
        raise ProbeError(f"unknown persistence mode {config.mode!r}; choose neutral or generate")
    from probe.forward import generate_batch
    from probe.tokens import Encoded

    stops = {lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id}
    out = []
    for i in _batches(len(prompts), config.batch_size, progress, "generating"):
        part = [prompts[j] for j in i]
        enc = Encoded(ids=part, content=[(0, len(p)) for p in part], target=[None] * len(part))
        gen = generate_batch(lm, enc, max_new_tokens=config.max_distance)
        for row in gen.new_ids.tolist():
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
    return out


def _batches(n: int, size: int, progress: bool, what: str):
    starts = range(0, n, size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=what, unit="batch")
    for s in starts:
        yield list(range(s, min(n, s + size)))


def read_along(lm, probes: FoldProbes, seqs: list[list[int]], starts: Sequence[int],
               folds: Sequence[int], *, max_distance: int, site: str = "hook_resid_post",
               batch_size: int = 8, keep: Sequence[int] = (), progress: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Fold ``folds[i]``'s probes on sequence i's residual at positions ``starts[i] + 0..D``,
    one forward per batch.

    Returns:
        ``[n, L, D + 1, K]`` log-probabilities (NaN past a sequence's end) and, if ``keep``
        names distances, the raw residuals there, ``[n, L, len(keep), d]`` (else None).
    """
    from probe.forward import make_batch, run_with_cache
    from probe.sites import Site
    from probe.tokens import Encoded

    sites = [Site(site, layer) for layer in probes.layers]
    L, K, D = len(sites), len(probes.classes), max_distance
    out = np.full((len(seqs), L, D + 1, K), np.nan, dtype=np.float32)
    kept = None
    for rows in _batches(len(seqs), batch_size, progress, "reading"):
        part = [seqs[i] for i in rows]
        enc = Encoded(ids=part, content=[(0, len(s)) for s in part], target=[None] * len(part))
        batch = make_batch(lm, enc, padding_side="right")
        with torch.no_grad():
            _, cache = run_with_cache(lm, batch, sites, stop=True)
        for b, i in enumerate(rows):
            s = starts[i]
            e = min(len(seqs[i]), s + D + 1)
            X = torch.stack([cache[st][b, s:e] for st in sites]).float()  # [L, T, d]
            out[i, :, :e - s] = probes.log_proba(int(folds[i]), X).cpu().numpy()
            if keep:
                if kept is None:
                    kept = np.full((len(seqs), L, len(keep), X.shape[-1]), np.nan, np.float32)
                for j, dist in enumerate(keep):
                    if dist < e - s:
                        kept[i, :, j] = X[:, dist].cpu().numpy()
        del cache
    return out, kept


def read_persistence(lm, store, *, target: str | None = None,
                     config: PersistenceConfig = PersistenceConfig(),
                     progress: bool = False) -> Persistence:
    """Fit the fold probes, build stimulus and control sequences, read them along the way."""
    if config.max_distance < 1:
        raise ProbeError(f"max_distance must be >= 1, got {config.max_distance}")
    ds = store if hasattr(store, "data_vars") else open_store(store)
    probes = fit_fold_probes(ds, target=target, config=config)
    items, control_rows = _controls(ds, probes)
    if config.max_items is not None:
        keep = _whole_groups(probes.groups[items], config.max_items)
        items, control_rows = items[keep], [c for c, k in zip(control_rows, keep) if k]
    texts = ds["text"].values.astype(str)[probes.rows]
    prompts = _prompts(lm, ds, [texts[i] for i in items])
    control_texts = [texts[c] if c is not None else CONTROL_STIMULUS for c in control_rows]
    control_prompts = _prompts(lm, ds, control_texts)
    conts = _continuations(lm, prompts, config, progress)
    seqs = [p + c for p, c in zip(prompts, conts)] + [p + c for p, c in zip(control_prompts, conts)]
    starts = [len(p) - 1 for p in prompts] + [len(p) - 1 for p in control_prompts]
    fold = probes.fold[items]
    keep = tuple(d for d in config.decode_at if d <= config.max_distance)
    logp, kept = read_along(lm, probes, seqs, starts, np.concatenate([fold, fold]),
                            max_distance=config.max_distance, site=config.site,
                            batch_size=config.batch_size, keep=keep, progress=progress)
    logp = logp.reshape(2, len(items), *logp.shape[1:])
    k = np.array([probes.classes.index(c) for c in probes.y[items]])
    p_true = np.exp(np.take_along_axis(logp, k[None, :, None, None, None], -1)[..., 0])
    valid = ~np.isnan(logp[..., 0])
    correct = np.where(valid, (logp.argmax(-1) == k[None, :, None, None]), np.nan)
    ids = ds["sample"].values.astype(str)[probes.rows]
    return Persistence(
        p_true=p_true, correct=correct.astype(np.float32), ids=ids[items],
        labels=probes.y[items], groups=probes.groups[items],
        control_ids=np.array([ids[c] if c is not None else "(control sentence)"
                              for c in control_rows]),
        n_tokens=np.array([len(c) for c in conts]), prior=probes.prior[fold, k],
        layers=probes.layers, classes=probes.classes,
        continuations=[lm.tokenizer.decode(c) for c in conts], decode_at=keep,
        decode_correct=None if kept is None else decode_correct(
            kept.reshape(2, len(items), *kept.shape[1:]), probes.y[items],
            probes.groups[items], config.eval))


def _nan_mean(boot: Bootstrap, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap mean over items of ``x [n, ...]``, ignoring NaN (items past their end)."""
    flat = x.reshape(len(x), -1)
    have = ~np.isnan(flat)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = (boot.weights @ np.where(have, flat, 0.0)) / (boot.weights @ have)
    value, lo, hi = boot.interval(samples)
    return tuple(a.reshape(x.shape[1:]) for a in (value, lo, hi))


def binned(x: np.ndarray, max_distance: int) -> tuple[np.ndarray, list[str]]:
    """Mean of ``x [..., D + 1]`` over each distance bin of :data:`BINS` (NaN-aware)."""
    bins = [(lo, min(hi, max_distance)) for lo, hi in BINS if lo <= max_distance]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a bin past every item's end
        out = np.stack([np.nanmean(x[..., lo:hi + 1], -1) for lo, hi in bins], -1)
    return out, [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in bins]


def persistence_table(p: Persistence, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Tidy rows per layer and distance bin: ``p_true`` and ``accuracy`` for the stimulus,
    the control and their paired difference, plus the ``prior`` and ``chance`` levels."""
    boot = Bootstrap.of(p.groups, n_boot, seed)
    D = p.p_true.shape[-1] - 1
    rows = []
    for metric, x in (("p_true", p.p_true), ("accuracy", p.correct)):
        xb, labels = binned(x, D)  # [2, n, L, B]
        n_at = (~np.isnan(xb[0])).sum(0)  # [L, B]
        for cond, arr in (("stimulus", xb[0]), ("control", xb[1]), ("difference", xb[0] - xb[1])):
            value, lo, hi = _nan_mean(boot, arr)
            rows += [{"condition": cond, "metric": metric, "layer": layer, "distance": lab,
                      "value": float(value[s, b]), "ci_low": float(lo[s, b]),
                      "ci_high": float(hi[s, b]), "n": int(n_at[s, b])}
                     for s, layer in enumerate(p.layers) for b, lab in enumerate(labels)]
    if p.decode_correct is not None:
        for cond, arr in (("stimulus", p.decode_correct[0]), ("control", p.decode_correct[1]),
                          ("difference", p.decode_correct[0] - p.decode_correct[1])):
            value, lo, hi = _nan_mean(boot, arr)
            n_at = (~np.isnan(arr)).sum(0)
            rows += [{"condition": cond, "metric": "decode_accuracy", "layer": layer,
                      "distance": str(dist), "value": float(value[s, j]),
                      "ci_low": float(lo[s, j]), "ci_high": float(hi[s, j]),
                      "n": int(n_at[s, j])}
                     for s, layer in enumerate(p.layers) for j, dist in enumerate(p.decode_at)]
    rows.append({"condition": "prior", "metric": "p_true", "value": float(p.prior.mean()),
                 "n": len(p.ids)})
    rows.append({"condition": "chance", "metric": "accuracy", "value": 1 / len(p.classes),
                 "n": len(p.ids)})
    if p.decode_correct is not None:
        rows.append({"condition": "chance", "metric": "decode_accuracy",
                     "value": 1 / len(np.unique(p.labels)), "n": len(p.ids)})
    table = pd.DataFrame(rows)
    table["layer"] = pd.array([None if pd.isna(v) else int(v) for v in table["layer"]],
                              dtype="Int64")
    return table.assign(site=None, pooling="last")


def curves(p: Persistence, layers: Sequence[int], *, n_boot: int = 1000, seed: int = 0
           ) -> dict[int, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per-position ``p_true`` of the stimulus, the control and their difference at some
    layers, with CIs: ``{layer: {condition: (value, ci_low, ci_high)}}``."""
    boot = Bootstrap.of(p.groups, n_boot, seed)
    out = {}
    for layer in layers:
        s = p.layers.index(layer)
        out[layer] = {"stimulus": _nan_mean(boot, p.p_true[0, :, s]),
                      "control": _nan_mean(boot, p.p_true[1, :, s]),
                      "difference": _nan_mean(boot, p.p_true[0, :, s] - p.p_true[1, :, s])}
    return out


def items_table(p: Persistence) -> pd.DataFrame:
    """One row per item, layer and distance bin: P(true) after the stimulus and the control."""
    D = p.p_true.shape[-1] - 1
    xb, labels = binned(p.p_true, D)  # [2, n, L, B]
    n, L, B = xb.shape[1:]
    idx = np.indices((n, L, B)).reshape(3, -1)
    return pd.DataFrame({
        "id": p.ids[idx[0]], "class": p.labels[idx[0]], "group": p.groups[idx[0]],
        "control_id": p.control_ids[idx[0]], "n_tokens": p.n_tokens[idx[0]],
        "layer": np.asarray(p.layers)[idx[1]], "distance": np.asarray(labels)[idx[2]],
        "p_true": xb[0].reshape(-1), "p_true_control": xb[1].reshape(-1)})
