"""Scalar, differentiable metrics that circuits explain, and the emotion directions they use.

A :class:`Metric` maps a forward pass to one number per row. It reads either late
residual-stream values (``sites``; the forward stops after the deepest one) or the logits:

* :func:`direction` -- projection of a residual stream at the last token onto a unit emotion
  direction (Wang et al. 2025): ``direction(v_happy, layer=24)``;
* :func:`logit_diff` -- mean logit of some words minus mean logit of others at the last token;
* :func:`label_logprob` -- log-probability of a label word's first token at the last token;
* :func:`probe_logit` -- a fitted linear probe's logit for one class at a site;
* :func:`says` -- what the model *says*: log-odds, at the reply start, of an emotion's words
  against the other emotions' words (:data:`EMOTION_WORDS`).

A direction is a tensor ``[d_model]`` or anything with ``.directions`` ``{Site: tensor}`` (a
``SteeringVector``); one that carries a model id or weight fingerprint is checked against the
model. :func:`emotion_directions` computes directions from an activation store (the core's
:mod:`probe.directions`; circuits imports nothing from steering).

>>> m = direction(v, layer=24, name="direction:happiness@L24")  # doctest: +SKIP
>>> m(values, batch)  # [batch] projections  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from probe.errors import EmoprobeError
from probe.sites import Site


class MetricError(EmoprobeError, ValueError):
    """A metric that cannot be built or used as asked; the message says what to fix."""


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One number per row of a batch.

    Attributes:
        name: How results name it (``"direction:happiness@L24"``).
        fn: ``fn(values, batch) -> [batch]`` where ``values`` is ``{site: tensor}`` when
            ``sites`` is set, else the logits ``[batch, pos, vocab]``.
        sites: Residual sites the metric reads; empty: it reads logits (full forward).
    """

    name: str
    fn: Callable[..., Tensor]
    sites: tuple[Site, ...] = ()

    @property
    def layer(self) -> int | None:
        """Deepest block the metric needs (None: the whole model and its LM head)."""
        return max(s.layer or 0 for s in self.sites) if self.sites else None

    def __call__(self, out, batch) -> Tensor:
        return self.fn(out, batch)


def _rows(batch) -> Tensor:
    return torch.arange(len(batch), device=batch.last.device)


# ----------------------------------------------------------------------- directions
def as_direction(d, *, d_model: int, site: Site | None = None, lm=None) -> Tensor:
    """A unit ``[d_model]`` tensor from a tensor or a ``SteeringVector``-like object."""
    if hasattr(d, "directions"):
        _check_model(d, lm)
        dirs: Mapping = d.directions
        if site is None or site not in dirs:
            have = ", ".join(str(s) for s in dirs)
            raise MetricError(f"the steering vector has no direction at {site}; it has {have}")
        d = dirs[site]
    d = torch.as_tensor(d, dtype=torch.float32).detach().flatten()
    if d.shape[0] != d_model:
        raise MetricError(f"direction has {d.shape[0]} dimensions but the model's residual stream "
                          f"has {d_model}: was it computed on another model?")
    norm = d.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise MetricError("direction is zero or not finite")
    return d / norm


def _check_model(obj, lm) -> None:
    if lm is None:
        return
    if callable(getattr(obj, "check", None)):  # a steering.vector.SteeringVector
        try:
            obj.check(lm, match="exact")
        except ValueError as exc:
            raise MetricError(f"the direction does not fit this model: {exc}") from None
        return
    prov = dict(getattr(obj, "provenance", None) or getattr(obj, "meta", None) or {})
    model = getattr(obj, "model", None)
    if isinstance(model, str):
        prov.setdefault("model_id", model)
    mine = lm.provenance()
    for key in ("weight_fingerprint", "model_id"):
        if prov.get(key) and mine.get(key) and prov[key] != mine[key]:
            raise MetricError(f"the direction was computed on another model ({key} "
                              f"{prov[key]!r}; this model has {mine[key]!r})")


def direction(d, *, layer: int, lm=None, d_model: int | None = None, name: str | None = None,
              kind: str = "hook_resid_post") -> Metric:
    """Projection of ``blocks.{layer}.{kind}`` at each row's last token onto unit ``d``."""
    site = Site(kind, layer)
    if d_model is None:
        if lm is None:
            raise MetricError("pass lm= or d_model= to check the direction's size")
        d_model = lm.arch.d_model(lm.model)
    if lm is not None and layer >= lm.n_layers:
        raise MetricError(f"layer {layer} is out of range: the model has {lm.n_layers} layers")
    v = as_direction(d, d_model=d_model, site=site, lm=lm)

    def fn(values, batch) -> Tensor:
        x = values[site][_rows(batch), batch.last]
        return x @ v.to(x.device, x.dtype)

    return Metric(name=name or f"direction@L{layer}", fn=fn, sites=(site,))


def _first_token(lm, word: str) -> int:
    ids = lm.tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise MetricError(f"{word!r} encodes to no tokens")
    return ids[0]


def logit_diff(lm, positive: Sequence[str], negative: Sequence[str]) -> Metric:
    """Mean logit of ``positive`` words minus mean logit of ``negative`` ones (first tokens)."""
    if not positive or not negative:
        raise MetricError("logit_diff needs at least one positive and one negative word")
    pos = torch.tensor([_first_token(lm, w) for w in positive])
    neg = torch.tensor([_first_token(lm, w) for w in negative])
    if set(pos.tolist()) & set(neg.tolist()):
        raise MetricError(f"words {list(positive)} and {list(negative)} share a first token")

    def fn(logits, batch) -> Tensor:
        last = logits[_rows(batch), batch.last]
        return last[:, pos].mean(-1) - last[:, neg].mean(-1)

    return Metric(name=f"logit-diff:{','.join(positive)}-{','.join(negative)}", fn=fn)


def label_logprob(lm, word: str) -> Metric:
    """Log-probability of ``word``'s first token at the last position."""
    tok = _first_token(lm, word)

    def fn(logits, batch) -> Tensor:
        return logits[_rows(batch), batch.last].float().log_softmax(-1)[:, tok]

    return Metric(name=f"logprob:{word}", fn=fn)


def probe_logit(probe, label, *, layer: int, kind: str = "hook_resid_post") -> Metric:
    """The logit of class ``label`` of a fitted linear probe (``coef_``, ``intercept_``,
    ``classes_`` as :class:`probe.probes.LogisticProbe`, on raw activations) at the last token.

    ``probe`` may also be a pair ``(weight [d_model], bias)``.
    """
    if isinstance(probe, tuple):
        w, b = (torch.as_tensor(np.asarray(probe[0]), dtype=torch.float32).flatten(), float(probe[1]))
    else:
        classes = list(getattr(probe, "classes_", []))
        if label not in classes:
            raise MetricError(f"probe has no class {label!r}; its classes are {classes}")
        i = classes.index(label)
        coef = np.atleast_2d(probe.coef_)
        row = i if coef.shape[0] == len(classes) else 0  # binary probes keep one row
        sign = -1.0 if coef.shape[0] == 1 and i == 0 else 1.0
        w = sign * torch.as_tensor(coef[row], dtype=torch.float32)
        b = sign * float(np.atleast_1d(probe.intercept_)[row])
    site = Site(kind, layer)

    def fn(values, batch) -> Tensor:
        x = values[site][_rows(batch), batch.last]
        return x @ w.to(x.device, x.dtype) + b

    return Metric(name=f"probe:{label}@L{layer}", fn=fn, sites=(site,))


#: Words whose first token starts a reply expressing each emotion (lower case and capitalised).
EMOTION_WORDS: dict[str, tuple[str, ...]] = {
    "happiness": ("happy", "glad", "joy", "wonderful", "great", "congratulations", "delighted",
                  "yay", "awesome", "excited"),
    "sadness": ("sad", "sorry", "unfortunately", "heartbroken", "grief", "sadly", "tears",
                "lonely", "miss", "loss"),
    "anger": ("angry", "furious", "outrageous", "unacceptable", "rage", "annoyed", "frustrating",
              "ridiculous", "mad", "hate"),
    "fear": ("afraid", "scared", "terrified", "frightening", "fear", "worried", "nervous",
             "anxious", "panic", "dangerous"),
    "surprise": ("wow", "whoa", "surprised", "unexpected", "amazing", "incredible", "shocked",
                 "unbelievable", "astonishing", "really"),
    "disgust": ("disgusting", "gross", "yuck", "revolting", "nasty", "eww", "repulsive", "vile",
                "sickening", "awful"),
}


def emotion_tokens(lm, words: Mapping[str, Sequence[str]] = EMOTION_WORDS) -> dict[str, list[int]]:
    """First tokens of each emotion's words (lower case and capitalised); a token that starts
    words of two emotions is dropped from both."""
    toks = {e: {_first_token(lm, v) for w in ws for v in (w, w.capitalize())} for e, ws in words.items()}
    shared = {t for e in toks for t in toks[e] if any(t in toks[o] for o in toks if o != e)}
    return {e: sorted(t - shared) for e, t in toks.items()}


def says(lm, emotion: str, words: Mapping[str, Sequence[str]] = EMOTION_WORDS) -> Metric:
    """Log-odds, at the last position (the reply start of a chat prompt), that the first token
    is one of ``emotion``'s words rather than another emotion's:
    ``logsumexp(logp[own]) - logsumexp(logp[others])``."""
    if emotion not in words:
        raise MetricError(f"no emotion words for {emotion!r}; says: knows {sorted(words)}")
    toks = emotion_tokens(lm, words)
    own = torch.tensor(toks[emotion])
    other = torch.tensor(sorted({t for e, ts in toks.items() if e != emotion for t in ts}))
    if not len(own) or not len(other):
        raise MetricError(f"no word of {emotion!r} has a first token of its own on this tokenizer")

    def fn(logits, batch) -> Tensor:
        lp = logits[_rows(batch), batch.last].float().log_softmax(-1)
        return lp[:, own].logsumexp(-1) - lp[:, other].logsumexp(-1)

    return Metric(name=f"says:{emotion}", fn=fn)


# ------------------------------------------------------------------------- from strings
_SPEC = re.compile(r"^(?P<kind>direction|logit-diff|logprob|says):(?P<arg>[^@]+)(?:@L(?P<layer>\d+))?$")


def parse_metric_spec(spec: str) -> tuple[str, list[str], int | None]:
    """``"direction:happiness,sadness@L24"`` -> ``("direction", ["happiness", "sadness"], 24)``.

    Forms: ``direction:EMOTION[,EMOTION...]@L<layer>`` (``direction:all@L24`` for every class),
    ``logit-diff:WORD[,WORD]-WORD[,WORD]``, ``logprob:WORD``, ``says:EMOTION[,EMOTION...]``.
    """
    m = _SPEC.match(spec.strip())
    if not m:
        raise MetricError(f"cannot parse metric {spec!r}; use direction:happiness@L24, "
                          "logit-diff:happy,glad-sad,upset, logprob:happy or says:happiness")
    kind, arg, layer = m["kind"], m["arg"], m["layer"]
    if kind == "direction" and layer is None:
        raise MetricError(f"{spec!r}: a direction metric needs a layer, e.g. {spec}@L24")
    if kind != "direction" and layer is not None:
        raise MetricError(f"{spec!r}: {kind} reads the logits; drop @L{layer}")
    if kind == "logit-diff":
        if arg.count("-") != 1:
            raise MetricError(f"{spec!r}: write logit-diff:POSITIVE-NEGATIVE, e.g. "
                              "logit-diff:happy,glad-sad,upset")
        pos, neg = ([w.strip() for w in side.split(",") if w.strip()] for side in arg.split("-"))
        return kind, [pos, neg], None
    if kind == "says":
        bad = [a.strip() for a in arg.split(",") if a.strip() not in EMOTION_WORDS]
        if bad:
            raise MetricError(f"{spec!r}: no emotion words for {bad[0]!r}; says: knows "
                              f"{', '.join(EMOTION_WORDS)}")
    return kind, [a.strip() for a in arg.split(",") if a.strip()], None if layer is None else int(layer)


# ---------------------------------------------------------------------- emotion directions
def emotion_directions(lm, dataset, *, layer: int, groups: Sequence[str] | None = None,
                       target: str | None = None, method: str = "context-agnostic",
                       progress: bool = False, cache_dir=None):
    """``{emotion: Direction}`` at ``blocks.{layer}.hook_resid_post`` (last token).

    Computed by :func:`probe.directions.store_directions` (Wang et al.'s context-agnostic
    method by default; the same directions ``steering.directions`` makes) from the activation
    store of ``dataset`` (cached if missing), using only rows whose group is in ``groups`` (the
    training scenarios): the circuit is then checked on scenarios its direction never saw.
    ``.save(folder)`` writes them in the steering-vector file format.
    """
    from probe.cache import CacheConfig, cache_activations, default_store_path
    from probe.direction_methods import DirectionError
    from probe.directions import store_directions
    from probe.store import open_store

    config = CacheConfig(sites=f"blocks.{layer}.hook_resid_post")
    out = default_store_path(lm, dataset, config, cache_dir)
    store = cache_activations(lm, dataset, config=config, out=out, progress=progress)
    ds = open_store(store, require_complete=False)
    rows = None
    if groups is not None:
        rows = np.isin(np.array([str(g) for g in ds["group"].values]), list(groups))
    try:
        return store_directions(ds, method=method, site="resid_post", layers=[layer],
                                target=target, rows=rows)
    except DirectionError as exc:
        raise MetricError(str(exc)) from None


def direction_tensor(vec, layer: int) -> Tensor:
    """The ``resid_post`` direction of ``layer`` from a SteeringVector (or a tensor as it is)."""
    if hasattr(vec, "directions"):
        return vec.directions[Site("hook_resid_post", layer)].float()
    return torch.as_tensor(vec, dtype=torch.float32)
