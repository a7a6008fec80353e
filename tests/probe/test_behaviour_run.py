"""The experiments of `probe behave` called as library functions, with values (no argparse)."""

from __future__ import annotations

import pandas as pd
import pytest

from probe.behaviour.options import (
    BehaveOptions,
    EmotionPromptOptions,
    PersistenceOptions,
    PersonaOptions,
    RecognitionOptions,
)
from probe.behaviour.run import (
    Context,
    behave,
    run_emotionprompt,
    run_persistence,
    run_personas,
    run_recognition,
)
from tests.tiny import CORPUS

LABELS = ["sadness", "joy", "neutral", "anger"]


@pytest.fixture(scope="module")
def toy():
    from probe.data.schema import EmotionDataset

    rows = [{"id": f"row-{i}", "text": f"{CORPUS[i % 6]} Day {i}.", "label": LABELS[i % 4],
             "group": f"g{i // 2}"} for i in range(40)]
    return EmotionDataset.from_records("toy-run", rows)


@pytest.fixture()
def ctx(tiny_llama, toy, tmp_path_factory, one_thread):
    """The pieces an experiment needs, built by hand from values: 3 folds, 20 resamples."""
    from probe.cache import CacheConfig, default_store_path
    from probe.evaluate import EvalConfig

    root = tmp_path_factory.getbasetemp() / "behave-run-cache"  # stores shared by the tests
    config = CacheConfig(batch_size=8)
    out = tmp_path_factory.mktemp("behave-run")
    return Context(lm=tiny_llama, dataset=toy, full=toy, target="label", kind="emotion",
                   cache_config=config, store=default_store_path(tiny_llama, toy, config, root),
                   out=out, cache_dir=root, progress=False,
                   eval=EvalConfig(n_folds=3, n_bootstrap=20, seed=0, control=False,
                                   lexical=False, device="cpu"))


def test_recognition_asks_with_the_templates_it_is_given(ctx, capsys):
    run_recognition(ctx, RecognitionOptions(templates=("one-word",), max_new_tokens=2))
    items = ctx.items["recognition"]
    assert set(items["template"]) == {"one-word"} and items["id"].nunique() == 40
    assert list(ctx.run["recognition"]["config"]["templates"]) == ["one-word"]
    assert ctx.run["recognition"]["config"]["batch_size"] == 8  # the store's batch size
    assert {"recognition", "compare"} <= set(ctx.tables)
    assert (ctx.out / "probe_vs_behaviour_last.png").exists()
    assert "zero-shot vs probe" in capsys.readouterr().out


def test_personas_compare_only_the_personas_named(ctx):
    run_personas(ctx, PersonaOptions(personas=("gloomy",), templates=("letters",)),
                 asking=RecognitionOptions(max_new_tokens=2))
    items = ctx.items["personas"]
    assert set(items["persona"]) == {"none", "gloomy"} and set(items["template"]) == {"letters"}
    assert set(ctx.run["personas"]["system_prompts"]) == {"none", "gloomy"}
    assert set(ctx.tables["personas"]["persona"]) <= {"none", "gloomy"}


def test_emotionprompt_runs_the_stimuli_named(ctx):
    run_emotionprompt(ctx, EmotionPromptOptions(stimuli=("EP02",)))
    assert list(ctx.run["emotionprompt"]["stimuli"]) == ["none", "EP02"]
    assert set(ctx.items["emotionprompt"]["condition"]) == {"none", "EP02"}
    assert isinstance(ctx.tables["emotionprompt-shift"], pd.DataFrame)


def test_persistence_reads_as_far_as_asked(ctx):
    run_persistence(ctx, PersistenceOptions(max_distance=5))
    run = ctx.run["persistence"]
    assert run["config"]["max_distance"] == 5 and run["config"]["batch_size"] == 8
    assert 1 <= run["continuation_tokens"][1] <= 5
    assert set(ctx.tables["persistence"]["n_folds"]) == {3}


def test_behave_takes_options_and_a_model_loader(tiny_llama, toy, tmp_path, one_thread):
    """The whole run from values; the loader is called only once the options check out."""
    from probe.behaviour.templates import TemplateError
    from probe.cache import CacheConfig

    calls = []

    def load():
        calls.append(1)
        return tiny_llama

    bad = BehaveOptions(recognition=RecognitionOptions(templates=("nope",)), out=str(tmp_path / "x"))
    with pytest.raises(TemplateError, match="unknown template 'nope'"):
        behave(bad, full=toy, cache_config=CacheConfig(), load_model=load)
    assert not calls
    out = tmp_path / "run"
    options = BehaveOptions(limit=24, folds=3, bootstrap=10, out=str(out), quiet=True,
                            cache_dir=str(tmp_path / "cache"), command="probe behave (test)",
                            recognition=RecognitionOptions(templates=("one-word",)))
    assert behave(options, full=toy, cache_config=CacheConfig(batch_size=8), load_model=load) == 0
    import json

    run = json.loads((out / "run.json").read_text())
    assert calls == [1] and run["command"] == "probe behave (test)" and run["n_rows"] == 24
    assert run["experiments"] == ["recognition"] and run["eval"]["n_folds"] == 3
