"""Where each site lives in a Hugging Face model: one small table per architecture family.

A table maps a site kind to ``(submodule path inside a decoder block, "input" | "output")``.
``"input"`` means the first positional input of that module (a forward pre-hook), ``"output"``
its output (a forward hook; the first element when the module returns a tuple). An empty path
means the decoder block itself. ``hook_embed`` is always the input of block 0, so it includes
position embeddings and embedding scaling wherever the architecture adds them. A third element
names a slice of a fused output (GPT-2's ``c_attn`` holds queries, keys and values: ``"q"``,
``"k"``, ``"v"``).

``hook_resid_mid`` is read from the MLP-side norm's input, but the hook layer
(:mod:`probe.hooks`) reads and writes it as ``resid_pre + attn_out`` at attention's output, so a
write changes the residual stream downstream, not only the MLP's input.

To support a new family, add a table to :data:`FAMILIES` (and, for a vision-language model, the
path of its language backbone's block list to :data:`LAYER_PATHS`); nothing else changes.
Unknown decoder models fall back to :func:`guess_architecture`; users can override with
:func:`register_family`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from probe.errors import EmoprobeError

Where = tuple[str, str] | tuple[str, str, str]

_LLAMA_LIKE: dict[str, Where] = {
    "hook_resid_pre": ("", "input"),
    "hook_resid_mid": ("post_attention_layernorm", "input"),
    "hook_resid_post": ("", "output"),
    "hook_attn_out": ("self_attn", "output"),
    "hook_mlp_out": ("mlp", "output"),
    "attn.hook_z": ("self_attn.o_proj", "input"),
    "mlp.hook_post": ("mlp.down_proj", "input"),
    "attn.hook_q": ("self_attn.q_proj", "output"),
    "attn.hook_k": ("self_attn.k_proj", "output"),
    "attn.hook_v": ("self_attn.v_proj", "output"),
}
_GEMMA2_LIKE: dict[str, Where] = {
    **_LLAMA_LIKE,
    # Gemma 2/3 normalise each sublayer's output before adding it to the residual stream.
    "hook_resid_mid": ("pre_feedforward_layernorm", "input"),
    "hook_attn_out": ("post_attention_layernorm", "output"),
    "hook_mlp_out": ("post_feedforward_layernorm", "output"),
}
_GPT2: dict[str, Where] = {
    "hook_resid_pre": ("", "input"),
    "hook_resid_mid": ("ln_2", "input"),
    "hook_resid_post": ("", "output"),
    "hook_attn_out": ("attn", "output"),
    "hook_mlp_out": ("mlp", "output"),
    "attn.hook_z": ("attn.c_proj", "input"),
    "mlp.hook_post": ("mlp.c_proj", "input"),
    "attn.hook_q": ("attn.c_attn", "output", "q"),
    "attn.hook_k": ("attn.c_attn", "output", "k"),
    "attn.hook_v": ("attn.c_attn", "output", "v"),
}

FAMILIES: dict[str, Mapping[str, Where]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA2_LIKE,
    "gemma3_text": _GEMMA2_LIKE,
    "gemma3": _GEMMA2_LIKE,
    "gpt2": _GPT2,
    # Language backbones of vision-language models (their text configs' model types).
    "qwen2_vl_text": _LLAMA_LIKE,
    "qwen2_5_vl_text": _LLAMA_LIKE,
}
#: Families whose base model feeds ``inputs_embeds`` to block 0 unchanged (no scaling, no
#: position embedding added), so a forward can start at any block from a cached residual.
SKIPPABLE_FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}
#: Families with rotary Llama-like attention: q/k/v projections in each block's attention module
#: and one ``rotary_emb`` on the base model (what recomputing attention patterns needs).
ROTARY_FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}
#: Modules inside a pre-norm block that edge attribution reads and writes: the norm whose input
#: is the attention's input (``attn_in``), the norm whose input is the MLP's (``mlp_in``), and the
#: projections that write each sublayer's output (``attn_out``, ``mlp_out``).
_PRE_NORM_PARTS = {"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm",
                   "attn_out": "self_attn.o_proj", "mlp_out": "mlp.down_proj",
                   "attn": "self_attn", "mlp": "mlp"}
BLOCK_PARTS: dict[str, Mapping[str, str]] = {
    f: _PRE_NORM_PARTS for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "qwen2_vl_text",
                                 "qwen2_5_vl_text")}
#: Where the block list sits, tried in order (VLM language backbones included).
LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.decoder.layers",
)


class ArchitectureError(EmoprobeError, ValueError):
    """The model's layout is not one this toolkit knows how to hook."""


@dataclass(frozen=True)
class Architecture:
    """A resolved family table plus where the block list and the base model are."""

    family: str
    table: Mapping[str, Where]
    layers_path: str

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)

    def base(self, model: nn.Module) -> nn.Module:
        """The module that owns the block list: running it skips the LM head (no logits)."""
        return model.get_submodule(self.layers_path.rsplit(".", 1)[0])

    def trunk(self, model: nn.Module) -> nn.Module:
        """The module a forward without the LM head calls.

        For a text model it is :meth:`base`. For a multimodal model (blocks under a
        ``language_model``) it is the module that owns the language model and merges image or
        audio features into the text sequence before calling it (``model.model`` of
        LLaVA, Qwen2-VL, Gemma 3 and Qwen2-Audio; the whole model for older layouts).
        """
        head, sep, _ = self.layers_path.partition("language_model.")
        if not sep:
            return self.base(model)
        head = head.rstrip(".")
        return model.get_submodule(head) if head else model

    @property
    def multimodal(self) -> bool:
        """Whether the blocks belong to the language backbone of a multimodal model."""
        return "language_model." in self.layers_path

    @property
    def skippable(self) -> bool:
        """Whether a forward may start at any block from a cached residual stream."""
        return self.family in SKIPPABLE_FAMILIES

    def can_start_at(self, model: nn.Module) -> bool:
        """Whether a forward of this model may start at a later block from a cached residual
        stream (:meth:`from_block`): a skippable family whose layers are all of one type (no
        sliding-window / full-attention mix, whose masks are built per type)."""
        types = set(getattr(_text_config(model.config), "layer_types", None) or ["full"])
        return self.skippable and len(types) == 1

    @contextmanager
    def from_block(self, model: nn.Module, start: int) -> Iterator[None]:
        """Run only blocks ``>= start`` inside the ``with`` block: the block list is swapped for
        its tail (hooks stay on their modules) and restored on exit, whatever happens. Feed the
        base model block ``start``'s input as ``inputs_embeds``; see :meth:`can_start_at`."""
        if not start:
            yield
            return
        if not self.skippable:
            raise ArchitectureError(f"family {self.family!r} changes the embeddings before block 0 "
                                    "(scaling, positions): a forward cannot start at a later block")
        owner = self.base(model)
        name = self.layers_path.rsplit(".", 1)[1]
        full = getattr(owner, name)
        setattr(owner, name, nn.ModuleList(list(full)[start:]))
        try:
            yield
        finally:
            setattr(owner, name, full)

    @property
    def rotary(self) -> bool:
        """Whether attention is rotary Llama-like (see :data:`ROTARY_FAMILIES`)."""
        return self.family in ROTARY_FAMILIES

    def attention(self, model: nn.Module, layer: int) -> nn.Module:
        """Block ``layer``'s attention module (the module whose output is ``hook_attn_out``)."""
        return self.layers(model)[layer].get_submodule(self.where("hook_attn_out")[0])

    def part(self, model: nn.Module, layer: int, name: str) -> nn.Module:
        """Block ``layer``'s module ``name`` of :data:`BLOCK_PARTS` (``attn_in``, ``mlp_in``: the
        norms; ``attn_out``, ``mlp_out``: the output projections; ``attn``, ``mlp``: the
        sublayers the norms feed)."""
        parts = BLOCK_PARTS.get(self.family)
        if parts is None or name not in parts:
            raise ArchitectureError(f"family {self.family!r} has no block part {name!r} (known for "
                                    f"pre-norm Llama-like families: {', '.join(BLOCK_PARTS)})")
        try:
            return self.layers(model)[layer].get_submodule(parts[name])
        except AttributeError as e:
            raise ArchitectureError(f"block {layer} of this {self.family!r} model has no "
                                    f"{parts[name]} ({name})") from e

    def rotary_embedding(self, model: nn.Module) -> nn.Module:
        """The base model's rotary embedding (``cos, sin = it(x, position_ids)``)."""
        if not self.rotary:
            raise ArchitectureError(f"family {self.family!r} has no rotary Llama-like attention")
        return self.base(model).rotary_emb

    def where(self, kind: str) -> Where:
        if kind == "hook_embed":
            return ("", "input")
        if kind not in self.table:
            raise ArchitectureError(f"family {self.family!r} has no mapping for site {kind!r}")
        return self.table[kind]

    def module(self, model: nn.Module, kind: str, layer: int) -> tuple[nn.Module, str]:
        path, io = self.where(kind)[:2]
        block = self.layers(model)[0 if kind == "hook_embed" else layer]
        return (block.get_submodule(path) if path else block), io

    def d_model(self, model: nn.Module) -> int:
        cfg = _text_config(model.config)
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    def head_shape(self, model: nn.Module) -> tuple[int, int]:
        cfg = _text_config(model.config)
        n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        head_dim = getattr(cfg, "head_dim", None) or self.d_model(model) // n_heads
        return n_heads, int(head_dim)

    def d_mlp(self, model: nn.Module) -> int:
        cfg = _text_config(model.config)
        d = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
        return int(d or 4 * self.d_model(model))

    def n_kv_heads(self, model: nn.Module) -> int:
        """Key/value heads (fewer than query heads in grouped-query attention)."""
        cfg = _text_config(model.config)
        n = getattr(cfg, "num_key_value_heads", None)
        return int(n or self.head_shape(model)[0])

    def units(self, model: nn.Module) -> dict[str, int]:
        """Heads or neurons per site kind, for ``parse_sites(..., units=...)``."""
        n_heads = self.head_shape(model)[0]
        n_kv = self.n_kv_heads(model)
        return {"attn.hook_z": n_heads, "attn.hook_q": n_heads, "attn.hook_k": n_kv,
                "attn.hook_v": n_kv, "mlp.hook_post": self.d_mlp(model)}


def _text_config(config):
    return getattr(config, "text_config", None) or config


def _find_layers_path(model: nn.Module) -> str:
    for path in LAYER_PATHS:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return path
    raise ArchitectureError(
        f"cannot find the decoder block list of {type(model).__name__}; tried {', '.join(LAYER_PATHS)}. "
        "Register its layout with probe.arch.register_family()."
    )


def guess_architecture(model: nn.Module) -> Architecture:
    """Fallback for unknown decoder models: a Llama-like or GPT-2-like layout, checked."""
    path = _find_layers_path(model)
    block = model.get_submodule(path)[0]
    for family, table in (("llama-like", _LLAMA_LIKE), ("gpt2-like", _GPT2)):
        try:
            for sub, *_ in table.values():
                if sub:
                    block.get_submodule(sub)
        except AttributeError:
            continue
        return Architecture(family, table, path)
    raise ArchitectureError(
        f"unknown architecture {type(model).__name__}: its blocks match no known layout. "
        "Register one with probe.arch.register_family(model_type, table)."
    )


def register_family(model_type: str, table: Mapping[str, Where], *,
                    like: str | None = None) -> None:
    """Add or override the site table of a ``config.model_type``.

    ``like``: a known family whose other facts the new one shares (starting a forward at a
    later block, rotary attention, the block parts edge attribution uses), e.g. ``like="llama"``
    for a Llama-like family: one call registers everything the toolkit knows about it.
    """
    missing = set(_LLAMA_LIKE) - {"attn.hook_q", "attn.hook_k", "attn.hook_v"} - set(table)
    if missing:
        raise ArchitectureError(f"table for {model_type!r} lacks {sorted(missing)}")
    if like is not None and like not in FAMILIES:
        raise ArchitectureError(f"like={like!r} is not a known family; known: "
                                f"{', '.join(FAMILIES)}")
    FAMILIES[model_type] = dict(table)
    if like is not None:
        for known in (SKIPPABLE_FAMILIES, ROTARY_FAMILIES):
            if like in known:
                known.add(model_type)
        if like in BLOCK_PARTS:
            BLOCK_PARTS[model_type] = BLOCK_PARTS[like]


def architecture_for(model: nn.Module) -> Architecture:
    """The architecture of a loaded Hugging Face model (by ``model_type``, else guessed)."""
    model_type = _text_config(model.config).model_type
    if model_type in FAMILIES:
        return Architecture(model_type, FAMILIES[model_type], _find_layers_path(model))
    return guess_architecture(model)
