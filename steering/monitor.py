"""Live monitoring: what fitted probes and emotion directions read at every token, while the
model generates (steered or not), from the same forward passes -- no second pass.

>>> vecs = directions(store, method="context-agnostic", layers=range(10, 20))  # doctest: +SKIP
>>> probe = load_probe(run_dir, "blocks.16.hook_resid_post", pooling="last")  # doctest: +SKIP
>>> trace = monitor(lm, ["Tell me about your day."], [probe, vecs], max_new_tokens=40,
...                 steer=Setting(vector=vecs["fear"], strength=2.0))  # doctest: +SKIP
>>> trace.top(0, "probe")[:3]  # doctest: +SKIP
[('The', 'neutral', 0.61), (' lights', 'fear', 0.48), ...]
>>> trace_figure(trace, "runs/trace")  # doctest: +SKIP

Readers:

* a saved probe (:class:`probe.saved.SavedProbe`, from a sweep run folder): per-token class
  probabilities, ``softmax(h @ coef.T + intercept)`` at its site. A probe fitted on ``last``
  pooling saw one position per text (where the model is about to answer); read at every
  token it is applied out of its training distribution, which is the point of monitoring but
  worth keeping in mind; a ``content-mean`` probe saw averages and reads single tokens even
  further from its training data;
* a :class:`~steering.vector.SteeringVector`, or ``{emotion: SteeringVector}``: per-token
  projection ``h . u / rms`` on each unit direction, averaged over the vector's sites (in units
  of the site's typical RMS).

Values are read where a hook sits, after any steering hook on the same site (what later
layers see). Position ``t``'s reading is the state after reading token ``t``, i.e. while
predicting token ``t + 1``; the last generated token is never fed back, so it has no reading
(NaN). :class:`TokenReader` is the mechanism alone, for any forward (``lm.logits``, a
persistence experiment's multi-turn generation).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from probe.io import atomic_write
from probe.sites import Site
from steering.vector import SteeringError, SteeringVector


@dataclass(frozen=True)
class _Reader:
    name: str
    kind: str  # "probability" | "projection"
    labels: list[str]
    weights: dict[Site, tuple[Tensor, Tensor]]  # site -> ([K, d], [K]) ; logits or projections


def as_readers(readers) -> list[_Reader]:
    """Normalise probes, vectors and ``{emotion: vector}`` mappings into readers."""
    items = readers if isinstance(readers, (list, tuple)) else [readers]
    out, names = [], set()
    for i, item in enumerate(items):
        r = _one_reader(item, i)
        name, k = r.name, 2
        while name in names:
            name, k = f"{r.name}#{k}", k + 1
        names.add(name)
        out.append(_Reader(name, r.kind, r.labels, r.weights))
    if not out:
        raise SteeringError("no readers given: pass saved probes and/or steering vectors")
    return out


def _one_reader(item, i: int) -> _Reader:
    if hasattr(item, "coef") and hasattr(item, "classes") and hasattr(item, "site"):
        if item.task != "classification":
            raise SteeringError("monitoring reads classification probes (emotion probabilities)")
        w = torch.as_tensor(np.asarray(item.coef), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(item.intercept), dtype=torch.float32)
        return _Reader(f"probe {item.site} ({item.pooling})", "probability", list(item.classes),
                       {item.site: (w, b)})
    if isinstance(item, SteeringVector):
        item = {item.emotion or f"vector{i}": item}
    if isinstance(item, Mapping) and item and all(isinstance(v, SteeringVector) for v in item.values()):
        labels = list(item)
        sites = sorted({s for v in item.values() for s in v.directions})
        weights = {}
        for s in sites:
            rows = []
            for v in item.values():
                if s not in v.directions:
                    raise SteeringError(f"vectors to read together must share sites; "
                                        f"{v.emotion or '?'} lacks {s}")
                u = v.directions[s] / v.directions[s].norm()
                rms = v.rms(s) if str(s) in (v.meta.get("rms") or {}) else 1.0
                rows.append(u / rms / len(sites))  # mean over sites of h.u / rms
            weights[s] = (torch.stack(rows), torch.zeros(len(rows)))
        method = next(iter(item.values())).meta.get("method", "direction")
        return _Reader(f"{method} directions", "projection", labels, weights)
    raise SteeringError(f"cannot read with {type(item).__name__}: pass a saved probe "
                        "(probe.saved.load_probe), a SteeringVector or {emotion: SteeringVector}")


class TokenReader:
    """Read hooks that record every reader's value at every position of every forward.

    After the forwards, :meth:`columns` gives ``{reader: [batch, columns, K]}`` by absolute
    column (NaN where nothing was read); use it around ``lm.generate`` or ``lm.logits``.
    """

    def __init__(self, lm, readers) -> None:
        self.lm = lm
        self.readers = as_readers(readers)
        self.sites = sorted({s for r in self.readers for s in r.weights})
        self._parts: dict[tuple[str, Site], list[tuple[Tensor, Tensor]]] = {}
        self._manager = None

    def _hook(self, value: Tensor, ctx) -> None:
        flat = value.reshape(value.shape[0], value.shape[1], -1).float()
        cols = ctx.columns.detach().cpu()
        for r in self.readers:
            if ctx.site in r.weights:
                w, b = r.weights[ctx.site]
                if flat.shape[-1] != w.shape[1]:
                    raise SteeringError(f"reader {r.name} has {w.shape[1]} dims at {ctx.site}; "
                                        f"the model's value has {flat.shape[-1]}")
                out = flat @ w.to(flat.device).T
                self._parts.setdefault((r.name, ctx.site), []).append((cols, out.detach().cpu()))

    def __enter__(self) -> TokenReader:
        self._parts.clear()
        self._manager = self.lm.hooks({s: self._hook for s in self.sites})
        self._manager.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._manager.__exit__(*exc)

    def columns(self, width: int) -> dict[str, np.ndarray]:
        """``{reader: [batch, width, K]}`` by absolute column, NaN where unread: probabilities
        (probes) or projections summed over the reader's sites (directions)."""
        out = {}
        for r in self.readers:
            total = None
            for s in r.weights:
                parts = self._parts.get((r.name, s), [])
                if not parts:
                    continue
                batch, k = parts[0][1].shape[0], parts[0][1].shape[-1]
                grid = torch.full((batch, width, k), float("nan"))
                for cols, vals in parts:
                    keep = cols < width
                    grid[:, cols[keep]] = vals[:, keep]
                total = grid if total is None else total + grid
            if total is None:
                raise SteeringError(f"reader {r.name} read nothing (its sites never ran)")
            total = total + r.weights[next(iter(r.weights))][1]
            if r.kind == "probability":
                total = torch.softmax(total, dim=-1)
            out[r.name] = total.numpy()
        return out


@dataclass(frozen=True)
class Trace:
    """Per-token readings of a monitored generation.

    Attributes:
        texts: Generated texts.
        tokens: Per row, its tokens (prompt with template, then generated), decoded one by one.
        prompt_lengths: Prompt tokens per row (the rest were generated).
        readers: Reader names; ``labels[reader]`` its classes or emotions; ``kinds[reader]``
            ``"probability"`` or ``"projection"``.
        values: ``values[reader][row]``: ``[tokens, K]`` (NaN for the last generated token).
        steer: Description of the steering applied (or None).
    """

    texts: list[str]
    tokens: list[list[str]]
    prompt_lengths: list[int]
    readers: list[str]
    labels: dict[str, list[str]]
    kinds: dict[str, str]
    values: dict[str, list[np.ndarray]]
    steer: dict | None = None

    def matrix(self, row: int, reader: str | None = None):
        """``(tokens, [tokens, K] values, labels, kind)`` of one row, unread tokens dropped."""
        reader = reader or self.readers[0]
        if reader not in self.values:
            raise SteeringError(f"no reader {reader!r}; readers are {self.readers}")
        vals = self.values[reader][row]
        keep = ~np.isnan(vals).any(1)
        toks = [t for t, k in zip(self.tokens[row], keep) if k]
        return toks, vals[keep], self.labels[reader], self.kinds[reader]

    def top(self, row: int, reader: str | None = None, *, generated: bool = True):
        """``[(token, top label, value)]`` per read token (generated ones by default)."""
        reader = reader or self.readers[0]
        vals, labels = self.values[reader][row], self.labels[reader]
        start = self.prompt_lengths[row] - 1 if generated else 0
        out = []
        for t, v in zip(self.tokens[row][start:], vals[start:]):
            if not np.isnan(v).any():
                out.append((t, labels[int(v.argmax())], float(v.max())))
        return out

    def to_dict(self) -> dict:
        return {"texts": self.texts, "tokens": self.tokens, "prompt_lengths": self.prompt_lengths,
                "readers": self.readers, "labels": self.labels, "kinds": self.kinds,
                "values": {r: [np.where(np.isnan(v), None, np.round(v, 6)).tolist() for v in rows]
                           for r, rows in self.values.items()}, "steer": self.steer}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace as JSON (NaN as null)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.to_dict()))
        return path


def monitor(lm, prompts: Sequence[str], readers, *, max_new_tokens: int = 48, steer=None,
            **generate_kwargs) -> Trace:
    """Generate ``prompts`` (optionally steered) and read ``readers`` at every token.

    Args:
        lm: A loaded model.
        prompts: User messages.
        readers: Saved probes, steering vectors, ``{emotion: vector}`` mappings, or a list.
        max_new_tokens: Tokens to generate.
        steer: A :class:`steering.inject.Setting` (or None): generation is steered by it and the
            readers see the steered values.
        **generate_kwargs: Passed to ``model.generate``.
    """
    from probe.forward import generate_batch, make_batch
    from steering.inject import Setting, _check_prompts, steering_hooks

    prompts = _check_prompts(prompts)
    reader = TokenReader(lm, readers)
    for r in reader.readers:
        for s in r.weights:
            from probe.hooks import route

            route(lm, s)  # a clear error for a site the model does not have
    batch = make_batch(lm, prompts)
    steer_hooks = {}
    if steer is not None:
        if not isinstance(steer, Setting):
            raise SteeringError("steer must be a steering.inject.Setting (or None)")
        if steer.vector is not None:
            steer.vector.check(lm, match="none")
        steer_hooks = steering_hooks(steer, lm)
    with torch.no_grad(), lm.hooks(steer_hooks), reader:
        gen = generate_batch(lm, batch, max_new_tokens=max_new_tokens, **generate_kwargs)
    width = batch.input_ids.shape[1]
    full = torch.cat([gen.prompt_ids, gen.new_ids], dim=1)
    cols = reader.columns(full.shape[1])
    tok = lm.tokenizer
    stops = {tok.eos_token_id, tok.pad_token_id}
    tokens, lengths, values = [], [], {r.name: [] for r in reader.readers}
    for i in range(len(prompts)):
        first = width - batch.lengths[i]
        new = gen.new_ids[i].tolist()
        n_new = next((j + 1 for j, t in enumerate(new) if t in stops), len(new))
        keep = list(range(first, width + n_new))
        tokens.append([tok.decode([int(full[i, c])]) for c in keep])
        lengths.append(batch.lengths[i])
        for name, grid in cols.items():
            values[name].append(grid[i, keep])
    desc = None
    if steer is not None and steer.vector is not None:
        desc = {"emotion": steer.vector.emotion, "strength": steer.strength, "unit": steer.unit,
                "factor": steer.factor, "mode": steer.mode, "positions": str(steer.positions),
                "layers": steer.vector.layers, "method": steer.vector.meta.get("method")}
    return Trace(texts=gen.texts, tokens=tokens, prompt_lengths=lengths,
                 readers=[r.name for r in reader.readers],
                 labels={r.name: r.labels for r in reader.readers},
                 kinds={r.name: r.kind for r in reader.readers}, values=values, steer=desc)
