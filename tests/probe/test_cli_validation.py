"""Arguments are validated before anything loads (issue 15): --workers, a missing Dask for
--memory, and `probe directions --store` of another model than --model."""

from __future__ import annotations

import sys

import pytest

from probe.cli import main


@pytest.mark.parametrize("n", ["0", "-4", "two"])
def test_workers_below_one_is_an_error_not_one_process(capsys, tmp_path, n):
    with pytest.raises(SystemExit) as exit_:
        main(["cache", "--workers", n, "--out", str(tmp_path / "s.zarr")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--workers" in err and ("at least 1" in err or "whole number" in err)
    assert not (tmp_path / "s.zarr").exists()


def _sweep(tmp_path, tiny_dir, *extra):
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(12)))
    return main(["sweep", "--model", str(tiny_dir / "llama"), "--dataset", str(data), "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), *extra])


def test_missing_dask_is_reported_before_the_model_loads(capsys, tmp_path, tiny_dir,
                                                         monkeypatch):
    import probe.cli

    monkeypatch.setitem(sys.modules, "dask", None)  # `import dask.array` raises ImportError
    monkeypatch.setitem(sys.modules, "dask.array", None)
    monkeypatch.setattr(probe.cli, "_load_model", lambda args: pytest.fail("model loaded"))
    assert _sweep(tmp_path, tiny_dir, "--memory", "1GiB") == 2
    assert "need Dask" in capsys.readouterr().err
    assert _sweep(tmp_path, tiny_dir, "--memory", "lots") == 2
    assert "--memory takes a size" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_directions_refuses_a_store_of_another_model(capsys, tiny_llama, tiny_dir,
                                                      toy_dataset, tmp_path):
    from probe.cache import CacheConfig, cache_activations
    from probe.store_info import check_store_model

    store = cache_activations(tiny_llama, toy_dataset, out=tmp_path / "s.zarr", progress=False,
                              config=CacheConfig(sites="blocks.1.hook_resid_post"))
    code = main(["directions", "--store", str(store), "--model", str(tiny_dir / "qwen2"),
                 "--out", str(tmp_path / "vecs")])
    err = capsys.readouterr().err
    assert code == 2 and "qwen2" in err and "llama" in err and "drop --model" in err
    assert not (tmp_path / "vecs").exists()
    check_store_model(store, str(tiny_dir / "llama"))  # the same model, spelled as a path
    check_store_model(store, tiny_llama.spec.alias)  # ... or as its alias
