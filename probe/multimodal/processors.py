"""Processors of multimodal models: loading them offline, their placeholders, token modalities.

A multimodal checkpoint ships a *processor*: its tokenizer, an image processor (or an audio
feature extractor) and the rule that expands one ``<image>`` placeholder into the many image
tokens the vision tower fills in. Everything here defers to that processor, so image-token
positions are the processor's own (``mm_token_type_ids``: 0 text, 1 image, 2 video, 3 audio).

One fallback: Qwen2-VL's processor also builds a *video* processor, which needs torchvision.
Without torchvision (e.g. a CPU-only torch) :func:`load_processor` builds the same processor
without its video part (images and text behave exactly the same; videos are refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from probe.errors import EmoprobeError
from probe.modality import CODE_NAMES, MODALITY_CODES, Modality  # noqa: F401 (old names)

#: Processors whose video part can be left out when torchvision is missing.
_VIDEO_OPTIONAL = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")
#: Tokens that wrap a placeholder in a raw (no chat template) prompt, per processor class.
_RAW_WRAP: dict[str, dict[str, tuple[str, str]]] = {
    "Qwen2VLProcessor": {"image": ("<|vision_start|>", "<|vision_end|>")},
    "Qwen2_5_VLProcessor": {"image": ("<|vision_start|>", "<|vision_end|>")},
    "Qwen2AudioProcessor": {"audio": ("<|audio_bos|>", "<|audio_eos|>")},
}


class ProcessorError(EmoprobeError, ValueError):
    """A multimodal processor cannot be loaded or used as asked."""


def is_multimodal_config(config) -> bool:
    """Whether a Hugging Face config describes an image- or audio-language model."""
    return any(getattr(config, name, None) is not None
               for name in ("vision_config", "audio_config"))


def load_processor(path: str, **kwargs) -> Any:
    """``AutoProcessor.from_pretrained(path)``, or Qwen2-VL's without its video part.

    Args:
        path: a local checkpoint directory or a Hugging Face id (in the local cache).
        **kwargs: passed to ``from_pretrained`` (``local_files_only``, ``revision``).
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the fallback decides, or re-raises
        name = _processor_class(path, **kwargs)
        if name not in _VIDEO_OPTIONAL:
            raise ProcessorError(f"cannot load the processor of {path}: {exc}") from None
        return _video_free(name, path, **kwargs)


def _processor_class(path: str, **kwargs) -> str | None:
    """The ``processor_class`` a checkpoint names (processor or preprocessor config)."""
    for fname in ("processor_config.json", "preprocessor_config.json"):
        try:
            from transformers.utils import cached_file

            file = cached_file(path, fname, _raise_exceptions_for_missing_entries=False, **kwargs)
        except Exception:  # noqa: BLE001 - an absent file is not an error here
            file = None
        if file and Path(file).is_file():
            name = json.loads(Path(file).read_text()).get("processor_class")
            if name:
                return name
    return None


def _video_free(name: str, path: str, **kwargs):
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.processing_utils import ProcessorMixin

    base = getattr(transformers, name)

    class WithoutVideo(base):
        """``base`` with image and text only (its video processor needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kw):
            for kind, default in (("image", "<|image_pad|>"), ("video", "<|video_pad|>")):
                token = getattr(tokenizer, f"{kind}_token", None) or default
                setattr(self, f"{kind}_token", token)
                setattr(self, f"{kind}_token_id", tokenizer.convert_tokens_to_ids(token))
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template,
                                    **kw)

    WithoutVideo.__name__ = WithoutVideo.__qualname__ = name
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    return WithoutVideo(image_processor=AutoImageProcessor.from_pretrained(path, **kwargs),
                        tokenizer=tok, chat_template=_chat_template(path, tok, **kwargs))


def _chat_template(path: str, tokenizer, **kwargs) -> str | None:
    from transformers.utils import cached_file

    for fname in ("chat_template.jinja", "chat_template.json"):
        try:
            file = cached_file(path, fname, _raise_exceptions_for_missing_entries=False, **kwargs)
        except Exception:  # noqa: BLE001
            file = None
        if file and Path(file).is_file():
            text = Path(file).read_text()
            return json.loads(text)["chat_template"] if fname.endswith(".json") else text
    return getattr(tokenizer, "chat_template", None)


# ------------------------------------------------------------------------------ using one
def media_kinds(processor) -> tuple[str, ...]:
    """The media a processor takes: ``("image",)``, ``("audio",)``, ... (never text)."""
    kinds = []
    if getattr(processor, "image_processor", None) is not None:
        kinds.append("image")
    if getattr(processor, "feature_extractor", None) is not None and getattr(
            processor, "audio_token", None) is not None:
        kinds.append("audio")
    return tuple(kinds)


def placeholder(processor, kind: str) -> str:
    """What a raw prompt holds for one image (or audio clip) before the processor expands it."""
    token = getattr(processor, f"{kind}_token", None)
    if token is None:
        raise ProcessorError(f"{type(processor).__name__} takes no {kind} input")
    start, end = _RAW_WRAP.get(type(processor).__name__, {}).get(kind, ("", ""))
    return f"{start}{token}{end}"


def modality_codes(processor, input_ids) -> list[int]:
    """Per-token modality codes of one row, as the processor assigns them (see module doc)."""
    ids = [int(i) for i in input_ids]
    if hasattr(processor, "create_mm_token_type_ids"):
        return [int(c) for c in processor.create_mm_token_type_ids([ids])[0]]
    codes = [0] * len(ids)
    for kind in ("image", "video", "audio"):
        tid = getattr(processor, f"{kind}_token_id", None)
        for j, t in enumerate(ids):
            if tid is not None and t == tid:
                codes[j] = MODALITY_CODES[kind]
    return codes
