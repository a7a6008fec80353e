"""Injection: steering vectors as write hooks, one setting or a whole grid per batch.

A :class:`Setting` names one operator of :mod:`probe.interventions` (``mode``) with that
module's words, on the vector's direction ``u`` at each of its sites:

=========== ===================================== =================================
``mode``    ``h' =``                               meaning
=========== ===================================== =================================
``add``     ``h + s * c * v``                      push along the vector
``ablate``  ``h - (h.u) u``                        remove the component (directional ablation)
``clamp``   ``h + (s * c - h.u) u``                set the projection to ``s * c``
``scale``   ``h + (f - 1) (h.u) u``                multiply the projection by ``f``
=========== ===================================== =================================

``s`` is the setting's ``strength`` (an amount added), ``f`` its ``factor`` (a multiplier);
``c`` is its ``unit``: 1 (``"absolute"``), the site's typical RMS recorded in the vector
(``"rms"``), or each position's own RMS at run time (``"token-rms"``, as Wang et al.'s code).
Each is a :class:`probe.interventions.Shift` ``h + (a + b * h.u) u`` with per-row numbers
``a, b``, so a batch can carry a *different* (vector, strength, mode, positions) in every row:
a ``[batch, d]`` table of directions per site, indexed by row. A strength sweep is one batched
``generate``. A :class:`steering.lowrank.LowRankIntervention` (LoReFT, ``h + s R^T((W - R) h +
b)``) steers the same way, its ``R, W - R, b`` in ``[batch, r, d]`` tables, ``s`` its strength.

>>> settings = [Setting(vector=None, label="unsteered")] + [
...     Setting(vector=joy, strength=s, label=f"joy x{s}") for s in (2, 4, 6)]  # doctest: +SKIP
>>> texts = generate_settings(lm, ["How was your day?"], settings, max_new_tokens=48)  # doctest: +SKIP
>>> texts[2][0]  # setting 2 (joy x4), prompt 0  # doctest: +SKIP

:func:`steering_hooks` gives the ``{site: fn}`` dict for :meth:`probe.models.LoadedModel.hooks`
(rows map to settings in blocks of ``rows_per_setting``); :func:`generate_settings` does the
bookkeeping (rows sorted by prompt length, batches, the KV cache, one prompt prefix per prompt
shared by all its settings when no setting touches the prompt before its last token).
A value that turns NaN or inf (or so large that the next norm overflows) raises
:class:`~steering.vector.SteeringError` at once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args, runtime_checkable

import torch
from torch import Tensor

from probe.hooks import HookContext, HookError, HookFn, position_count
from probe.interventions import (
    LowRankEdit,
    Shift,
    Unit,
    ablate,
    add,
    clamp,
    lowrank_edit,
    safe_limit,
    scale,
    shift,
    shift_amounts,
)
from probe.kvcache import cache_keyword, returned_cache
from probe.sites import Site
from steering.errors import SteeringError, nonfinite_message

Mode = Literal["add", "ablate", "clamp", "scale"]


@runtime_checkable
class Directions(Protocol):
    """What a setting needs of a :class:`steering.vector.SteeringVector` (not imported here)."""

    directions: dict
    layers: list

    def rms(self, site) -> float: ...

    def check(self, lm, *, match: str = "architecture") -> None: ...


@runtime_checkable
class Edits(Protocol):
    """A vector with its own operator per site (``LowRankIntervention``; strength x its edit)."""

    params: dict
    layers: list

    def operator(self, site, *, strength: float, positions) -> LowRankEdit | None: ...

    def check(self, lm, *, match: str = "architecture") -> None: ...


POSITION_MODES = ("all", "prompt", "generated", "last", "last-prompt", "last-prompt+generated",
                  "content")
#: Position modes that leave every prompt token but the last one untouched (prefix reusable).
_PREFIX_SAFE = ("generated", "last-prompt", "last-prompt+generated")


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One point of a steering grid (``vector=None``: unsteered).

    Attributes:
        vector: The steering vector, or None for an unsteered row.
        strength: The amount added (``add``) or the projection set (``clamp``), in ``unit``.
        unit: ``"rms"`` (x the site's typical RMS), ``"absolute"`` or ``"token-rms"``.
        factor: For ``scale``: the multiplier of the projection (1 = no change).
        mode: ``"add"``, ``"ablate"``, ``"clamp"`` or ``"scale"`` (see the module docstring).
        positions: Which tokens: ``"last-prompt+generated"`` (default, Wang et al.'s
            ``last_k=1``), ``"all"``, ``"prompt"``, ``"generated"``, ``"generated:K"`` (the
            generated tokens from the K-th on: the reply's first K + 1 tokens are the
            unsteered model's choice given the prompt, so its opening stays its own),
            ``"opening:K"`` (only the states that predict the reply's first K tokens),
            ``"last-prompt"``, or a ``range`` of token indices within each row (a text span).
        spread: For ``add``: divide the strength evenly across the vector's layers.
        label: Free text carried into results.
    """

    vector: Directions | None = None
    strength: float = 0.0
    unit: Unit = "rms"
    factor: float | None = None
    mode: Mode = "add"
    positions: str | range = "last-prompt+generated"
    spread: bool = False
    label: str = ""

    def __post_init__(self) -> None:
        if self.mode not in get_args(Mode):
            raise SteeringError(f"unknown mode {self.mode!r}; choose add, ablate, clamp or scale")
        if self.unit not in get_args(Unit):
            raise SteeringError(f"unknown unit {self.unit!r}; choose rms, absolute or token-rms")
        try:   # generated:K / opening:K: K is checked
            counted = position_count(self.positions) is not None
        except HookError as e:
            raise SteeringError(str(e)) from None
        named = isinstance(self.positions, range) or self.positions in POSITION_MODES
        if not (counted or named):
            raise SteeringError(f"unknown positions {self.positions!r}; choose one of "
                                f"{', '.join(POSITION_MODES)}, generated:K, opening:K or a range "
                                "of token indices")
        if isinstance(self.positions, range) and len(self.positions) == 0:
            raise SteeringError(f"positions {self.positions} selects no token")
        if not isinstance(self.strength, (int, float)) or not math.isfinite(self.strength):
            raise SteeringError(f"strength must be a finite number, got {self.strength!r}")
        if self.mode == "scale":
            if not isinstance(self.factor, (int, float)) or not math.isfinite(self.factor):
                raise SteeringError(f"mode='scale' multiplies the projection by factor; give a "
                                    f"finite factor (1 = no change), got {self.factor!r}")
            if self.strength:
                raise SteeringError("mode='scale' takes a factor (a multiplier), not a strength "
                                    "(an amount added)")
        elif self.factor is not None:
            raise SteeringError(f"factor multiplies with mode='scale'; mode={self.mode!r} takes a "
                                "strength")
        if self.spread and self.mode != "add":
            raise SteeringError("spread=True divides an added strength across layers; it has no "
                                f"meaning for mode={self.mode!r}")
        if isinstance(self.vector, Edits):
            if self.mode != "add" or self.spread:
                raise SteeringError("a low-rank intervention is applied with mode='add' (strength "
                                    "multiplies its edit; 1 = as trained), without spread")
        elif self.vector is not None and not isinstance(self.vector, Directions):
            raise SteeringError(f"vector must be a SteeringVector, a LowRankIntervention or None, "
                                f"got {type(self.vector).__name__}")

    @property
    def steered(self) -> bool:
        return self.vector is not None and not (self.mode == "add" and self.strength == 0)

    def describe(self) -> str:
        """``"add 2 rms"``, ``"scale x0.5"``, ``"ablate"``: the mode and its number."""
        if isinstance(self.vector, Edits):
            return f"low-rank x{self.strength:g}"
        if self.mode == "scale":
            return f"scale x{self.factor:g}"
        if self.mode == "ablate":
            return "ablate"
        return f"{self.mode} {self.strength:g} {self.unit}"

    def operator(self, site: Site) -> Shift | LowRankEdit | None:
        """The :mod:`probe.interventions` operator at ``site`` (None when the setting leaves it
        alone)."""
        if isinstance(self.vector, Edits):
            return self.vector.operator(site, strength=self.strength, positions=self.positions)
        if self.vector is None or site not in self.vector.directions:
            return None
        v = self.vector.directions[site]
        if float(v.norm()) == 0.0:
            return None
        if self.mode == "ablate":
            return ablate(v, positions=self.positions)
        if self.mode == "scale":
            return scale(v, factor=self.factor, positions=self.positions)
        rms = self.vector.rms(site) if self.unit == "rms" else None
        if self.mode == "add":
            n = max(1, len(self.vector.layers)) if self.spread else 1
            return add(v, strength=self.strength / n, unit=self.unit, rms=rms, positions=self.positions)
        return clamp(v, strength=self.strength, unit=self.unit, rms=rms, positions=self.positions)


# ------------------------------------------------------------------------------ tables
class SettingTable:
    """Per-site direction tables for many settings, and which setting each batch row uses.

    Set :attr:`rows` (``[batch]`` setting index per row) before a forward, or leave it None to
    map rows to settings in blocks of ``rows_per_setting`` (one setting: every row).
    """

    def __init__(self, settings: Sequence[Setting], *, rows_per_setting: int | None = None) -> None:
        self.settings = list(settings)
        if not self.settings:
            raise SteeringError("no settings given")
        bad = [type(s).__name__ for s in self.settings if not isinstance(s, Setting)]
        if bad:
            raise SteeringError(f"settings must be Setting objects, got {bad[0]}")
        self.rows_per_setting = rows_per_setting
        self.rows: Tensor | None = None
        self.active = True
        self._zeros: dict[int, Tensor] = {}
        modes = [_pos_key(s.positions) for s in self.settings]
        self.modes = list(dict.fromkeys(modes))
        self.mode_index = torch.tensor([self.modes.index(m) for m in modes])
        self.tables = {site: self._table(site) for site in self._sites()}

    def _sites(self) -> list[Site]:
        return sorted({s for st in self.settings if st.vector is not None
                       for s in (st.vector.params if isinstance(st.vector, Edits) else st.vector.directions)})

    def _table(self, site: Site) -> dict:
        ops = [st.operator(site) for st in self.settings]
        width = {(v.params[site]["R"] if isinstance(v, Edits) else v.directions[site]).shape[-1]
                 for v in (st.vector for st in self.settings) if v is not None
                 and site in (v.params if isinstance(v, Edits) else v.directions)}
        if len(width) != 1:
            raise SteeringError(f"settings disagree on the width of {site}: {sorted(width)}")
        n, d = len(self.settings), width.pop()
        u, a, b = torch.zeros(n, d), torch.zeros(n), torch.zeros(n)
        tok = torch.zeros(n, dtype=torch.bool)
        for i, op in enumerate(ops):
            if isinstance(op, Shift):
                u[i], a[i], b[i], tok[i] = op.direction, op.offset, op.gain, op.token_rms
        low = [(i, op) for i, op in enumerate(ops) if isinstance(op, LowRankEdit)]
        r = max((int(op.rotation.shape[0]) for _, op in low), default=0)
        R, D, bias, s = torch.zeros(n, r, d), torch.zeros(n, r, d), torch.zeros(n, r), torch.zeros(n)
        for i, op in low:   # ranks may differ: zero rows pad the smaller ones (no edit there)
            k = op.rotation.shape[0]
            R[i, :k], D[i, :k], bias[i, :k], s[i] = op.rotation, op.delta, op.bias, op.strength
        return {"u": u, "a": a, "b": b, "tok": tok, "any_b": bool((b != 0).any()),
                "any_tok": bool(tok.any()), "any_shift": any(isinstance(op, Shift) for op in ops),
                "R": R, "D": D, "bias": bias, "s": s, "any_low": bool(low), "cache": {}}

    def row_settings(self, batch: int) -> Tensor:
        """``[batch]`` setting index of each row."""
        if self.rows is not None:
            if len(self.rows) != batch:
                raise SteeringError(f"{len(self.rows)} row assignments for a batch of {batch}")
            return self.rows
        if len(self.settings) == 1:
            if batch not in self._zeros:
                self._zeros[batch] = torch.zeros(batch, dtype=torch.long)
            return self._zeros[batch]
        per = self.rows_per_setting
        if per is None:
            if batch % len(self.settings):
                raise SteeringError(f"a batch of {batch} rows cannot be split evenly over "
                                    f"{len(self.settings)} settings; pass rows_per_setting")
            per = batch // len(self.settings)
        if per * len(self.settings) != batch:
            raise SteeringError(f"{len(self.settings)} settings x {per} rows per setting = "
                                f"{per * len(self.settings)} rows, but the batch has {batch}")
        return torch.arange(batch) // per

    def hooks(self) -> dict[Site, HookFn]:
        return {site: self._hook(site, table) for site, table in self.tables.items()}

    def _hook(self, site: Site, table: dict) -> HookFn:
        def fn(value: Tensor, ctx: HookContext) -> Tensor | None:
            if not self.active:
                return None
            rows = self.row_settings(value.shape[0])
            u, a, b, tok, R, D, bias, s = self._rows(table, rows, value)
            flat = value.reshape(value.shape[0], value.shape[1], -1) if value.dim() != 3 else value
            if flat.shape[-1] != u.shape[-1]:
                raise SteeringError(f"the vector at {site} has {u.shape[-1]} dims; the model's "
                                    f"value there has {flat.shape[-1]}")
            mask = self._mask(ctx, rows, flat)
            new, size = flat, None
            if table["any_shift"]:
                coef = shift_amounts(flat, u, offset=a, gain=b if table["any_b"] else 0.0,
                                     token_rms=tok if table["any_tok"] else False, mask=mask)
                new, size = shift(flat, u, coef), coef.abs().amax()  # |u| = 1: |coef| bounds it
            if table["any_low"]:
                edit = lowrank_edit(flat, R, D, bias, s[:, None] * mask)
                new, low = new + edit, edit.abs().amax()
                size = low if size is None else torch.maximum(size, low)
            if size is not None and not bool(size <= safe_limit(flat)):  # NaN compares False
                used = sorted({int(r) for r in rows.tolist()})
                raise SteeringError(nonfinite_message(site, value.dtype, [
                    f"{st.label or st.mode} ({st.describe()})" for st in map(self.settings.__getitem__, used)
                    if st.steered]))
            return new.reshape(value.shape)
        return fn

    @staticmethod
    def _rows(table: dict, rows: Tensor, value: Tensor):
        """The per-row ``u, a, b, tok, R, D, bias, s`` (cached while the row assignment stays
        the same)."""
        key = (rows.cpu().numpy().tobytes(), value.dtype, value.device)
        hit = table["cache"].get(key)
        if hit is None:
            r = rows.cpu()
            cast = {"device": value.device, "dtype": value.dtype}
            hit = [table[k][r].to(**cast) for k in ("u", "a", "b")]
            hit.append(table["tok"][r].to(value.device))
            hit += [table[k][r].to(**cast) for k in ("R", "D", "bias", "s")]
            table["cache"] = {key: hit}
        return hit

    def _mask(self, ctx: HookContext, rows: Tensor, like: Tensor) -> Tensor:
        if len(self.modes) == 1:
            return ctx.positions(_pos_mode(self.modes[0])).to(like.dtype)
        per_row = self.mode_index[rows.cpu()].to(like.device)
        out = torch.zeros(like.shape[:2], dtype=torch.bool, device=like.device)
        for i, m in enumerate(self.modes):
            sel = per_row == i
            if sel.any():
                out |= ctx.positions(_pos_mode(m)) & sel[:, None]
        return out.to(like.dtype)


def steering_hooks(setting_or_settings: Setting | Sequence[Setting], lm, *,
                   rows_per_setting: int | None = None) -> dict[Site, HookFn]:
    """``{site: fn}`` that applies one setting to every row, or many settings to blocks of rows.

    Args:
        setting_or_settings: One :class:`Setting`, or several: row ``r`` of a batch then uses
            setting ``r // rows_per_setting`` (default: the batch split evenly).
        lm: The loaded model (each vector is checked against it: sites in range, widths).
        rows_per_setting: Rows per setting when several are given.

    >>> with lm.hooks(steering_hooks([Setting(vector=joy, strength=s) for s in (2, 4)], lm)):
    ...     lm.generate(["Hi!", "Hi!"])  # row 0 at x2, row 1 at x4  # doctest: +SKIP
    """
    settings = [setting_or_settings] if isinstance(setting_or_settings, Setting) else list(setting_or_settings)
    for st in settings:
        if st.vector is not None:
            st.vector.check(lm, match="none")
    return SettingTable(settings, rows_per_setting=rows_per_setting).hooks()


# ------------------------------------------------------------------------------ helpers
def _pos_key(positions):
    if isinstance(positions, range):
        return ("range", positions.start, positions.stop, positions.step)
    return positions


def _pos_mode(key):
    return range(key[1], key[2], key[3]) if isinstance(key, tuple) else key


def prefix_reusable(settings: Sequence[Setting]) -> bool:
    """True when no setting changes a prompt token before the last one (prefix cache shareable)."""
    return all(not st.steered or st.positions in _PREFIX_SAFE  # generated:K / opening:K too
               or position_count(st.positions) is not None for st in settings)


# ------------------------------------------------------------------------------ generation
def generate_settings(lm, prompts: Sequence[str], settings: Sequence[Setting], *,
                      max_new_tokens: int = 48, batch_size: int = 32,
                      system_prompt: str | None = None, reuse_prefix: bool | None = None,
                      match: str = "architecture", progress: bool = False,
                      details: bool = False, **generate_kwargs):
    """Generate every prompt under every setting, many settings per batch; ``[setting][prompt]``.

    Rows are ``(setting, prompt)`` pairs; a batch holds several prompts, each with all settings
    (or a slice of them), so one ``model.generate`` call (greedy by default, KV cache on) covers
    a whole strength sweep. When no setting changes a prompt token before the last one
    (positions ``"generated"``, ``"last-prompt"``, ``"last-prompt+generated"``), each prompt's
    prefix (all but its last token) is run once and its KV cache shared by the prompt's rows.

    Args:
        lm: A loaded model.
        prompts: User messages (the chat template is applied as the model was loaded).
        settings: :class:`Setting` s (include ``Setting(vector=None)`` for an unsteered row).
        max_new_tokens: Tokens to generate per row.
        batch_size: Rows per ``generate`` call.
        system_prompt: Replace the chat template's default system prompt.
        reuse_prefix: Share prompt prefixes (default: whenever the settings allow it).
        match: How closely each vector's model must match ``lm`` (``"exact"``,
            ``"architecture"`` or ``"none"``; see :meth:`SteeringVector.check`).
        progress: A progress bar over the batches on stderr.
        details: Also return, per row, whether it stopped at ``max_new_tokens`` (no end token).
        **generate_kwargs: Passed to ``model.generate`` (``repetition_penalty``,
            ``no_repeat_ngram_size``, ``do_sample``, ``min_new_tokens``, ...).

    Returns:
        ``texts[i][j]``: the text generated for ``prompts[j]`` under ``settings[i]``; with
        ``details``, ``(texts, cut)`` where ``cut[i][j]`` is True if that reply hit the limit.
    """
    from tqdm.auto import tqdm

    from probe.forward import generate_batch, make_batch
    from probe.hooks import active_managers
    from probe.tokens import Encoded, encode

    prompts = _check_prompts(prompts)
    if batch_size < 1:
        raise SteeringError(f"batch_size must be >= 1, got {batch_size}")
    table = SettingTable(settings)
    for st in table.settings:
        if st.vector is not None:
            st.vector.check(lm, match=match)
    enc = encode(lm.tokenizer, prompts, chat_template=lm.chat_template,
                 system_prompt=system_prompt if lm.chat_template else None)
    allowed = prefix_reusable(table.settings) and min(enc.lengths) > 1 and not active_managers(lm.model)
    if reuse_prefix and not allowed:
        raise SteeringError("reuse_prefix=True needs every steered setting to leave the prompt "
                            "before its last token alone (positions generated, last-prompt or "
                            "last-prompt+generated) and no other hooks open on the model")
    reuse = allowed if reuse_prefix is None else reuse_prefix
    out: list[list[str | None]] = [[None] * len(prompts) for _ in table.settings]
    cut: list[list[bool]] = [[False] * len(prompts) for _ in table.settings]
    stops = {lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id,
             getattr(lm.model.generation_config, "eos_token_id", None)}
    stops = {t for s in stops for t in (s if isinstance(s, (list, tuple)) else [s]) if t is not None}
    chunks = list(_chunks(enc.lengths, len(table.settings), batch_size))
    bar = tqdm(total=len(prompts) * len(table.settings), unit="reply", desc="generating",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with torch.no_grad(), lm.hooks(table.hooks()), bar:
        for p_idx, s_idx in chunks:
            rows = [(s, p) for p in p_idx for s in s_idx]
            sub = Encoded(ids=[enc.ids[p] for _, p in rows], content=[enc.content[p] for _, p in rows],
                          target=[None] * len(rows))
            batch = make_batch(lm, sub)
            kwargs = dict(generate_kwargs)
            if reuse:
                kwargs.update(_prefix_cache(lm, make_batch(lm, Encoded(
                    ids=[enc.ids[p] for p in p_idx], content=[enc.content[p] for p in p_idx],
                    target=[None] * len(p_idx))), repeats=len(s_idx), table=table))
            table.rows = torch.tensor([s for s, _ in rows])
            try:
                gen = generate_batch(lm, batch, max_new_tokens=max_new_tokens, **kwargs)
            finally:
                table.rows = None
            for (s, p), text, ids in zip(rows, gen.texts, gen.new_ids.tolist()):
                out[s][p] = text
                cut[s][p] = len(ids) >= max_new_tokens and not stops & set(ids)
            bar.update(len(rows))
    return (out, cut) if details else out  # type: ignore[return-value]


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise SteeringError("prompts must be a list of strings (a single string is not a list)")
    prompts = list(prompts)
    if not prompts:
        raise SteeringError("no prompts given; pass at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise SteeringError(f"prompts must be non-empty strings; got {bad[0]!r}")
    return prompts


def _chunks(lengths: Sequence[int], n_settings: int, batch_size: int):
    """``(prompt indices, setting indices)`` per batch: longest prompts first, all settings of a
    prompt together when they fit (so its prefix is computed once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if n_settings <= batch_size:
        per = batch_size // n_settings
        for i in range(0, len(order), per):
            yield order[i:i + per], list(range(n_settings))
        return
    for p in order:
        for j in range(0, n_settings, batch_size):
            yield [p], list(range(j, min(j + batch_size, n_settings)))


def _prefix_cache(lm, batch, *, repeats: int, table: SettingTable) -> dict:
    """The KV cache of every prompt but its last token, repeated for each of its rows.

    Runs with the table switched off: the prefix positions are outside every setting's
    positions by construction (see :func:`prefix_reusable`).
    """
    ids, mask, pos = (batch.input_ids[:, :-1], batch.attention_mask[:, :-1],
                      batch.position_ids[:, :-1])
    table.active = False
    try:
        out = lm.arch.base(lm.model)(input_ids=ids, attention_mask=mask, position_ids=pos,
                                     use_cache=True)
    finally:
        table.active = True
    cache = returned_cache(out)
    cache.batch_repeat_interleave(repeats)
    return {cache_keyword(lm.model): cache}
