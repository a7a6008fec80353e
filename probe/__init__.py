"""emoprobe core: models, activation sites, capture, Zarr activation stores, probes and sweeps."""

__version__ = "0.1.0"
