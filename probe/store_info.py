"""What ``probe info`` prints about a store: provenance, size, and what is cached."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import xarray as xr

from probe import objectstore
from probe.store import StoreError, open_store


def describe(path: str | Path) -> str:
    """A human-readable summary of a store (what `probe info` prints)."""
    ds = open_store(path, require_complete=False)
    prov = ds.attrs.get("emoprobe", {})
    prog = ds.attrs.get("progress", {})
    n = prov.get("n_samples")
    if objectstore.is_remote(path):
        size = objectstore.Remote.at(str(path)).size()
    else:
        path = objectstore.local_path(path) if objectstore.protocol(path) else Path(path)
        path = path.absolute()
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    lines = [
        f"store     {path}",
        f"status    {_status(ds.attrs)}",
        f"model     {prov.get('model')} ({prov.get('model_id')}), {prov.get('dtype')}, "
        f"weights {prov.get('weight_fingerprint')}",
        f"dataset   {prov.get('dataset')} ({n} samples, hash {str(prov.get('dataset_hash'))[:12]})",
        f"template  {'chat template' if prov.get('chat_template') else 'raw text'}"
        + (f", system prompt {prov.get('system_prompt')!r}" if prov.get("system_prompt") else ""),
        f"pooling   {', '.join(prov.get('poolings', []))}",
        f"batches   {prov.get('batch_size')} texts, {prov.get('padding_side')} padding, committed "
        f"in blocks of {prov.get('block_size')} rows"
        + (f"; longer texts cut to {prov['truncate']} tokens (--truncate)"
           if prov.get("truncate") else ""),
        *_media_lines(ds),
        f"stored as {prov.get('store_dtype')}, {size / 2**20:.1f} MiB on disk",
        f"toolkit   emoprobe {prov.get('toolkit_version')}, created {prov.get('created')}",
        "arrays:",
    ]
    for name, var in ds.data_vars.items():
        dims = ", ".join(f"{d}={s}" for d, s in zip(var.dims, var.shape))
        lines.append(f"  {name:16s} ({dims})")
        lines.append(f"  {'':16s} {_progress_line(name, prog, n)}")
    targets = prov.get("targets", {})
    if targets:
        lines.append("targets:  " + ", ".join(f"{k} ({v})" for k, v in targets.items()))
    return "\n".join(lines)


def _status(attrs: Mapping) -> str:
    if "emoprobe" not in attrs:  # made in place by an older version, killed while creating
        return ("HALF-CREATED (killed before its provenance was written; rerun the command that "
                "made it to build it afresh)")
    return "complete" if attrs.get("complete") else "INCOMPLETE (rerun to resume)"


def _media_lines(ds: xr.Dataset) -> list[str]:
    """Multimodal stores: image/audio tokens per row and one row's layout."""
    out = []
    for kind in ("image", "audio"):
        if f"n_{kind}_tokens" in ds.coords:
            n = ds[f"n_{kind}_tokens"].values
            if n.max() > 0:
                example = ds["layout"].values[int(n.argmax())]
                out.append(f"{kind + 's':9s} {int((n > 0).sum())} rows, {int(n.min())}-"
                           f"{int(n.max())} {kind} tokens per row (e.g. layout {example})")
    return out


def _progress_line(name: str, progress: Mapping[str, int], n: int) -> str:
    if name in progress:
        return f"rows {progress[name]}/{n}"
    done = sorted(int(k.split("/")[1]) for k, v in progress.items() if k.startswith(name + "/") and v == n)
    part = {int(k.split("/")[1]): v for k, v in progress.items() if k.startswith(name + "/") and v < n}
    text = f"layers cached: {_ranges(done) or 'none'}"
    if part:
        text += "; unfinished: " + ", ".join(f"L{k} {v}/{n}" for k, v in sorted(part.items()))
    return text


def _ranges(values: Sequence[int]) -> str:
    out: list[str] = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def check_store_model(path: str | Path, model: str) -> None:
    """Refuse ``--model`` naming another model than the one whose activations ``path`` holds.

    ``model`` matches the store's alias, its Hugging Face id, or (a local folder) its resolved
    path. Raises :class:`probe.store.StoreError` naming both models.
    """
    prov = open_store(path, require_complete=False).attrs.get("emoprobe", {})
    names = {prov.get("model"), prov.get("model_id")}
    local = Path(model).expanduser()
    if model in names or (local.is_dir() and str(local.resolve()) in names):
        return
    raise StoreError(f"--store {path} holds activations of {prov.get('model')} "
                     f"({prov.get('model_id')}), but --model is {model!r}; drop --model (the "
                     f"store decides the model) or give a store cached from {model!r}")
