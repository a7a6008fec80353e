"""Multimodal backbones: loading, the processor's modality layout, capture equals HF, poolings."""

import pytest
import torch

from probe.capture import CaptureError, check_poolings, iter_blocks
from probe.models import ModelNotAvailableError, load_model
from probe.sites import Site, parse_sites
from probe.tokens import EncodingError
from probe.multimodal.encode import encode_multimodal, layout_coords, layout_string
from probe.multimodal.processors import modality_codes
from tests.tiny_vlm import VLM_FAMILIES, make_image, make_wave

TEXTS = ["We won the final!", "The meeting is at noon.", "Someone stole my bike and laughed at me."]
F32 = torch.finfo(torch.float32).eps


def media(family):
    """Row 0 and 2 carry media (of different sizes), row 1 is text only."""
    if family == "qwen2_audio":
        return {"audio": [make_wave(), None, make_wave(0.3, 440.0)]}
    return {"images": [make_image((200, 30, 30)), None, make_image((20, 30, 200), (60, 50))]}


def hf_inputs(lm, enc, family, i):
    """What the model's own processor gives for row i (the reference path)."""
    kw = media(family)
    item = next(iter(kw.values()))[i]
    extra = {}
    if item is not None:
        extra = ({"audio": [item], "sampling_rate": 16000} if family == "qwen2_audio"
                 else {"images": [item]})
    return lm.processor(text=[enc.prompts[i]], return_tensors="pt", **extra)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_loads_through_the_registry_path_with_its_processor(tiny_vlm, family):
    lm = tiny_vlm(family)
    assert lm.processor is not None and lm.tokenizer is lm.processor.tokenizer
    assert lm.arch.layers_path == "model.language_model.layers" and lm.n_layers == 3
    assert lm.arch.trunk(lm.model) is lm.model.model
    assert lm.media == (("audio",) if family == "qwen2_audio" else ("image",))
    assert lm.chat_template


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_modality_layout_is_the_processors(tiny_vlm, family):
    lm = tiny_vlm(family)
    enc = encode_multimodal(lm.processor, TEXTS, chat_template=True, **media(family))
    cfg = lm.model.config
    tid = (lm.tokenizer.convert_tokens_to_ids(lm.processor.audio_token) if family == "qwen2_audio"
           else getattr(cfg, "image_token_id", None) or cfg.image_token_index)
    code = 3 if family == "qwen2_audio" else 1
    for i in range(3):
        ids = hf_inputs(lm, enc, family, i)["input_ids"][0].tolist()
        assert enc.ids[i] == ids
        assert [j for j, c in enumerate(enc.modality[i]) if c == code] == \
            [j for j, t in enumerate(ids) if t == tid]
        c0, c1 = enc.content[i]
        assert lm.tokenizer.decode(ids[c0:c1]).strip() == TEXTS[i]
    assert code not in enc.modality[1] and code in enc.modality[0]
    coords = layout_coords(enc)
    assert coords["n_text_tokens"].tolist() == [sum(c == 0 for c in m) for m in enc.modality]
    assert coords["layout"][1] == f"t{len(enc.ids[1])}"


def test_qwen2_vl_fallback_processor_equals_the_real_one(tiny_vlm, monkeypatch):
    """Without torchvision the real Qwen2VLProcessor refuses to build (its video part); with
    its class check bypassed it builds, and our video-free one gives the same inputs."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    lm = tiny_vlm("qwen2_vl")
    ours = lm.processor
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, n, a: None)
    real = transformers.Qwen2VLProcessor(image_processor=ours.image_processor,
                                         tokenizer=ours.tokenizer, video_processor=None,
                                         chat_template=ours.chat_template)
    prompt = "<|user|><|vision_start|><|image_pad|><|vision_end|>We won!</s><|assistant|>"
    image = make_image((10, 200, 10), (70, 40))
    a = ours(text=[prompt], images=[image], return_tensors="pt")
    b = real(text=[prompt], images=[image], return_tensors="pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_capture_equals_hf_hidden_states(tiny_vlm, family, side, one_thread):
    """Batched capture (mixed media and text-only rows, padded) equals each row alone through
    the model's own processor and forward (hidden_states[L + 1]), for last / mean / modality
    poolings. (The last layer is left out: HF's last hidden state is after the final norm.)"""
    lm = tiny_vlm(family)
    enc = encode_multimodal(lm.processor, TEXTS, chat_template=True, **media(family))
    kind = "audio-mean" if family == "qwen2_audio" else "image-mean"
    sites = parse_sites("blocks.0,1.hook_resid_post", n_layers=lm.n_layers)
    pools = ["last", "mean", "text-mean", "text-last"]
    (_, out), = iter_blocks(lm, enc, sites, pools, batch_size=3, block_size=8, padding_side=side)
    (_, media_out), = iter_blocks(lm, enc.__class__(**{**enc.__dict__, **_rows(enc, [0, 2])}),
                                  sites, [kind], batch_size=2, block_size=8, padding_side=side)
    for i in range(3):
        with torch.no_grad():
            hs = lm.model(**hf_inputs(lm, enc, family, i), output_hidden_states=True).hidden_states
        codes = torch.as_tensor(enc.modality[i])
        for s in sites:
            h = hs[s.layer + 1][0]
            want = [h[-1], h.mean(0), h[codes == 0].mean(0), h[codes == 0][-1]]
            if i != 1:
                want.append(h[codes != 0].mean(0))
            got = list(out[s][i]) + ([media_out[s][[0, None, 1][i]][0]] if i != 1 else [])
            scale = h.abs().max()
            for g, w in zip(got, want):
                assert (g - w).abs().max() <= 64 * F32 * scale


def _rows(enc, rows):
    return {name: [getattr(enc, name)[r] for r in rows]
            for name in ("ids", "content", "target", "modality", "prompts", "images", "audio")}


def test_modality_poolings_need_that_modality(tiny_vlm, tiny_llama):
    lm = tiny_vlm("llava")
    enc = encode_multimodal(lm.processor, TEXTS, chat_template=True, **media("llava"))
    with pytest.raises(CaptureError, match="image tokens in every row; 1 row"):
        check_poolings(["last", "image-mean"], enc)
    with pytest.raises(CaptureError, match="audio"):
        check_poolings(["audio-mean"], enc)
    assert check_poolings(["text-mean", "text-last"], enc) == ("text-mean", "text-last")


def test_encoding_errors_say_what_to_fix(tiny_vlm, tmp_path):
    lm = tiny_vlm("llava")
    with pytest.raises(EncodingError, match="does not exist"):
        encode_multimodal(lm.processor, ["hi"], images=["nope.png"], chat_template=True,
                          root=tmp_path)
    with pytest.raises(EncodingError, match="placeholder"):
        encode_multimodal(lm.processor, ["look <image> here"], chat_template=True)
    with pytest.raises(EncodingError, match="takes no audio"):
        encode_multimodal(lm.processor, ["hi"], audio=[make_wave()], chat_template=True)
    with pytest.raises(EncodingError, match="one entry per text"):
        encode_multimodal(lm.processor, ["a", "b"], images=[None], chat_template=True)
    import wave
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes((make_wave(0.1, rate=8000) * 30000).astype("int16").tobytes())
    with pytest.raises(EncodingError, match="8000 Hz.*16000 Hz"):
        encode_multimodal(tiny_vlm("qwen2_audio").processor, ["hi"], audio=["a.wav"],
                          chat_template=True, root=tmp_path)


def test_media_paths_and_raw_prompts(tiny_vlm, tmp_path):
    lm = tiny_vlm("qwen2_audio")
    import numpy as np
    np.save(tmp_path / "clip.npy", make_wave())
    enc = encode_multimodal(lm.processor, ["We won!"], audio=["clip.npy"], chat_template=False,
                            root=tmp_path)
    assert enc.prompts[0] == "<|audio_bos|><|AUDIO|><|audio_eos|>\nWe won!"
    assert layout_string(enc.modality[0]).startswith("t1 a")
    assert modality_codes(lm.processor, enc.ids[0]) == enc.modality[0]


def test_missing_vlm_weights_say_how_to_get_them():
    with pytest.raises(ModelNotAvailableError, match="hf download llava-hf/llava-1.5-7b-hf"):
        load_model("llava-1.5-7b", device="cpu")
    with pytest.raises(ModelNotAvailableError, match="licence.*google/gemma-3-4b-it"):
        load_model("gemma-3-4b-it", device="cpu")


def test_image_dataset_caches_with_its_layout_and_probes_on_image_positions(tiny_vlm, tmp_path,
                                                                             one_thread):
    """A JSONL with an image column, cached and probed unchanged on a tiny LLaVA: the label is
    the image's colour and the texts carry none of it. At the embeddings a probe on image
    positions alone reads it and one on text positions cannot; after attention the text
    positions carry it too."""
    import json

    import numpy as np

    from probe.cache import CacheConfig, cache_activations
    from probe.data import load_dataset
    from probe.evaluate import EvalConfig
    from probe.store import open_store
    from probe.sweep import probe_store
    from tests.tiny import CORPUS

    lm = tiny_vlm("llava")
    (tmp_path / "img").mkdir()
    for name, color in (("warm", (220, 60, 30)), ("cold", (30, 60, 220))):
        for k in range(2):
            make_image(tuple(c + 15 * k for c in color)).save(tmp_path / "img" / f"{name}{k}.png")
    rows = [{"text": CORPUS[i % 6], "label": ["warm", "cold"][(i // 6) % 2],
             "image": f"img/{['warm', 'cold'][(i // 6) % 2]}{i % 2}.png"} for i in range(24)]
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(str(tmp_path / "set.jsonl"))
    config = CacheConfig(sites="hook_embed blocks.*.hook_resid_post",
                         poolings=("last", "image-mean", "text-mean"),
                         block_size=8, batch_size=4, store_dtype="float32")
    path = cache_activations(lm, ds, config=config, out=tmp_path / "s.zarr", progress=False)
    store = open_store(path)
    assert store["modality"].values.tolist() == ["all", "image", "text"]
    assert store.sel(pooling=store.modality == "image")["pooling"].values.tolist() == ["image-mean"]
    assert (store["n_image_tokens"].values == 16).all()
    assert store["image"].values[6] == "img/cold0.png"
    assert all(layout.split()[1] == "i16" for layout in store["layout"].values)
    enc = encode_multimodal(lm.processor, ds.texts, chat_template=True,
                            images=[str(tmp_path / p) for p in ds.frame["image"]])
    sites = parse_sites("blocks.*.hook_resid_post", n_layers=3)
    blocks = dict(iter_blocks(lm, enc, sites, list(config.poolings), batch_size=4, block_size=8,
                              padding_side=lm.tokenizer.padding_side))
    for first, pooled in blocks.items():
        for s in sites:
            np.testing.assert_allclose(store["hook_resid_post"].values[first:first + 8, s.layer],
                                       pooled[s].numpy(), rtol=1e-6, atol=1e-6)
    results = probe_store(path, config=EvalConfig(n_folds=3, n_bootstrap=0, control=False,
                                                  lexical=False), progress=False)
    acc = results[(results.metric == "accuracy") & (results.estimator == "probe")]
    embed = acc[acc.site == "hook_embed"].set_index("pooling")["value"]
    assert embed["image-mean"] >= 0.9 and embed["text-mean"] <= 0.75
    late = acc[(acc.site == "hook_resid_post") & (acc.layer == 2)].set_index("pooling")["value"]
    assert late["text-mean"] >= 0.9
