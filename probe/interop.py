"""Capture through TransformerLens' ``TransformerBridge`` or an nnsight trace, pooled like ours.

For users who already work in one of those libraries, and as a reference our own hooks are tested
against (``tests/probe/test_interop.py``): both paths pad with :func:`probe.capture.pad_batch`
(mask-derived position ids on either padding side), pool with
:func:`probe.capture.pooling_weights`, and return what :func:`probe.capture.forward_pooled`
returns: ``{site: Float[Tensor, "batch pooling d"]}`` in float32, rows in input order.

Site names need no translation table: our grammar *is* TransformerLens' spelling, so a layer
site's bridge hook is its own name (``blocks.3.attn.hook_z``). The nnsight path reads the modules
that :func:`probe.hooks.route` names (one site table for every reader and writer), except
``hook_resid_mid``, which it reads where it is computed (the MLP-side norm's input). Conventions
that differ:

* ``hook_embed``: ours is what block 0 receives. The bridge's ``hook_embed`` is the same for
  rotary models (Gemma's embedding scaling included) but lacks the learned position embedding
  of GPT-2-style models (``hook_pos_embed``), so ours maps to ``blocks.0.hook_resid_pre``.
* ``attn.hook_z`` (and ``hook_q``/``hook_k``/``hook_v``, keys and values with one entry per KV
  head in both) is ``[batch, pos, head, d_head]`` in TransformerLens and flattened to
  ``head * d_head`` (head-major) here, as in our store. A site with ``head=h`` reads that head.
* The bridge's ``hook_attn_out`` / ``hook_mlp_out`` of Gemma 2/3 are, like ours, taken after
  the post-sublayer norm (what is added to the residual stream); they agree.
* After ``bridge.enable_compatibility_mode()`` (folded norms, centred weights) the residual
  stream is no longer Hugging Face's and will not equal our captures; use a plain bridge.

Tested on the tiny Llama, Mistral, Qwen2/3, Gemma 1/2/3 and GPT-2 models: the bridge (eager
attention) agrees with our hooks (SDPA) to ~1e-6 relative, nnsight bit for bit.

Neither library is imported at module import (importing nnsight patches ``Tensor.backward``);
install them with ``pip install emoprobe[interop]``.

>>> lm = load_model("smollm2-135m")  # doctest: +SKIP
>>> enc = encode(lm.tokenizer, ["I lost my keys."], chat_template=True)  # doctest: +SKIP
>>> sites = parse_sites("resid_post", n_layers=lm.n_layers)  # doctest: +SKIP
>>> got = capture_with_bridge(boot_bridge(lm), enc, sites, ["last"])  # doctest: +SKIP
>>> got[Site("hook_resid_post", 19)].shape  # doctest: +SKIP
torch.Size([1, 1, 576])
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from probe.arch import Architecture, architecture_for
from probe.capture import CaptureError, check_poolings, pad_batch, pooling_weights
from probe.hooks import EXECUTION_ORDER, route
from probe.sites import Site
from probe.tokens import Encoded

Pooled = dict[Site, Float[Tensor, "batch pooling d"]]

def bridge_hook_name(site: Site) -> str:
    """The ``TransformerBridge`` hook that carries the same value as ``site``.

    >>> bridge_hook_name(Site("attn.hook_z", 3))
    'blocks.3.attn.hook_z'
    >>> bridge_hook_name(Site("hook_embed"))
    'blocks.0.hook_resid_pre'
    """
    return "blocks.0.hook_resid_pre" if site.kind == "hook_embed" else str(site.whole)


def boot_bridge(lm, tokenizer=None, *, name: str | None = None, copy_model: bool = True):
    """A ``TransformerBridge`` around a loaded model, offline.

    The bridge mutates the Hugging Face model it wraps (swaps submodules, forces eager
    attention), so by default it gets a deep copy and ``lm`` stays as it was.

    Args:
        lm: a :class:`probe.models.LoadedModel`, or a Hugging Face causal LM (then pass
            ``tokenizer``).
        tokenizer: the tokenizer, when ``lm`` is a bare Hugging Face model.
        name: the name TransformerLens records (default: the model's ``name_or_path``); with the
            model given, nothing is downloaded.
        copy_model: give the bridge a deep copy (memory x2); ``False`` hands over ``lm`` itself.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok, _ = _unpack(lm, tokenizer)
    hf = copy.deepcopy(hf) if copy_model else hf
    device = next(hf.parameters()).device
    name = name or getattr(hf.config, "_name_or_path", "") or type(hf).__name__
    return TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok, device=device)


def capture_with_bridge(
    bridge,
    token_ids: Encoded | Sequence[Sequence[int]],
    sites: Sequence[Site],
    poolings: Sequence[str] = ("last",),
    *,
    content: Sequence[tuple[int, int]] | None = None,
    target: Sequence[int | None] | None = None,
    padding_side: str = "right",
) -> Pooled:
    """Pooled activations at ``sites``, read from the bridge's own hooks.

    Args:
        bridge: a TransformerLens 4.x ``TransformerBridge`` (e.g. from :func:`boot_bridge`).
        token_ids: one list of token ids per row (or an :class:`~probe.tokens.Encoded`, which
            brings its content spans and targets). Ids, not strings: the bridge would
            prepend BOS to strings.
        sites: where to read; every name from :func:`bridge_hook_name` must be a bridge hook.
        poolings: as in :mod:`probe.capture`.
        content: per-row ``(start, end)`` token span for the ``content-*`` poolings (default:
            the whole row).
        target: per-row token index for ``token`` pooling.
        padding_side: ``"left"`` or ``"right"``.

    Returns:
        ``{site: (batch, pooling, d)}`` float32 on the bridge's device.
    """
    names = {s: bridge_hook_name(s) for s in sites}
    missing = sorted({n for n in names.values() if n not in bridge.hook_dict})
    if missing:
        raise CaptureError(f"the bridge has no hook {missing[0]!r} (sites {list(map(str, sites))})")
    device = torch.device(bridge.cfg.device)
    inputs, weights = _prepare(token_ids, content, target, poolings, padding_side,
                               _pad_id(bridge.tokenizer), device)
    out: Pooled = {}

    def make_hook(site: Site):
        def hook(value: Tensor, hook) -> None:
            if site.head is not None:
                value = value[:, :, site.head]
            elif site.neuron is not None:
                value = value[..., site.neuron : site.neuron + 1]
            out[site] = _pool(weights, value)
        return hook

    deepest = max(s.layer or 0 for s in sites)
    stop = deepest + 1 if deepest + 1 < bridge.cfg.n_layers else None
    with torch.no_grad():
        bridge.run_with_hooks(
            inputs["input_ids"], fwd_hooks=[(names[s], make_hook(s)) for s in sites],
            return_type=None, stop_at_layer=stop, attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"], use_cache=False,
        )
    _check_reached(sites, out)
    return out


def capture_with_nnsight(
    model,
    token_ids: Encoded | Sequence[Sequence[int]],
    sites: Sequence[Site],
    poolings: Sequence[str] = ("last",),
    *,
    tokenizer=None,
    content: Sequence[tuple[int, int]] | None = None,
    target: Sequence[int | None] | None = None,
    padding_side: str = "right",
    remote: bool | str = False,
) -> Pooled:
    """Pooled activations at ``sites``, read inside one nnsight trace.

    The trace reads the modules our architecture table names (their input or output, as the
    table says), pools inside the trace (so only ``batch x pooling x d`` values are saved), and
    stops after the deepest site: no LM head.

    ``remote=True`` runs the same trace on NDIF (the National Deep Inference Fabric): for users
    without a GPU, on models NDIF hosts. The model is then an nnsight model of a Hub id, whose
    weights never load here (:func:`ndif_model`), and an NDIF API key must be set
    (``NDIF_API_KEY`` or ``nnsight.CONFIG.set_default_api_key``). Pooling inside the trace keeps
    the download to ``batch x pooling x d`` per site. ``remote="local"`` is nnsight's dry run
    of the remote path: the trace is serialized and deserialized with local modules hidden,
    exactly as the server would, then run here.

    Args:
        model: an ``nnsight.TransformersModel`` you already trace with, a
            :class:`probe.models.LoadedModel`, or a Hugging Face causal LM (then pass
            ``tokenizer``). A Hugging Face model gets wrapped; nnsight instruments its
            modules' ``forward`` in place (inert outside a trace; the values are unchanged).
            Your tokenizer is not touched (nnsight gets a copy; it would set left padding).
        token_ids, sites, poolings, content, target, padding_side: as in
            :func:`capture_with_bridge`.
        tokenizer: the tokenizer of a bare Hugging Face model (only its pad id is used).
        remote: ``False`` (here), ``True`` (NDIF), ``"local"`` (the remote path's dry run) or
            an NDIF host URL.

    Returns:
        ``{site: (batch, pooling, d)}`` float32 on the model's device (on CPU from NDIF).
    """
    import nnsight

    traced = isinstance(model, nnsight.Envoy)  # a model the user already traces with
    if remote and not traced:
        raise CaptureError("remote execution needs an nnsight model, e.g. probe.interop.ndif_model"
                           "('meta-llama/Llama-3.1-8B'): NDIF runs the model, nothing loads here")
    if remote is True or (isinstance(remote, str) and remote != "local"):
        _check_ndif_key()
    if traced:
        if not remote and not getattr(model, "dispatched", True):
            model.dispatch()  # a lazily loaded model still has meta weights
        hf, tok = model._module, tokenizer or getattr(model, "tokenizer", None)
        arch = architecture_for(hf)
    else:
        hf, tok, arch = _unpack(model, tokenizer)
    device = next(hf.parameters()).device
    if device.type == "meta":  # remote: inputs travel from here
        device = torch.device("cpu")
    inputs, weights = _prepare(token_ids, content, target, poolings, padding_side, _pad_id(tok),
                               device)
    plan = _plan(hf, tok, arch, sites)
    # Inputs are checked before wrapping; nnsight gets a tokenizer copy (it sets left padding).
    nn_model = model if traced else nnsight.TransformersModel(hf, tokenizer=copy.deepcopy(tok))
    where = {"remote": remote} if remote else {}
    with torch.no_grad(), nn_model.trace(**inputs, use_cache=False, **where) as tracer:
        blocks = _envoy(nn_model, arch.layers_path)
        values = []
        for layer, path, io, reads in plan:
            envoy = _envoy(blocks[layer], path)
            raw = envoy.input if io == "input" else envoy.output
            raw = raw[0] if isinstance(raw, tuple) else raw
            values.append([_pool(weights, view(raw)) for view, _ in reads])
        values = nnsight.save(values)
        tracer.stop()
    out: Pooled = {}
    for (_, _, _, reads), pooled in zip(plan, values):
        out.update({s: v for (_, s), v in zip(reads, pooled)})
    _check_reached(sites, out)
    return out


def ndif_model(model_id: str, **kwargs):
    """An nnsight model of a Hub id for ``capture_with_nnsight(..., remote=True)``.

    Only the config and tokenizer are fetched; the weights stay on NDIF (see
    https://nnsight.net and https://ndif.us for the hosted models and an API key).
    """
    import nnsight

    return nnsight.TransformersModel(model_id, **kwargs)


def _check_ndif_key() -> None:
    from nnsight import CONFIG

    if not getattr(CONFIG.API, "APIKEY", None):
        raise CaptureError("remote=True runs on NDIF, which needs an API key: get one at "
                           "https://login.ndif.us, then set NDIF_API_KEY (or "
                           "nnsight.CONFIG.set_default_api_key(key))")


# --------------------------------------------------------------------------- helpers
def _unpack(lm, tokenizer) -> tuple[Any, Any, Architecture]:
    """(hf model, tokenizer, architecture) from a LoadedModel or a bare Hugging Face model."""
    if hasattr(lm, "arch") and hasattr(lm, "model"):
        return lm.model, tokenizer or lm.tokenizer, lm.arch
    if tokenizer is None:
        raise CaptureError("pass tokenizer= with a bare Hugging Face model")
    return lm, tokenizer, architecture_for(lm)


def _pad_id(tokenizer) -> int:
    """Any valid id works (padded positions are masked and get zero pooling weight)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def _prepare(token_ids, content, target, poolings, padding_side, pad_id, device):
    """Padded inputs and pooling weights, made as :func:`probe.capture.iter_blocks` makes them."""
    if padding_side not in ("left", "right"):
        raise CaptureError(f"padding side must be 'left' or 'right', not {padding_side!r}")
    if isinstance(token_ids, Encoded):
        if content is not None or target is not None:
            raise CaptureError("an Encoded input brings its own content and target; pass neither")
        enc = token_ids
    else:
        ids = [list(map(int, row)) for row in token_ids]
        enc = Encoded(ids=ids, content=list(content) if content else [(0, len(r)) for r in ids],
                      target=list(target) if target else [None] * len(ids))
    if not len(enc) or min(enc.lengths) == 0:
        raise CaptureError("every row needs at least one token")
    poolings = check_poolings(poolings, enc)
    inputs = pad_batch(enc.ids, pad_id, padding_side, device)
    weights = pooling_weights(enc.lengths, enc.content, enc.target, poolings,
                              width=inputs["input_ids"].shape[1], padding_side=padding_side)
    return inputs, weights.to(device)


def _pool(weights: Tensor, value) -> Tensor:
    if isinstance(value, tuple):
        value = value[0]
    if value.dim() == 4:  # per-head [batch, pos, head, d_head]
        value = value.flatten(2)
    elif value.dim() == 2:  # one neuron [batch, pos]
        value = value[..., None]
    return torch.bmm(weights.to(value.device), value.float())  # remote: weights travel


def _plan(hf, tok, arch: Architecture, sites: Sequence[Site]) -> list[tuple[int, str, str, list]]:
    """(block, submodule path, io, [(view, site)]) per distinct module read, in execution order.

    Module paths and views come from :func:`probe.hooks.route` (the hook layer's site table);
    ``hook_resid_mid`` is read at the MLP-side norm's input, where the model computes it.
    """
    from types import SimpleNamespace

    lm = SimpleNamespace(model=hf, tokenizer=tok, arch=arch)
    groups: dict[tuple[int, str, str], list] = {}
    order = sorted(sites, key=lambda s: (s.layer or 0, EXECUTION_ORDER[s.kind], s.unit or 0))
    for site in order:
        if site.kind == "hook_resid_mid":
            path, io = arch.where(site.kind)[:2]
            view = _identity
        else:
            r = route(lm, site)
            path, io, view = r.path, r.io, r.value
        groups.setdefault((site.layer or 0, path, io), []).append((view, site))
    return [(layer, path, io, reads) for (layer, path, io), reads in groups.items()]


def _identity(x):
    return x


def _envoy(root, path: str):
    for part in filter(None, path.split(".")):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _check_reached(sites: Sequence[Site], out: Pooled) -> None:
    missing = [str(s) for s in sites if s not in out]
    if missing:
        raise CaptureError(f"sites {missing} were not reached by the forward pass")
