"""System prompts (personas, instructions): how they move the representation and the answers.

Each persona is a system prompt given through the chat template; the same stimuli are cached
once per persona (``probe.cache.cache_activations`` with ``CacheConfig.system_prompt``; the
store key includes the system prompt). :func:`representation_shift` then measures, per layer,
how far each persona moves the pooled representation of the *same* items relative to the
baseline (``none``: the template's own system prompt):

* along **probe directions**: a probe fitted on the baseline store's training folds reads the
  held-out items of every persona (cross-fitted: no item is read by a probe that saw it); the
  shift of its class-centred logits (``log p_k - mean_j log p_j``) and of its probabilities;
* along **mean-difference directions**: class mean minus the mean of the class means, from the
  baseline's training folds, unit length; the shift of the projection in units of the training
  projections' standard deviation.

Both also for the contrast of a positive and a negative class (``happiness-sadness``,
``positive-negative``, ...), the valence axis. CIs: paired cluster bootstrap over groups.
:func:`answer_shift` compares the zero-shot answer distributions of two personas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from probe.behaviour.paired import Bootstrap
from probe.evaluate import EvalConfig, cross_val_predict, make_folds
from probe.stats import ProbeError
from probe.store import cached_layers, open_store
from probe.sweep import probe_targets

#: Personas and one instruction, as system prompts (None: the chat template's default).
PERSONAS: dict[str, str | None] = {
    "none": None,
    "cheerful": "You are a cheerful assistant.",
    "gloomy": "You are a gloomy assistant.",
    "calm": "You are a calm assistant.",
    "instruction": "Always answer in an upbeat, enthusiastic tone.",
}
#: Pairs of personas with the same sentence frame, compared with each other directly.
CONTRASTS = (("cheerful", "gloomy"),)
POSITIVE = ("happiness", "joy", "positive", "love")
NEGATIVE = ("sadness", "negative", "anger", "fear")
SHIFT_COLUMNS = ("persona", "direction", "site", "layer", "pooling", "class", "metric", "value",
                 "ci_low", "ci_high", "n")


@dataclass(frozen=True, kw_only=True)
class ShiftConfig:
    """What to measure.

    Attributes:
        site: Store array (with layers) to read.
        poolings: Poolings (None: every pooling the stores share).
        eval: Folds, probe regularisation, bootstrap and seed (the sweep's protocol).
    """

    site: str = "hook_resid_post"
    poolings: tuple[str, ...] | None = None
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(control=False, lexical=False))


def valence_contrast(classes: Sequence[str]) -> tuple[str, str] | None:
    """The (positive, negative) class pair that spans the valence axis, if the classes have one."""
    pos = next((c for c in POSITIVE if c in classes), None)
    neg = next((c for c in NEGATIVE if c in classes), None)
    return (pos, neg) if pos and neg else None


def _open_all(stores: Mapping[str, object], baseline: str):
    if baseline not in stores:
        raise ProbeError(f"the baseline persona {baseline!r} has no store; got {list(stores)}")
    opened = {k: v if hasattr(v, "data_vars") else open_store(v) for k, v in stores.items()}
    ids = opened[baseline]["sample"].values.astype(str)
    for name, ds in opened.items():
        if not np.array_equal(ds["sample"].values.astype(str), ids):
            raise ProbeError(f"store of persona {name!r} holds other samples than the baseline's;"
                             " cache every persona from the same dataset and --limit")
    return opened


def representation_shift(stores: Mapping[str, object], *, target: str | None = None,
                         baseline: str = "none", config: ShiftConfig = ShiftConfig(),
                         contrasts: Sequence[tuple[str, str]] = CONTRASTS) -> pd.DataFrame:
    """Per-layer shift of each persona's representation along probe and mean-difference
    directions, relative to ``baseline`` (see module doc).

    Args:
        stores: ``{persona: store path or opened store}``, all of the same dataset.
        target: The classification target whose directions are used.
        baseline: The persona the others are compared with.
        config: See :class:`ShiftConfig`.
        contrasts: Persona pairs ``(a, b)`` also compared with each other directly (rows
            ``"a-vs-b"``, where both have a store): personas that share a sentence frame
            ("You are a cheerful / gloomy assistant.") differ only in their emotional word,
            so their contrast is free of what any replaced system prompt does.

    Returns:
        A tidy table (``SHIFT_COLUMNS``): directions ``probe-logit``, ``probe-probability``,
        ``mean-difference``; ``class`` a class name or a ``pos-neg`` contrast.
    """
    opened = _open_all(stores, baseline)
    base = opened[baseline]
    t = probe_targets(base, target)
    target, task, y, rows = t.target, t.task, t.y, t.rows
    if task != "classification":
        raise ProbeError(f"persona shifts need a classification target; {target!r} is continuous")
    groups = base["group"].values.astype(str)[rows]
    cfg = config.eval
    folds = make_folds(y, groups, task, cfg)
    boot = Bootstrap.of(groups, cfg.n_bootstrap, cfg.seed, cfg.ci)
    classes = list(np.unique(y))
    layers = cached_layers(base, config.site)
    others = [p for p in opened if p != baseline]
    poolings = config.poolings or [str(p) for p in base["pooling"].values]
    out = []
    for pooling in poolings:
        X = {p: _read(opened[p], config.site, pooling, layers, rows) for p in opened}
        logp = _cross_fitted_logp(X, baseline, others, y, folds, cfg)
        proj = _mean_difference(X, baseline, others, y, folds, classes)
        where = dict(site=config.site, pooling=pooling, n=len(y))
        proj[baseline] = 0.0  # the baseline's shift from itself
        pairs = [(p, baseline) for p in others] + [
            (a, b) for a, b in contrasts if a in others and b in others]
        for a, b in pairs:
            name = a if b == baseline else f"{a}-vs-{b}"
            out += _shift_rows(name, "probe-logit", logp[a] - logp[b], classes, layers,
                               boot, where, centre=True)
            out += _shift_rows(name, "probe-probability", np.exp(logp[a]) - np.exp(logp[b]),
                               classes, layers, boot, where, centre=False)
            out += _shift_rows(name, "mean-difference", proj[a] - proj[b], classes, layers,
                               boot, where, centre=False)
    table = pd.DataFrame(out, columns=list(SHIFT_COLUMNS))
    table["layer"] = pd.array(table["layer"].tolist(), dtype="Int64")
    table.attrs.update(target=target, classes=classes, contrast=valence_contrast(classes),
                       n=len(y), n_folds=len(folds))
    return table


def _read(ds, site: str, pooling: str, layers: list[int], rows: np.ndarray) -> np.ndarray:
    if site not in ds.data_vars or pooling not in ds["pooling"].values:
        raise ProbeError(f"a persona store lacks {site} with pooling {pooling!r}")
    x = np.asarray(ds[site].sel(pooling=pooling, layer=layers).values, dtype=np.float32)[rows]
    return np.ascontiguousarray(x.reshape(len(rows), len(layers), -1).transpose(1, 0, 2))


def _cross_fitted_logp(X: dict, baseline: str, others: list[str], y, folds, cfg
                       ) -> dict[str, np.ndarray]:
    """``{persona: [S, n, K] log-probabilities}`` of probes trained on baseline training rows.

    All personas go through one fit: their rows are stacked after the baseline's and put in
    the test part of the fold that holds the item, never in a training part.
    """
    n, order = len(y), [baseline, *others]
    stacked = np.concatenate([X[p] for p in order], axis=1)
    aug = [(train, np.concatenate([test + k * n for k in range(len(order))]))
           for train, test in folds]
    proba = cross_val_predict(stacked, np.tile(y, len(order)), aug, task="classification",
                              config=cfg)
    logp = np.log(np.clip(proba, 1e-30, None))
    return {p: logp[:, k * n:(k + 1) * n] for k, p in enumerate(order)}


def _mean_difference(X: dict, baseline: str, others: list[str], y, folds, classes
                     ) -> dict[str, np.ndarray]:
    """``{persona: [S, n, K]}`` shift of the projection on each class's unit mean-difference
    direction (from the baseline's training rows), in training-projection SDs."""
    out = {p: np.full(X[baseline].shape[:2] + (len(classes),), np.nan) for p in others}
    for train, test in folds:
        Xt = X[baseline][:, train]
        means = np.stack([Xt[:, y[train] == c].mean(1) for c in classes], -1)  # [S, d, K]
        U = means - means.mean(-1, keepdims=True)
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        sd = (Xt @ U).std(1)  # [S, K]
        for p in others:
            out[p][:, test] = ((X[p][:, test] - X[baseline][:, test]) @ U) / sd[:, None]
    return out


def _shift_rows(persona: str, direction: str, delta: np.ndarray, classes: list[str],
                layers: list[int], boot: Bootstrap, where: dict, *, centre: bool) -> list[dict]:
    """Rows for every class and the valence contrast; ``delta`` is ``[S, n, K]``."""
    if centre:
        delta = delta - delta.mean(-1, keepdims=True)
    columns = {c: delta[..., k] for k, c in enumerate(classes)}
    pair = valence_contrast(classes)
    if pair is not None:
        columns[f"{pair[0]}-{pair[1]}"] = columns[pair[0]] - columns[pair[1]]
    out = []
    for name, d in columns.items():
        value, lo, hi = boot.mean(d.T)  # items x layers
        for s, layer in enumerate(layers):
            out.append({**where, "persona": persona, "direction": direction, "layer": layer,
                        "class": name, "metric": "shift", "value": float(value[s]),
                        "ci_low": float(lo[s]), "ci_high": float(hi[s])})
    return out


def answer_shift(items: Mapping[str, pd.DataFrame], *, baseline: str = "none",
                 n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Zero-shot answers under each persona vs the baseline, per template and variant.

    Args:
        items: ``{persona: items table}`` (same rows, from ``recognise`` with each system
            prompt).

    Returns:
        Rows ``persona, template, variant, class, metric, value, ci_low, ci_high, n`` with
        metrics ``share`` (how often the class is answered), ``share_shift`` (minus the
        baseline's, paired), and for class ``(all)``: ``accuracy`` and ``accuracy_shift``.
    """
    base = items[baseline]
    classes = base.attrs["classes"]
    out = []
    for persona, df in items.items():
        for (template, variant), part in df.groupby(["template", "variant"], sort=False):
            ref = base[(base["template"] == template) & (base["variant"] == variant)]
            ref = ref.set_index("id").loc[part["id"]]
            boot = Bootstrap.of(part["group"].to_numpy(), n_boot, seed)
            said = np.array([[a == c for c in classes] for a in part["answer"]], float)
            said0 = np.array([[a == c for c in classes] for a in ref["answer"]], float)
            key = {"persona": persona, "template": template, "variant": variant, "n": len(part)}
            stats = {("share", c): boot.mean(said[:, k]) for k, c in enumerate(classes)}
            stats[("accuracy", "(all)")] = boot.mean(part["correct"].to_numpy(float))
            if persona != baseline:
                stats.update({("share_shift", c): boot.mean(said[:, k] - said0[:, k])
                              for k, c in enumerate(classes)})
                stats[("accuracy_shift", "(all)")] = boot.mean(
                    part["correct"].to_numpy(float) - ref["correct"].to_numpy(float))
            out += [{**key, "class": c, "metric": m, "value": float(v), "ci_low": float(lo),
                     "ci_high": float(hi)} for (m, c), (v, lo, hi) in stats.items()]
    return pd.DataFrame(out)
