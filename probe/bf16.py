"""bfloat16 activations on disk: stored as their uint16 bits, read back as exact float32.

Zarr has no bfloat16 dtype. float16 holds |x| <= 65,504, and large models' "massive
activations" exceed it; float32 doubles the size. A bfloat16 value is the top half of a
float32, so a store keeps bfloat16 activations as ``uint16`` bit patterns (attribute
``emoprobe_encoding: "bfloat16-bits"``) and reading shifts them back into float32: the
values a reader gets are bit for bit the bfloat16 values the model produced (widened).

>>> import torch
>>> x = torch.tensor([1.0, -3.5e38, 65504.0 * 4, float("nan")], dtype=torch.bfloat16)
>>> back = from_bits(to_bits(x))
>>> bool((torch.from_numpy(back)[:3] == x[:3].float()).all()), bool(np.isnan(back[3]))
(True, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    import torch

ATTR, VALUE = "emoprobe_encoding", "bfloat16-bits"
#: The bits of a bfloat16 NaN: the fill value of rows not yet written.
NAN_BITS = 0x7FC0


def to_bits(x: torch.Tensor) -> np.ndarray:
    """A tensor (any float dtype) rounded to bfloat16, as a host ``uint16`` array of its bits."""
    import torch

    return x.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)


def from_bits(bits: np.ndarray) -> np.ndarray:
    """``uint16`` bfloat16 bit patterns -> the same values as float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def is_bits(var: xr.DataArray | xr.Variable) -> bool:
    return var.attrs.get(ATTR) == VALUE or var.encoding.get(ATTR) == VALUE


def decode(ds: xr.Dataset) -> xr.Dataset:
    """Replace every bfloat16-bits variable of ``ds`` by its float32 values, lazily.

    Works on numpy-backed lazy arrays (decoded per access) and on Dask arrays (per chunk).
    """
    from xarray.coding.variables import lazy_elemwise_func

    out = {}
    for name, var in ds.data_vars.items():
        if not is_bits(var):
            continue
        attrs = {k: v for k, v in var.attrs.items() if k != ATTR}
        data = var.variable._data
        if hasattr(data, "map_blocks"):  # dask
            decoded = data.map_blocks(from_bits, dtype=np.float32)
        else:
            decoded = lazy_elemwise_func(data, from_bits, np.dtype(np.float32))
        out[name] = xr.Variable(var.dims, decoded, attrs=attrs, encoding=dict(var.encoding))
    return ds.assign(out) if out else ds
