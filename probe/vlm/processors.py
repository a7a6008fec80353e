"""Moved to :mod:`probe.multimodal.processors` (multimodal encoding is core); kept importable here."""

from probe.modality import CODE_NAMES, MODALITY_CODES, Modality  # noqa: F401
from probe.multimodal.processors import (  # noqa: F401
    ProcessorError,
    is_multimodal_config,
    load_processor,
    media_kinds,
    modality_codes,
    placeholder,
)
