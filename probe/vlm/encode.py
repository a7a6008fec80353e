"""Moved to :mod:`probe.multimodal.encode` (multimodal encoding is core); kept importable here."""

from probe.multimodal.encode import (  # noqa: F401
    PER_TOKEN_KEYS,
    MultimodalEncoded,
    encode_multimodal,
    layout_coords,
    layout_string,
    load_audio,
    load_image,
    render,
)
