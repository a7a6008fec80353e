"""Modalities in one place: the token codes of multimodal batches and what each pooling reads.

A multimodal row marks every token with transformers' ``mm_token_type_ids`` code
(:data:`MODALITY_CODES`); hooks select positions by it (``ctx.positions("image")``), capture
pools over it, and a store records per pooling which modality it read
(:data:`POOLING_MODALITY`).

>>> CODE_NAMES[MODALITY_CODES["image"]]
'image'
>>> POOLING_MODALITY["content-mean"]
'text'
"""

from __future__ import annotations

from typing import Literal

__all__ = ["CODE_NAMES", "MODALITY_CODES", "Modality", "POOLING_MODALITY"]

Modality = Literal["text", "image", "video", "audio"]
#: transformers' ``mm_token_type_ids`` codes.
MODALITY_CODES: dict[str, int] = {"text": 0, "image": 1, "video": 2, "audio": 3}
CODE_NAMES = {v: k for k, v in MODALITY_CODES.items()}
#: Which tokens each pooling reads (``all``: every real token, whatever its modality).
POOLING_MODALITY = {"last": "all", "mean": "all", "content-mean": "text", "content-last": "text",
                    "token": "text", "image-mean": "image", "audio-mean": "audio",
                    "text-mean": "text", "text-last": "text"}
