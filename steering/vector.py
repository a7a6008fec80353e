"""Steering vectors as values: one direction per site, with provenance, arithmetic and files.

A :class:`SteeringVector` holds ``{Site: Tensor}`` (one float32 CPU vector per site, e.g. the
residual stream of layers 10-19) and ``meta``, the provenance that makes it usable elsewhere:

===================== ===============================================================
``model``             alias or id of the model the vector was made on
``weight_fingerprint`` that model's weight fingerprint (``lm.fingerprint``)
``architecture``      family (``llama``, ``qwen2``, ...), ``d_model``, ``n_layers``
``method``            how it was made (``context-agnostic``, ``mean-diff``, ...)
``emotion``           what +1 means (``happiness``; ``happiness-sadness`` after arithmetic)
``store`` ...         store path, ``dataset``, ``dataset_hash``, ``pooling``, ``layers``
``rms``               ``{site: typical RMS}`` of the site over the store (relative strength)
===================== ===============================================================

Apply one with :meth:`SteeringVector.apply` (a context manager over :mod:`steering.inject`):

>>> vecs = directions(store, method="context-agnostic", layers=range(10, 20))  # doctest: +SKIP
>>> joy = vecs["happiness"]  # doctest: +SKIP
>>> with joy.apply(lm, strength=4.0, positions="last-prompt+generated"):  # doctest: +SKIP
...     print(lm.generate(["Tell me about your day."], max_new_tokens=60))
>>> (joy - vecs["sadness"]).save("joy-minus-sad")  # doctest: +SKIP

Strength (the words of :mod:`probe.interventions`): with ``unit="rms"`` (default) ``strength``
is in units of the site's typical RMS (``sqrt(mean(h**2))`` over the store's rows and
dimensions, per site), so ``strength=4`` adds a vector of norm ``4 * rms * |v|``;
``"absolute"`` adds ``strength * v`` as it is; ``"token-rms"`` uses each position's own RMS at
run time, as Wang et al.'s code does. ``mode="scale"`` takes a ``factor`` instead.

Files: :meth:`save` writes ``NAME.safetensors`` (tensors named by site, the metadata in its
header) and ``NAME.json`` (the same metadata, readable), both atomically, with a SHA-256 of
the tensors; :meth:`load` verifies the checksum and, given a model, that the vector fits it
(``match="exact"``: same weights; ``"architecture"``: same family and shapes). Nothing is
pickled. :func:`steering.gguf_export.export_gguf` writes llama.cpp control vectors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from probe.direction_methods import DirectionError
from probe.directions import FORMAT, Direction, DirectionSet, file_base, site_tensors
from probe.sites import Site, SiteError
from steering.errors import SteeringError
from probe.interventions import Unit
from steering.inject import Setting, steering_hooks

Match = Literal["exact", "architecture", "none"]


@dataclass(frozen=True, eq=False)
class SteeringVector(Direction):
    """One direction per site, plus provenance (see the module docstring for ``meta``): a
    :class:`probe.directions.Direction` (its files, sites and layers) that can steer.

    Attributes:
        directions: ``{Site: Tensor}``, one 1-D float32 CPU vector per site.
        meta: Provenance; arithmetic keeps what both operands agree on.
    """

    def __post_init__(self) -> None:
        try:
            clean = site_tensors(self.directions)
        except DirectionError as exc:
            raise SteeringError(str(exc)) from None
        object.__setattr__(self, "directions", clean)
        object.__setattr__(self, "meta", dict(self.meta))

    # ------------------------------------------------------------------ views
    @property
    def emotion(self) -> str:
        return str(self.meta.get("emotion", ""))

    def __len__(self) -> int:
        return len(self.directions)

    def __iter__(self) -> Iterator[Site]:
        return iter(self.directions)

    def __getitem__(self, site: Site | str) -> Tensor:
        site = Site.parse(site) if isinstance(site, str) else site
        if site not in self.directions:
            raise SteeringError(f"{site} is not in this vector; it has {_names(self.sites)}")
        return self.directions[site]

    def __repr__(self) -> str:
        what = self.meta.get("emotion") or "vector"
        return (f"SteeringVector({what!r}, method={self.meta.get('method')!r}, "
                f"sites={_names(self.sites)}, model={self.meta.get('model')!r})")

    def norms(self) -> dict[Site, float]:
        """L2 norm of each site's vector."""
        return {s: float(v.norm()) for s, v in self.directions.items()}

    def rms(self, site: Site) -> float:
        """The typical RMS of ``site`` recorded when the vector was made (relative strength)."""
        table = self.meta.get("rms") or {}
        if str(site) not in table:
            raise SteeringError(
                f"this vector has no typical RMS for {site}, so unit='rms' has no size; "
                "use unit='absolute' (or 'token-rms'), or make the vector with "
                "steering.directions (which records it)")
        return float(table[str(site)])

    # ------------------------------------------------------------------ arithmetic
    def _combine(self, other: SteeringVector, sign: float, op: str) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        _check_same_model(self.meta, other.meta)
        out = dict(self.directions)
        for site, vec in other.directions.items():
            if site in out and out[site].shape != vec.shape:
                raise SteeringError(f"{site}: cannot combine vectors of {out[site].numel()} and "
                                    f"{vec.numel()} dims")
            out[site] = out[site] + sign * vec if site in out else sign * vec
        meta = _merged_meta(self.meta, other.meta)
        meta["emotion"] = f"{_term(self.emotion)}{op}{_term(other.emotion)}"
        meta["method"] = "arithmetic"
        meta["expression"] = (f"({self.meta.get('expression', self.emotion)}){op}"
                              f"({other.meta.get('expression', other.emotion)})")
        return SteeringVector(out, meta)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0, "-")

    def __mul__(self, factor: float) -> SteeringVector:
        if isinstance(factor, SteeringVector) or not _is_number(factor):
            return NotImplemented
        if not math.isfinite(float(factor)):
            raise SteeringError(f"cannot scale a vector by {factor}")
        meta = dict(self.meta, expression=f"{float(factor):g}*({self.meta.get('expression', self.emotion)})")
        return SteeringVector({s: float(factor) * v for s, v in self.directions.items()}, meta)

    __rmul__ = __mul__

    def __truediv__(self, factor: float) -> SteeringVector:
        if not _is_number(factor) or float(factor) == 0:
            raise SteeringError(f"cannot divide a vector by {factor!r}")
        return self * (1.0 / float(factor))

    def __neg__(self) -> SteeringVector:
        meta = dict(self.meta, emotion=f"-{_term(self.emotion)}",
                    expression=f"-({self.meta.get('expression', self.emotion)})")
        return SteeringVector({s: -v for s, v in self.directions.items()}, meta)

    def normalized(self) -> SteeringVector:
        """Each site's vector scaled to unit L2 norm (a zero vector is an error)."""
        zero = [str(s) for s, v in self.directions.items() if float(v.norm()) == 0.0]
        if zero:
            raise SteeringError(f"cannot normalise zero vectors at {zero}")
        return SteeringVector({s: v / v.norm() for s, v in self.directions.items()}, self.meta)

    def cosine(self, other: SteeringVector) -> dict[Site, float]:
        """Cosine similarity with ``other`` at every site both have."""
        common = [s for s in self.directions if s in other.directions]
        if not common:
            raise SteeringError(f"no site in common: {_names(self.sites)} vs {_names(other.sites)}")
        return {s: float(torch.nn.functional.cosine_similarity(
            self.directions[s].double(), other.directions[s].double(), dim=0)) for s in common}

    def at(self, layers: int | Iterable[int]) -> SteeringVector:
        """The part of the vector at ``layers`` (every one must be present)."""
        wanted = [layers] if isinstance(layers, int) else list(layers)
        missing = sorted(set(wanted) - set(self.layers))
        if missing or not wanted:
            raise SteeringError(f"layers {missing or wanted} are not in this vector; it has "
                                f"layers {self.layers}")
        keep = {s: v for s, v in self.directions.items() if s.layer in wanted}
        return SteeringVector(keep, dict(self.meta, layers=sorted(set(wanted))))

    # ------------------------------------------------------------------ models
    def check(self, lm, *, match: Match = "architecture") -> None:
        """Raise :class:`SteeringError` unless this vector fits ``lm``.

        ``match="exact"`` also needs the same weights (fingerprint); ``"architecture"`` the same
        family, width and depth; ``"none"`` only that every site exists and has the right width.
        """
        prov = lm.provenance()
        if match not in ("exact", "architecture", "none"):
            raise SteeringError(f"match must be 'exact', 'architecture' or 'none', not {match!r}")
        if match == "exact" and self.meta.get("weight_fingerprint") not in (None, prov["weight_fingerprint"]):
            raise SteeringError(
                f"this vector was made on {self.meta.get('model')!r} (weights "
                f"{self.meta.get('weight_fingerprint')}), not on the loaded {prov['model']!r} "
                f"(weights {prov['weight_fingerprint']}); load it with match='architecture' to "
                "use it on a model of the same architecture anyway")
        if match in ("exact", "architecture"):
            for key in ("architecture", "d_model", "n_layers"):
                if self.meta.get(key) not in (None, prov[key]):
                    raise SteeringError(f"this vector is for a model with {key}={self.meta[key]!r}; "
                                        f"the loaded {prov['model']!r} has {key}={prov[key]!r}")
        for site, vec in self.directions.items():
            width = _site_width(lm, site)
            if vec.numel() != width:
                raise SteeringError(f"the vector at {site} has {vec.numel()} dims but the loaded "
                                    f"model's {site.kind} has {width} (a vector for another model?)")

    @contextmanager
    def apply(self, lm, *, strength: float = 1.0, unit: Unit = "rms", factor: float | None = None,
              mode: str = "add", positions: str | range = "last-prompt+generated",
              spread: bool = False, match: Match = "exact"):
        """Steer ``lm`` inside a ``with`` block (hooks removed on exit, whatever happens).

        Args:
            lm: A :class:`probe.models.LoadedModel`.
            strength: The amount added (``"add"``) or the projection set (``"clamp"``), in ``unit``.
            unit: ``"rms"`` (x the site's typical RMS), ``"absolute"`` or ``"token-rms"``.
            factor: For ``mode="scale"``: the multiplier of the projection.
            mode: ``"add"`` the vector, ``"ablate"`` (project it out), ``"clamp"`` the
                projection to ``strength``, or ``"scale"`` the projection by ``factor``.
            positions: ``"all"``, ``"prompt"``, ``"generated"``, ``"last-prompt+generated"``
                (Wang et al.'s ``last_k=1``), ``"last-prompt"`` or a ``range`` of token indices.
            spread: Divide the strength of ``"add"`` evenly over the vector's layers.
            match: How closely the model must match the vector's (see :meth:`check`); a vector
                without a weight fingerprint (made by hand) is checked for shapes only.

        Yields:
            The :class:`probe.hooks.HookManager`.
        """
        self.check(lm, match=match)
        if mode == "scale" and factor is None:
            raise SteeringError("mode='scale' multiplies the projection by factor; pass factor=")
        setting = Setting(vector=self, strength=0.0 if mode in ("scale", "ablate") else strength,
                          unit=unit, factor=factor, mode=mode, positions=positions, spread=spread)
        with lm.hooks(steering_hooks(setting, lm)) as manager:
            yield manager

    # ------------------------------------------------------------------ files
    # checksum() and save(path) are Direction's: the format of probe.directions.write_direction
    @classmethod
    def load(cls, path: str | os.PathLike, lm=None, *, match: Match = "exact") -> SteeringVector:
        """Read a vector :meth:`save` wrote; verify its checksum and, given ``lm``, its fit.

        Args:
            path: ``NAME``, ``NAME.safetensors`` or ``NAME.json``.
            lm: Check the vector against this loaded model (see :meth:`check`).
            match: ``"exact"`` (same weights, default), ``"architecture"`` or ``"none"``.
        """
        meta, tensors, st = read_file(path)
        if meta.get("format") != FORMAT:
            hint = ("; it is a low-rank intervention: read it with steering.lowrank.load_steering"
                    if str(meta.get("format", "")).startswith("emoprobe-lowrank") else "")
            raise SteeringError(f"{st} has format {meta.get('format')}, this emoprobe reads {FORMAT}{hint}")
        want = meta.pop("sha256", None)
        meta.pop("format", None)
        names = meta.pop("sites", list(tensors))
        vec = cls({Site.parse(n): tensors[n] for n in names}, meta)
        if want != vec.checksum():
            raise SteeringError(f"{st} is corrupt: its tensors do not match the checksum saved "
                                "with them; save the vector again")
        if lm is not None:
            vec.check(lm, match=match)
        return vec


def read_file(path: str | os.PathLike) -> tuple[dict, dict[str, Tensor], Path]:
    """``(metadata, tensors, file)`` of a steering file emoprobe wrote (any kind)."""
    from safetensors import safe_open

    base = file_base(path)
    st = base.with_name(base.name + ".safetensors")
    if not st.is_file():
        raise SteeringError(f"no steering vector at {st} (save one with vector.save(...))")
    with safe_open(str(st), framework="pt") as f:
        header = (f.metadata() or {}).get("emoprobe")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if header is None:
        raise SteeringError(f"{st} has no emoprobe metadata; it was not written by "
                            "SteeringVector.save (a GGUF or repeng file? see docs/steering.md)")
    return json.loads(header), tensors, st


# ---------------------------------------------------------------------- collections
class VectorSet(DirectionSet):
    """``{emotion: SteeringVector}`` whose missing keys raise an error listing the emotions;
    ``save(folder)`` writes one ``<emotion>.safetensors`` + ``.json`` per vector."""

    def __missing__(self, key):
        raise SteeringError(f"no direction for emotion {key!r}; this set has {sorted(self)}")

    @classmethod
    def load(cls, folder: str | os.PathLike, lm=None, *, match: Match = "exact") -> VectorSet:
        """Every vector saved in ``folder`` (by :meth:`save` or ``probe directions``)."""
        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise SteeringError(f"no steering vectors (*.safetensors) in {folder}; make them with "
                                "`probe directions --out DIR`")
        out = cls()
        for f in files:
            vec = SteeringVector.load(f, lm, match=match)
            out[vec.emotion or f.stem] = vec
        return out


def cosine_matrix(vectors: Mapping[str, SteeringVector], site: Site) -> tuple[list[str], Tensor]:
    """``(names, [n, n] cosines)`` between vectors at one site."""
    names = [n for n, v in vectors.items() if site in v.directions]
    if len(names) < 1:
        raise SteeringError(f"no vector has {site}")
    m = torch.stack([vectors[n].directions[site].double() for n in names])
    m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return names, (m @ m.T).float()


def layer_cosine(vector: SteeringVector) -> tuple[list[Site], Tensor]:
    """``(sites, [n, n] cosines)`` between one vector's sites (how the direction drifts with depth)."""
    sites = vector.sites
    widths = {vector.directions[s].numel() for s in sites}
    if len(widths) > 1:
        raise SteeringError("layer cosines need sites of one width (one site kind)")
    m = torch.stack([vector.directions[s].double() for s in sites])
    m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return sites, (m @ m.T).float()


# ---------------------------------------------------------------------- helpers
def _site_width(lm, site: Site) -> int:
    from probe.hooks import route

    try:
        route(lm, site)
    except SiteError as exc:
        raise SteeringError(str(exc)) from None
    arch, model = lm.arch, lm.model
    if site.kind in ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v"):
        n, d_head = arch.head_shape(model)
        if site.kind in ("attn.hook_k", "attn.hook_v"):
            n = arch.n_kv_heads(model)
        return d_head if site.head is not None else n * d_head
    if site.kind == "mlp.hook_post":
        return 1 if site.neuron is not None else arch.d_mlp(model)
    return arch.d_model(model)


def _check_same_model(a: Mapping, b: Mapping) -> None:
    for key in ("weight_fingerprint", "d_model"):
        if a.get(key) is not None and b.get(key) is not None and a[key] != b[key]:
            raise SteeringError(f"cannot combine vectors made on different models ({key} "
                                f"{a[key]!r} vs {b[key]!r})")


def _merged_meta(a: Mapping, b: Mapping) -> dict:
    """Keys both operands agree on, plus the union of the per-site RMS tables."""
    out = {k: v for k, v in a.items() if k in b and b[k] == v and k not in ("rms", "norms")}
    rms = {**(b.get("rms") or {}), **(a.get("rms") or {})}
    if rms:
        out["rms"] = rms
    out["operands"] = [{k: m.get(k) for k in ("emotion", "method", "store") if k in m} for m in (a, b)]
    return out


def _term(name: str) -> str:
    return name if name and not any(c in name for c in "+-*") else f"({name})"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) or (isinstance(x, Tensor) and x.numel() == 1)


def _names(sites: Iterable[Site]) -> str:
    sites = list(sites)
    kinds = sorted({s.kind for s in sites})
    if len(kinds) == 1 and all(s.unit is None and s.layer is not None for s in sites):
        return f"blocks.{_ranges(sorted(s.layer for s in sites))}.{kinds[0]}"
    return ", ".join(map(str, sites))


def _ranges(values: list[int]) -> str:
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][1] == v - 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
