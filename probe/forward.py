"""Forward modes on the hook layer: logits, generation, caches of activations, gradients.

Every function takes a :class:`probe.models.LoadedModel` and either texts or a :class:`Batch`,
and runs whatever hooks are open on the model (``with lm.hooks(...)``):

* :func:`logits` -- a full forward, LM head included (grad mode is the caller's);
* :func:`generate` -- ``model.generate`` with the KV cache; hooks fire at every step and know
  which positions are prompt and which generated (``ctx.positions(...)``);
* :func:`run_with_cache` -- logits and the values at chosen sites (TransformerLens' name);
* :func:`run_with_grads` -- one forward and one backward: values at chosen sites and the
  gradient of a scalar metric with respect to each, keeping no graph before the first site;
* :func:`run_with_leaves` -- the forward half of it: the gradient leaves
  (:func:`probe.interventions.grad_tap`) and the metric with its graph, for callers that run
  one *or several* backward passes themselves (attribution patching, GradDrop).

>>> lm = load_model("smollm2-135m")  # doctest: +SKIP
>>> with lm.hooks({"blocks.12.hook_resid_post": lambda t, ctx: t + 4.0 * v}):  # doctest: +SKIP
...     print(lm.generate(["Tell me about your day."], max_new_tokens=40))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from probe.hooks import HookContext, HookError, StopForward, active_managers, hooks, resolve
from probe.interventions import grad_tap
from probe.sites import Site
from probe.tokens import Encoded, encode


@dataclass(frozen=True)
class Batch:
    """Padded token ids of several rows, with the masks hooks need.

    Attributes:
        input_ids, attention_mask, position_ids: ``[batch, width]`` (position ids follow the
            mask, so either padding side is exact).
        content: ``[batch, width]`` bool, the stimulus text's own tokens (template excluded).
        lengths: Real tokens per row.
        padding_side: ``"left"`` or ``"right"``.
        modality: ``[batch, width]`` modality codes (0 text, 1 image, 3 audio) of a multimodal
            batch, else None.
        extra: Further model inputs of a multimodal batch (pixel values, audio features, ...).
            A model that computes its own (multimodal rotary) positions gets no ``position_ids``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    content: Tensor
    lengths: tuple[int, ...]
    padding_side: str
    modality: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def inputs(self) -> dict[str, Tensor]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if "position_ids" not in self.extra:
            out["position_ids"] = self.position_ids
        return {**out, **{k: v for k, v in self.extra.items() if v is not None}}

    @property
    def last(self) -> Tensor:
        """``[batch]`` column of each row's last real token."""
        width = self.input_ids.shape[1]
        if self.padding_side == "left":
            return torch.full((len(self),), width - 1, device=self.input_ids.device)
        return torch.as_tensor(self.lengths, device=self.input_ids.device) - 1


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, padding_side: str, device) -> dict:
    """input_ids, attention_mask and position_ids (correct for either padding side)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        sl = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[i, sl] = torch.as_tensor(row)
        mask[i, sl] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
            "position_ids": position_ids.to(device)}


def model_inputs(lm, encoded: Encoded, rows: Sequence[int], inputs: dict) -> dict:
    """Model inputs of ``rows`` besides ids and masks: pixel values, audio features, ...

    Empty for text rows. A model that computes its own multimodal positions (Qwen2-VL's
    3-D rotary positions) gets ``position_ids: None`` for a batch with images in it.
    """
    if not hasattr(encoded, "model_inputs"):
        return {}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    side = "left" if bool((mask[:, 0] == 0).any()) else "right"
    extra = encoded.model_inputs(rows, width=ids.shape[1], padding_side=side, device=ids.device,
                                 dtype=lm.dtype)
    trunk = lm.arch.trunk(lm.model)
    if hasattr(trunk, "get_rope_index") and any(k.endswith("grid_thw") for k in extra):
        extra["position_ids"] = None
    return extra


def make_batch(lm, texts: Sequence[str] | Encoded, *, padding_side: str = "left",
               chat_template: bool | None = None, system_prompt: str | None = None) -> Batch:
    """Encode ``texts`` (chat template as the model was loaded, unless overridden) and pad.

    Left padding by default: it is what generation needs, and the last column is then every
    row's last token. Rows with images or audio: pass what
    :func:`probe.multimodal.encode.encode_multimodal` returned.
    """
    if isinstance(texts, Encoded):
        enc = texts
    else:
        if isinstance(texts, str) or not len(texts):
            raise HookError("pass a non-empty list of texts (a single string is not a list)")
        use_template = lm.chat_template if chat_template is None else chat_template
        enc = encode(lm.tokenizer, list(texts), chat_template=use_template,
                     system_prompt=system_prompt if use_template else None)
    if padding_side not in ("left", "right"):
        raise HookError(f"padding side must be 'left' or 'right', not {padding_side!r}")
    inputs = pad_batch(enc.ids, lm.tokenizer.pad_token_id, padding_side, lm.device)
    width = inputs["input_ids"].shape[1]
    content = torch.zeros(len(enc), width, dtype=torch.bool)
    modality = None if enc.modality is None else torch.zeros(len(enc), width, dtype=torch.long)
    for i, (n, (c0, c1)) in enumerate(zip(enc.lengths, enc.content)):
        off = width - n if padding_side == "left" else 0
        content[i, off + c0:off + c1] = True
        if modality is not None:
            modality[i, off:off + n] = torch.as_tensor(enc.modality[i])
    extra = model_inputs(lm, enc, range(len(enc)), inputs)
    return Batch(**inputs, content=content.to(lm.device), lengths=tuple(enc.lengths),
                 padding_side=padding_side, extra=extra,
                 modality=None if modality is None else modality.to(lm.device))


def _as_batch(lm, batch, padding_side="left") -> Batch:
    return batch if isinstance(batch, Batch) else make_batch(lm, batch, padding_side=padding_side)


class _BatchInfo:
    """Tell the open hook contexts about a batch (prompt width, content span) for one call."""

    def __init__(self, lm, batch: Batch, prompt_width: int | None) -> None:
        self.managers = active_managers(lm.model)
        self.values = (prompt_width, batch.content, batch.modality)

    def __enter__(self):
        self.saved = [(m.prompt_width, m.content, m.modality) for m in self.managers]
        for m in self.managers:
            m.prompt_width, m.content, m.modality = self.values
        return self

    def __exit__(self, *exc):
        for m, (w, c, mod) in zip(self.managers, self.saved):
            m.prompt_width, m.content, m.modality = w, c, mod


def logits(lm, batch: Batch | Sequence[str]) -> Float[Tensor, "batch pos vocab"]:
    """A full forward (LM head included) under the open hooks; grad mode is the caller's."""
    batch = _as_batch(lm, batch)
    with _BatchInfo(lm, batch, batch.input_ids.shape[1]):
        return lm.model(**batch.inputs, use_cache=False).logits


@dataclass(frozen=True)
class Generation:
    """Texts generated for a batch of prompts, and their token ids."""

    texts: list[str]
    prompt_ids: Tensor  # [batch, prompt_width] left-padded
    new_ids: Tensor  # [batch, new] (pad after a row's end)


def generate_batch(lm, prompts: Sequence[str] | Batch, *, max_new_tokens: int = 40,
                   do_sample: bool = False, use_cache: bool = True, **kwargs) -> Generation:
    """``model.generate`` on left-padded prompts under the open hooks.

    Hooks see every step; ``ctx.prompt_width`` is the padded prompt's width, so
    ``ctx.positions("generated")`` and ``"last-prompt+generated"`` are right with and without the
    KV cache. Extra keyword arguments go to ``generate`` (``repetition_penalty``,
    ``no_repeat_ngram_size``, ``temperature``, ...).
    """
    batch = _as_batch(lm, prompts, padding_side="left")
    if batch.padding_side != "left":
        raise HookError("generation needs left padding: make_batch(..., padding_side='left')")
    if max_new_tokens < 1:
        raise HookError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tok = lm.tokenizer
    width = batch.input_ids.shape[1]
    with _BatchInfo(lm, batch, width):
        extra = {k: v for k, v in batch.extra.items() if k != "position_ids"}
        out = lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                **extra, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                use_cache=use_cache, pad_token_id=tok.pad_token_id, **kwargs)
    new = out[:, width:]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    return Generation(texts=[t.strip() for t in texts], prompt_ids=batch.input_ids, new_ids=new)


def generate(lm, prompts: Sequence[str] | Batch, *, max_new_tokens: int = 40,
             **kwargs) -> list[str]:
    """The generated texts (special tokens removed); see :func:`generate_batch`."""
    return generate_batch(lm, prompts, max_new_tokens=max_new_tokens, **kwargs).texts


def run_with_cache(lm, batch: Batch | Sequence[str], sites, *,
                   stop: bool = False) -> tuple[Tensor | None, dict[Site, Tensor]]:
    """Logits and the values at ``sites`` (names, patterns or :class:`Site` s), detached.

    With ``stop=True`` the forward ends after the deepest site (no logits: returns None).
    """
    batch = _as_batch(lm, batch)
    cache: dict[Site, Tensor] = {}
    wanted = resolve(lm, {s: _noop for s in _site_list(sites)})

    def keep(value: Tensor, ctx: HookContext) -> None:
        cache[ctx.site] = value.detach().clone()

    deepest = max((s.layer or 0) for s, _ in wanted)
    out = None
    with hooks(lm, {s: keep for s, _ in wanted}, stop_after=deepest if stop else None), \
            _BatchInfo(lm, batch, batch.input_ids.shape[1]):
        try:
            out = lm.model(**batch.inputs, use_cache=False).logits
        except StopForward:
            pass
    return out, cache


Metric = Callable[..., Tensor]


def run_with_grads(lm, batch: Batch | Sequence[str], metric: Metric, sites, *,
                   metric_sites=None) -> tuple[dict[Site, Tensor], dict[Site, Tensor], Tensor]:
    """One forward and one backward: values at ``sites`` and ``d metric / d value``.

    Each site's value ``a`` is replaced by ``a + 0`` where the ``0`` is a leaf that requires
    grad: the forward is unchanged, the gradient of that leaf is the gradient at ``a``, and no
    graph is kept before the earliest site (model weights stay frozen).

    Args:
        lm: a loaded model.
        batch: texts or a :class:`Batch`.
        metric: ``metric(logits, batch) -> scalar`` by default; with ``metric_sites`` it is
            ``metric(values, batch)`` where ``values`` maps each metric site to its value, and the
            forward stops after the deepest metric site (no LM head).
        sites: where to read values and gradients (names, patterns or sites).
        metric_sites: sites the metric reads instead of logits (e.g. a late residual stream).

    Returns:
        ``(values, grads, metric_value)``: detached ``{site: tensor}`` dicts and the metric.
    """
    wanted = _resolved(lm, sites)
    values, leaves, m = run_with_leaves(lm, batch, metric, wanted, metric_sites=metric_sites)
    _check_metric(m, leaves, wanted)
    grads = torch.autograd.grad(m, [leaves[s] for s in wanted], allow_unused=True)
    return values, {s: (g if g is not None else torch.zeros_like(leaves[s])).detach()
                    for s, g in zip(wanted, grads)}, m.detach()


def run_with_leaves(lm, batch: Batch | Sequence[str], metric: Metric, sites, *,
                    metric_sites=None, before: Mapping | None = None,
                    after: Mapping | None = None) -> tuple[dict[Site, Tensor], dict[Site, Tensor], Tensor]:
    """One forward with a gradient leaf at each of ``sites`` (see :func:`run_with_grads`).

    Args:
        metric, metric_sites: as for :func:`run_with_grads`; the metric may return any shape
            (one number per row, say).
        before: ``{site: fn}`` hooks that run before the tap at that site (e.g. interpolation).
        after: hooks that run after it (e.g. a GradDrop gate).

    Returns:
        ``(values, leaves, metric_value)``: detached values at ``sites``, the leaves, and the
        metric with its graph (for one or several ``torch.autograd.grad`` calls).
    """
    batch = _as_batch(lm, batch)
    wanted = _resolved(lm, sites)
    values: dict[Site, Tensor] = {}
    leaves: dict[Site, Tensor] = {}
    read: dict[Site, Tensor] = {}

    def grab(value: Tensor, ctx: HookContext) -> None:
        read[ctx.site] = value

    fns: dict = {}
    for s, fn in (before or {}).items():
        fns.setdefault(s, []).append(fn)
    tap = grad_tap(values, leaves)
    for s in wanted:
        fns.setdefault(s, []).append(tap)
    for s, fn in (after or {}).items():
        fns.setdefault(s, []).append(fn)
    stop = None
    if metric_sites is not None:
        msites = _resolved(lm, metric_sites)
        for s in msites:
            fns.setdefault(s, []).append(grab)
        stop = max((s.layer or 0) for s in msites)
    with torch.enable_grad(), hooks(lm, fns, stop_after=stop), \
            _BatchInfo(lm, batch, batch.input_ids.shape[1]):
        try:
            out = lm.model(**batch.inputs, use_cache=False)
        except StopForward:
            out = None
        m = metric(read, batch) if metric_sites is not None else metric(out.logits, batch)
    missing = [str(s) for s in wanted if s not in leaves]
    if missing:
        raise HookError(f"sites {missing} were not reached before the metric (a metric site "
                        "earlier than them stops the forward)")
    return values, leaves, m


def _resolved(lm, sites) -> list[Site]:
    return [s for s, _ in resolve(lm, {s: _noop for s in _site_list(sites)})]


def _check_metric(m, leaves, wanted) -> None:
    if not isinstance(m, Tensor) or m.numel() != 1:
        raise HookError(f"the metric must return a scalar tensor, got {getattr(m, 'shape', m)!r}")
    if not m.requires_grad:
        raise HookError("the metric does not depend on any requested site (no gradient path); "
                        "check the sites and that the metric uses the model's output")


def _noop(value, ctx):
    return None


def _site_list(sites) -> list:
    if isinstance(sites, (str, Site)):
        return [sites]
    if isinstance(sites, Mapping):
        return list(sites)
    return list(sites)
