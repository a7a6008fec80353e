"""Model registry and loading: aliases, local dirs, missing weights, the embedded model."""

from pathlib import Path

import pytest

from probe.models import (
    REGISTRY,
    ModelError,
    ModelNotAvailableError,
    known_n_layers,
    load_model,
    model_config,
    resolve_device,
    resolve_dtype,
    resolve_model,
)

REQUIRED = ("llama-3-8b", "llama-3-8b-instruct", "llama-3.1-8b-instruct", "llama-3.2-1b-instruct",
            "llama-3.2-3b-instruct", "qwen2.5-7b-instruct", "qwen3-8b", "gemma-2-9b-it",
            "mistral-7b-instruct", "smollm2-135m")


def test_registry_has_the_promised_aliases():
    assert set(REQUIRED) <= set(REGISTRY)
    assert REGISTRY["smollm2-135m"].embedded
    assert resolve_model("Qwen/Qwen3-8B").hf_id == "Qwen/Qwen3-8B"


def test_unknown_names_and_missing_dirs():
    with pytest.raises(ModelError, match="unknown model 'gpt-7'"):
        resolve_model("gpt-7")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./no/such/dir")


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailableError) as exc:
        load_model("gemma-2-9b-it")
    text = str(exc.value)
    assert "gemma-2-9b-it" in text and "hf download google/gemma-2-9b-it" in text
    assert "https://huggingface.co/google/gemma-2-9b-it" in text and "--allow-download" in text
    with pytest.raises(ModelNotAvailableError, match="hf download Qwen/Qwen3-8B"):
        load_model("qwen3-8b")


def test_device_and_dtype():
    import torch

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA"):
            resolve_device("cuda")


def test_local_directory_load_has_provenance(tiny_dir):
    lm = load_model(str(tiny_dir / "qwen2"), device="cpu", dtype="bfloat16")
    prov = lm.provenance()
    assert prov["architecture"] == "qwen2" and prov["n_layers"] == 3 and prov["dtype"] == "bfloat16"
    assert len(prov["weight_fingerprint"]) == 16
    assert lm.chat_template and next(lm.model.parameters()).dtype == torch_bf16()
    assert not lm.model.training
    no_template = load_model(str(tiny_dir / "qwen2"), chat_template=False)
    assert not no_template.chat_template


def test_provenance_records_no_home_folder(tiny_dir, monkeypatch):
    """What run files, stores and shared vectors record: ``~/...`` for a model under the home
    folder, any other path as it is."""
    lm = load_model(str(tiny_dir / "qwen2"), device="cpu")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tiny_dir.parent))
    assert lm.provenance()["model_source"] == f"~/{tiny_dir.name}/qwen2"
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: Path("/nowhere")))
    assert lm.provenance()["model_source"] == str(tiny_dir / "qwen2")


def test_layers_are_known_before_the_weights_load(tiny_dir, tmp_path, monkeypatch):
    assert known_n_layers(str(tiny_dir / "gpt2")) == 3
    assert known_n_layers(str(tiny_dir / "gemma2")) == 3
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelNotAvailableError, match="hf download Qwen/Qwen3-8B"):
        model_config("qwen3-8b")
    monkeypatch.setenv("EMOPROBE_HOME", str(tmp_path / "fresh"))  # embedded model not converted
    assert model_config("smollm2-135m") is None and known_n_layers("smollm2-135m") == 30
    assert not (tmp_path / "fresh").exists()  # and nothing was converted


def torch_bf16():
    import torch

    return torch.bfloat16


@pytest.mark.slow
def test_embedded_model_loads_offline():
    lm = load_model("smollm2-135m", device="cpu")
    assert lm.n_layers == 30 == known_n_layers("smollm2-135m") == REGISTRY["smollm2-135m"].n_layers
    assert lm.arch.d_model(lm.model) == 576
    assert lm.arch.head_shape(lm.model) == (9, 64) and lm.arch.d_mlp(lm.model) == 1536
    assert lm.chat_template and lm.tokenizer.pad_token_id is not None
    assert lm.provenance()["revision"] == "gguf-Q4_1"
