"""emoprobe core: models, activation sites, the hook layer, capture, Zarr stores, probes, sweeps.

>>> from probe import load_model, Site
"""

__version__ = "0.1.0"

_LAZY = {"load_model": "probe.models", "Site": "probe.sites", "parse_sites": "probe.sites",
         "hooks": "probe.hooks", "open_store": "probe.store"}


def __getattr__(name: str):
    """Import the common entry points on first use (``import probe`` stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'probe' has no attribute {name!r}")
