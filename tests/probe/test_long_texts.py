"""Texts longer than the model's context: refused before any forward pass with the rows
named, cut only on request (--truncate), and never padded into a batch of short ones."""

from __future__ import annotations

import numpy as np
import pytest

from probe.cache import CacheConfig, cache_activations
from probe.capture import plan_blocks
from probe.store import open_store
from probe.tokens import EncodingError, context_limit
from tests.tiny import CORPUS

LONG = " ".join(["the meeting about my birthday letter from the hospital"] * 60)  # >512 tokens


def _dataset(long_rows=(5,)):
    from probe.data.schema import EmotionDataset

    rows = [{"id": f"r{i}", "text": LONG if i in long_rows else f"{CORPUS[i % 6]} ({i})",
             "label": "ab"[i % 2]} for i in range(24)]
    return EmotionDataset.from_records("long", rows)


def test_context_limit_reads_the_config_and_a_real_tokenizer_limit():
    from types import SimpleNamespace as NS

    assert context_limit(NS(max_position_embeddings=8192)) == 8192
    assert context_limit(NS(n_positions=1024)) == 1024  # GPT-2
    assert context_limit(NS(text_config=NS(max_position_embeddings=4096))) == 4096  # VLMs
    assert context_limit(NS(max_position_embeddings=8192), NS(model_max_length=2048)) == 2048
    assert context_limit(NS(max_position_embeddings=8192), NS(model_max_length=int(1e30))) == 8192
    assert context_limit(NS()) is None


def test_a_text_beyond_the_context_is_refused_naming_its_row(tiny_llama, tmp_path, monkeypatch):
    assert tiny_llama.model.config.max_position_embeddings == 512
    import probe.cache

    monkeypatch.setattr(probe.cache, "_run", lambda *a, **k: pytest.fail("forward pass ran"))
    out = tmp_path / "s.zarr"
    with pytest.raises(EncodingError) as err:
        cache_activations(tiny_llama, _dataset((5, 17)), out=out, progress=False,
                          config=CacheConfig(sites="blocks.1.hook_resid_post", batch_size=8))
    msg = str(err.value)
    assert "2 text(s) are longer than" in msg and "context of 512 tokens" in msg
    assert "5 (id 'r5'" in msg and "17 (id 'r17'" in msg and "--truncate" in msg
    assert not out.exists()  # nothing created, nothing half-written


def test_truncate_cuts_to_the_context_and_leaves_other_rows_alone(tiny_llama, tmp_path):
    cfg = dict(sites="blocks.1.hook_resid_post", batch_size=8, poolings=("last", "content-mean"))
    cut = cache_activations(tiny_llama, _dataset(), out=tmp_path / "cut.zarr", progress=False,
                            config=CacheConfig(**cfg, truncate=True))
    ds = open_store(cut)
    assert ds.attrs["emoprobe"]["truncate"] == 512
    assert list(ds["sample"].values) == [f"r{i}" for i in range(24)]  # dataset order
    x = ds["hook_resid_post"].sel(layer=1).values.astype("float32")
    assert np.isfinite(x).all()
    # the short rows read as they do in a store without the long row (other batches, same values)
    short = _dataset(long_rows=())
    ref = open_store(cache_activations(tiny_llama, short, out=tmp_path / "ref.zarr",
                                       progress=False, config=CacheConfig(**cfg)))
    y = ref["hook_resid_post"].sel(layer=1).values.astype("float32")
    keep = [i for i in range(24) if i != 5]
    np.testing.assert_allclose(x[keep], y[keep], rtol=2e-3, atol=2e-3 * np.abs(y).max())


def test_truncation_keeps_the_template_end(tiny_llama):
    from probe.tokens import encode

    full = encode(tiny_llama.tokenizer, [LONG, "short one"], chat_template=True)
    cut = encode(tiny_llama.tokenizer, [LONG, "short one"], chat_template=True, max_length=64,
                 truncate=True)
    assert len(full.ids[0]) > 64 and len(cut.ids[0]) == 64
    tail = len(full.ids[0]) - full.content[0][1]  # template tokens after the text
    assert tail > 0 and cut.ids[0][-tail:] == full.ids[0][-tail:]
    assert cut.ids[0][:cut.content[0][1]] == full.ids[0][:cut.content[0][1]]
    assert cut.ids[1] == full.ids[1] and cut.content[1] == full.content[1]
    with pytest.raises(EncodingError, match="--truncate"):
        encode(tiny_llama.tokenizer, [LONG], chat_template=True, max_length=64)


def test_short_texts_are_never_padded_to_a_long_one():
    lengths = [40] * 63 + [12_530]  # issue 15: one 50k-character row among short ones
    (first, batches), = plan_blocks(lengths, batch_size=32, block_size=64)
    assert batches[0] == [63]  # the long row runs alone
    assert sorted(r for b in batches for r in b) == list(range(64))
    assert all(len(b) <= 32 for b in batches)
    widths = [max(lengths[r] for r in b) * len(b) for b in batches]
    assert max(widths) == 12_530  # was 32 x 12,530 padded tokens
    plain = list(plan_blocks([40] * 64, batch_size=32, block_size=64))
    assert [len(b) for b in plain[0][1]] == [32, 32]  # ordinary data: batches as before


def test_cli_refuses_then_truncates(capsys, tiny_dir, tmp_path):
    from probe.cli import main

    data = tmp_path / "d.csv"
    data.write_text("id,text,label\n" + "".join(
        f"r{i},{LONG if i == 3 else CORPUS[i % 6].replace(',', '')},{'ab'[i % 2]}\n"
        for i in range(12)))
    argv = ["cache", "--model", str(tiny_dir / "llama"), "--dataset", str(data), "--quiet",
            "--sites", "blocks.0.hook_resid_post", "--out", str(tmp_path / "s.zarr")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 text(s) are longer than") and "rows 3 (id " in err
    assert not (tmp_path / "s.zarr").exists()
    assert main([*argv, "--truncate"]) == 0
    assert open_store(tmp_path / "s.zarr").attrs["emoprobe"]["truncate"] == 512
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s.zarr")]) == 0
    assert "longer texts cut to 512 tokens (--truncate)" in capsys.readouterr().out


def test_cli_reports_too_long_texts_before_the_model_loads(capsys, tiny_dir, tmp_path,
                                                           monkeypatch):
    import probe.cli
    from probe.cli import main

    data = tmp_path / "d.csv"
    data.write_text("text,label,story\n" + "".join(
        f"{LONG if i == 7 else CORPUS[i % 6].replace(',', '')},{'ab'[i % 2]},s{i // 3}\n"
        for i in range(24)))
    monkeypatch.setattr(probe.cli, "_load_model", lambda args: pytest.fail("model loaded"))
    common = ["--model", str(tiny_dir / "llama"), "--dataset", str(data), "--quiet"]
    assert main(["cache", *common, "--out", str(tmp_path / "s.zarr")]) == 2
    assert "rows 7 (id " in capsys.readouterr().err
    assert main(["sweep", *common, "--group-column", "story", "--folds", "2",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "run")]) == 2
    assert "rows 7 (id " in capsys.readouterr().err
    assert main(["cache", *common, "--max-length", "12", "--out", str(tmp_path / "s.zarr")]) == 2
    assert "--max-length 12" in capsys.readouterr().err
    assert not any(tmp_path.glob("*.zarr")) and not (tmp_path / "c").exists()
