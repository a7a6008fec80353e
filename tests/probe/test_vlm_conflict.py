"""The image/text conflict set, modality attribution and ``probe conflict`` on tiny VLMs.

Tiny random models: these tests check the mechanics (files, shapes, that attribution patching
is the first-order effect of the ablation it estimates), never a finding about real models.
"""

import json

import numpy as np
import pytest
import torch

from probe.cli import main
from probe.data import load_dataset
from probe.models import load_model
from probe.sites import Site
from probe.vlm.attribution import (GROUPS, group_masks, group_means, modality_attribution,
                                   valence_readout)
from probe.vlm.conflict import ConflictConfig, build_conflict_set, load_conflict_set, run_conflict
from probe.multimodal.encode import encode_multimodal
from probe.vlm.images import draw, user_images

SMALL = ConflictConfig(scenarios=2, per_cell=1, image_size=32, batch_size=4)


@pytest.fixture(scope="module")
def scenarios():
    return load_dataset("emotion-scenarios")


def test_conflict_set_pairs_texts_with_images_of_both_valences(tmp_path, scenarios):
    file = build_conflict_set(tmp_path, scenarios, config=ConflictConfig(scenarios=3, per_cell=2,
                                                                          image_size=48))
    rows = load_conflict_set(file)
    assert len(rows) == 12 and (rows["condition"] == "conflict").sum() == 6
    opposite = rows["text_valence"] != rows["image_valence"]
    assert (opposite == (rows["condition"] == "conflict")).all()
    assert rows.groupby("group").size().tolist() == [4, 4, 4]
    assert all(p.endswith(".png") and (tmp_path / p).exists() for p in
               [json.loads(line)["image"] for line in file.read_text().splitlines()])
    happy = np.asarray(draw("face", "positive", size=48))
    sad = np.asarray(draw("face", "negative", size=48))
    assert happy.shape == (48, 48, 3) and (happy != sad).any()


def test_user_image_folder(tmp_path, scenarios):
    for valence in ("positive", "negative"):
        (tmp_path / "imgs" / valence).mkdir(parents=True)
        draw("scene", valence, size=16).save(tmp_path / "imgs" / valence / "a.jpg")
    assert len(user_images(tmp_path / "imgs")) == 2
    rows = load_conflict_set(build_conflict_set(tmp_path / "set", scenarios, config=ConflictConfig(
        scenarios=1, images=str(tmp_path / "imgs"))))
    assert set(rows["image_kind"]) == {"user"}
    (tmp_path / "empty" / "positive").mkdir(parents=True)
    with pytest.raises(ValueError, match="'positive' subfolder"):
        user_images(tmp_path / "empty")


def test_attribution_is_the_first_order_effect_of_the_ablation(tiny_vlm_dir, tmp_path, scenarios,
                                                               monkeypatch):
    """AtP(G) = (a - a') . dM/da over G's positions is the derivative of M along the path from
    a' to a: check it against central finite differences of M(a' + t (a - a')) in float64
    (Llama's RMSNorm computes in float32 whatever the dtype: swapped for the same formula)."""
    import transformers.models.llama.modeling_llama as llama

    def rms_norm(self, x):
        ms = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(ms + self.variance_epsilon))
    monkeypatch.setattr(llama.LlamaRMSNorm, "forward", rms_norm)
    lm = load_model(str(tiny_vlm_dir / "llava"), device="cpu", dtype="float32")
    lm.model.double()
    lm.dtype = torch.float64
    rows = load_conflict_set(build_conflict_set(tmp_path, scenarios, config=SMALL))[:3]
    enc = encode_multimodal(lm.processor, rows["text"].tolist(), images=rows["image"].tolist(),
                            chat_template=True)
    readout = valence_readout(lm.tokenizer)
    att = modality_attribution(lm, enc, readout=readout, layers=[0, 1], batch_size=3)
    assert att.atp.shape == (3, 2, 3) and att.n_tokens[:, 0].min() == 16
    batch = lm.batch(enc)
    masks = group_masks(batch)
    site = Site("hook_resid_pre", 1)
    means = group_means(lm, enc, [site], batch_size=3)
    for k, g in enumerate(GROUPS):
        def moved(t):
            def fn(value, ctx):
                m = masks[g][..., None].to(value.dtype)
                return value + t * (means[site, g] - value) * m
            with torch.no_grad(), lm.hooks({site: fn}):
                return readout(lm.logits(batch), batch).numpy()
        h = 1e-4
        derivative = -(moved(h) - moved(-h)) / (2 * h)
        np.testing.assert_allclose(att.atp[:, 1, k], derivative, rtol=1e-5, atol=1e-9)
    # the ablation check is the full (not first-order) effect of mean-ablating the group
    embed = Site("hook_resid_pre", 0)
    mean = group_means(lm, enc, [embed])[embed, "media"]
    with torch.no_grad(), lm.hooks({embed: lambda v, ctx: v + (mean - v)
                                    * masks["media"][..., None].to(v.dtype)}):
        ablated = readout(lm.logits(batch), batch).numpy()
    np.testing.assert_allclose(att.ablated[:, 0], att.readout - ablated, rtol=1e-9, atol=1e-12)


def test_run_conflict_writes_tables_and_figure(tiny_vlm, tmp_path, scenarios):
    lm = tiny_vlm("gemma3")
    summary = run_conflict(lm, tmp_path / "out", scenarios=scenarios, config=SMALL)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"items.csv", "layers.csv", "summary.json", "run.json", "conflict.png", "conflict.svg",
            "set"} <= files
    assert summary["n_items"] == 8 and summary["n_conflict"] == 4
    assert sum(summary["conflict_follows"].values()) == pytest.approx(1.0)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["provenance"]["architecture"] == "gemma3_text"


def test_cli_conflict(tiny_vlm_dir, tiny_dir, tmp_path, capsys):
    rc = main(["conflict", "--model", str(tiny_vlm_dir / "qwen2_vl"), "--scenarios", "1",
               "--image-size", "56", "--layers", "0,2", "--out", str(tmp_path / "r"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "answer follows" in out and (tmp_path / "r" / "items.csv").exists()
    assert main(["conflict", "--model", str(tiny_dir / "llama"), "--out", str(tmp_path / "x")]) == 2
    assert "takes no images" in capsys.readouterr().err
    assert main(["conflict", "--model", str(tiny_vlm_dir / "llava"), "--layers", "0,9"]) == 2
    assert "out of range" in capsys.readouterr().err
