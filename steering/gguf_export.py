"""Export a steering vector as a llama.cpp control vector (the GGUF file repeng writes).

llama.cpp (``--control-vector FILE`` / ``--control-vector-scaled FILE SCALE``, and
``llama_apply_adapter_cvec``) reads a GGUF file with ``general.architecture = "controlvector"``,
``controlvector.model_hint`` (the model family) and ``controlvector.layer_count``, and one
float32 tensor ``direction.N`` per layer. It **adds** ``SCALE * direction.N`` to the output of
block ``N`` (0-based; block 0's output cannot be steered) at **every position**, prompt included,
as repeng's ``ControlVector.export_gguf`` assumes.

So only additive steering of the residual stream after a block carries over:

* ``blocks.N.hook_resid_post`` -> ``direction.N`` (exactly);
* ``blocks.N.hook_mlp_out`` -> ``direction.N`` (adding to what the MLP writes is adding to the
  block's output);
* ``blocks.N.hook_resid_pre`` -> ``direction.{N-1}`` (the previous block's output);
* other sites (``resid_mid``, ``attn_out``: the block's own MLP would see the change; heads,
  neurons) have no llama.cpp equivalent and are refused.

Positions and modes do not carry over: llama.cpp steers every token (our ``positions="all"``)
and only adds (no ablate/clamp/scale). By default each tensor is ``rms * v`` (the site's
typical RMS recorded with the vector), so llama.cpp's ``SCALE`` has the meaning of our
``strength`` with ``unit="rms"``; ``unit="absolute"`` writes ``v`` as it is.

>>> export_gguf(vecs["happiness"], "happiness.gguf")  # doctest: +SKIP
>>> # llama-cli -m SmolLM2-135M-Instruct.Q4_1.gguf --control-vector-scaled happiness.gguf 2.0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from probe.sites import Site
from steering.vector import SteeringError, SteeringVector


def gguf_layer(site: Site) -> int:
    """The llama.cpp control-vector layer of a site (raises for sites it cannot express)."""
    if site.unit is None and site.kind in ("hook_resid_post", "hook_mlp_out"):
        layer = site.layer
    elif site.unit is None and site.kind == "hook_resid_pre":
        layer = site.layer - 1
    else:
        raise SteeringError(
            f"{site} has no llama.cpp control-vector equivalent: llama.cpp adds to a block's "
            "output (resid_post / mlp_out of block N, resid_pre of block N+1) at every position")
    if layer < 1:
        raise SteeringError(f"{site} would be direction.{layer}, but llama.cpp never steers "
                            "block 0's output (direction.0 is ignored); drop that layer (vec.at(...))")
    return layer


def export_gguf(vector: SteeringVector, path: str | os.PathLike, *,
                unit: Literal["rms", "absolute"] = "rms", strength: float = 1.0) -> Path:
    """Write ``vector`` as a llama.cpp control vector; returns the path.

    Args:
        vector: A vector at residual-stream sites (see the module docstring).
        path: Output file (``.gguf`` is added if missing).
        unit: ``"rms"``: each tensor is ``strength * rms * v``; ``"absolute"``: ``strength * v``.
        strength: Baked into the tensors (llama.cpp's own scale multiplies on top).
    """
    import gguf

    if unit not in ("rms", "absolute"):
        raise SteeringError(f"unit must be 'rms' or 'absolute' for a GGUF file, not {unit!r}")
    tensors: dict[int, np.ndarray] = {}
    for site, vec in vector.directions.items():
        layer = gguf_layer(site)
        c = vector.rms(site) if unit == "rms" else 1.0
        data = (float(strength) * c * vec.double()).float().numpy()
        tensors[layer] = tensors[layer] + data if layer in tensors else data
    path = Path(path)
    if path.suffix != ".gguf":
        path = path.with_name(path.name + ".gguf")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    arch = "controlvector"
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_string(f"{arch}.model_hint", str(vector.meta.get("architecture", "llama")))
        writer.add_uint32(f"{arch}.layer_count", len(tensors))
        for key in ("model_id", "weight_fingerprint", "emotion", "method"):
            if vector.meta.get(key) is not None:
                writer.add_string(f"emoprobe.{key}", str(vector.meta[key]))
        writer.add_string("emoprobe.strength", f"{unit} x {float(strength):g}")
        for layer in sorted(tensors):
            writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(tensors[layer], np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def read_gguf(path: str | os.PathLike) -> tuple[dict[int, np.ndarray], dict[str, str]]:
    """``({layer: direction}, string metadata)`` of a control-vector GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    if arch is None or bytes(arch.parts[-1]).decode() != "controlvector":
        raise SteeringError(f"{path} is not a llama.cpp control vector (general.architecture)")
    meta = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            meta[name] = bytes(field.parts[-1]).decode()
    dirs = {int(t.name.split(".")[1]): np.array(t.data, dtype=np.float32)
            for t in reader.tensors if t.name.startswith("direction.")}
    return dirs, meta
