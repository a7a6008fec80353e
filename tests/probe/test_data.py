"""Dataset loaders against the real files in ../shared/data, user files, errors, our stimuli."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from probe.data import DatasetError, EmotionDataset, available_datasets, load_dataset, loaders
from probe.data.readers import emobank_document, repair_mojibake

SCENARIOS = Path(__file__).resolve().parents[2] / "datasets" / "emotion_scenarios"
EMOTIONS7 = ("anger", "sadness", "happiness", "fear", "surprise", "disgust", "neutral")


@cache
def _load(spec: str) -> EmotionDataset:
    return load_dataset(spec)


@pytest.fixture(scope="module")
def load(shared_data):
    """``load("meld")`` reads ``shared_data/meld`` once per test module (format detected)."""
    return lambda folder: _load(str(shared_data / folder))


# ---------------------------------------------------------------------------- real datasets
@pytest.mark.parametrize("folder, name, counts", [
    ("goemotions", "goemotions", {"train": 43410, "dev": 5426, "test": 5427}),
    ("dair_emotion", "dair-emotion", {"train": 16000, "dev": 2000, "test": 2000}),
    ("emobank", "emobank", {"train": 8062, "dev": 1000, "test": 1000}),
    ("meld", "meld", {"train": 9989, "dev": 1109, "test": 2610}),
    ("sev", "sev", {"all": 480}),
])
def test_row_counts_and_detection(load, folder, name, counts):
    ds = load(folder)
    assert ds.name == name
    assert dict(Counter(ds.frame["split"])) == counts


@pytest.mark.parametrize("folder, target, classes", [
    ("goemotions", "ekman", ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")),
    ("dair_emotion", "label", ("sadness", "joy", "love", "anger", "fear", "surprise")),
    ("meld", "emotion", ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")),
    ("meld", "sentiment", ("positive", "negative", "neutral")),
    ("sev", "valence", ("positive", "negative", "neutral")),
])
def test_class_order_is_fixed_and_complete(load, folder, target, classes):
    ds = load(folder)
    assert ds.classes(target) == classes
    assert set(ds.frame[target].dropna()) == set(classes)


def test_goemotions_targets_and_ekman_mapping(load):
    ds = load("goemotions")
    assert ds.default_target == "ekman" and ds.targets["emotions"] == "multilabel"
    assert len(ds.classes("emotions")) == 28 and ds.classes("emotions")[-1] == "neutral"
    rows = ds.frame.set_index("id")
    expect = {  # comment id: (emotions, label, ekman), read off train.tsv by hand
        "eebbqej": (("neutral",), "neutral", "neutral"),
        "eezlygj": (("anger",), "anger", "anger"),
        "eetq9g0": (("annoyance",), "annoyance", "anger"),
        "ef4qmod": (("desire", "optimism"), None, "joy"),
        "eczq8zg": (("confusion", "realization"), None, "surprise"),
        "edivtm3": (("annoyance", "embarrassment"), None, None),  # anger vs sadness
    }
    for cid, (emotions, label, ekman) in expect.items():
        assert rows.at[cid, "emotions"] == emotions
        assert rows.at[cid, "label"] == label if label else rows.at[cid, "label"] is None
        assert rows.at[cid, "ekman"] == ekman if ekman else rows.at[cid, "ekman"] is None
    multi = ds.frame["emotions"].map(len) > 1
    assert 0.15 < multi.mean() < 0.17  # "~16% multi-label"
    assert ds.frame.loc[multi, "label"].isna().all() and ds.frame.loc[~multi, "label"].notna().all()


def test_goemotions_quoted_texts_are_unquoted(load):
    rows = load("goemotions").frame.set_index("id")
    assert rows.at["eetq9g0", "text"] == 'Three words, no subtlety. "Dude. Stop. Seriously." '
    doubled = load("goemotions").frame["text"].str.contains('""', regex=False)
    assert doubled.sum() == 2  # two comments really contain ""; the file has 1,383 lines with it


def test_dair_val_becomes_dev(load):
    ds = load("dair_emotion")
    assert ds.frame.loc[ds.frame["split"] == "dev", "id"].iloc[0] == "dev-00001"
    assert ds.frame["label"].notna().all()


def test_emobank_groups_are_documents(load):
    ds = load("emobank")
    assert ds.targets == {"V": "continuous", "A": "continuous", "D": "continuous"}
    assert ds.default_target == "V" and ds.frame["V"].between(1, 5).all()
    groups = ds.frame.set_index("id")["group"]
    assert groups["The_Black_Willow_102_159"] == "The_Black_Willow"
    assert groups["wsj_0169_4_303"] == "wsj_0169"  # not merged with other wsj_* articles
    assert groups["SemEval_17"] == "SemEval_17"  # independent headlines
    assert ds.frame["group"].nunique() == 135 + 1192
    assert emobank_document("Nathans_Bylichka_38888_38931") == "Nathans_Bylichka"


def test_meld_ids_groups_and_columns(load):
    ds = load("meld")
    row = ds.frame.set_index("id").loc["train-d0-u0"]
    assert row["group"] == "train-d0" and row["speaker"] == "Chandler"
    assert row["text"].startswith("also I was the point person on my company’s transition")
    assert ds.frame["group"].nunique() == 1038 + 114 + 280
    assert "dev-d0-u0" in set(ds.ids)  # dialogue ids restart per split; ids do not collide


@pytest.mark.parametrize("folder", ["goemotions", "dair_emotion", "meld"])
def test_groups_never_straddle_splits(load, folder):
    splits_per_group = load(folder).frame.groupby("group")["split"].nunique()
    assert (splits_per_group == 1).all()


def test_meld_text_is_clean(load):
    text = " ".join(load("meld").frame["text"])
    assert not re.search("â€|Ã|[\u0080-\u009f]", text)
    assert "’" in text  # real curly quotes survive


def test_sev_text_and_groups(load, shared_data):
    ds = load("sev")
    first = json.loads((shared_data / "sev" / "sev.jsonl").read_text().splitlines()[0])
    row = ds.frame.set_index("id").loc[f"{first['skeleton_id']}-negative"]
    assert row["text"] == first["scenario"] + ". " + first["event"]["negative"]
    assert ds.frame["group"].nunique() == 160
    assert (ds.frame.groupby("group")["valence"].nunique() == 3).all()


def test_sev_replies(shared_data):
    ds = _load(f"sev-replies:{shared_data / 'sev'}")
    assert len(ds) == 2847 and ds.default_target == "emotion"
    assert ds.classes() == ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
    assert ds.frame["group"].nunique() == 160


def test_sev_replies_drops_only_judge_rejected_rows(tmp_path):
    rows = [{"key": f"k{i}", "skeleton_id": "s", "emotion": "fear", "valence": "neutral",
             "gen_text": "Oh no.", "judge": {"match": m}} for i, m in enumerate((1, 0, 1))]
    rows.append({"key": "k3", "emotion": "anger", "gen_text": "How dare they."})  # no judge
    f = tmp_path / "accepted.jsonl"
    f.write_text("\n".join(map(json.dumps, rows)))
    assert load_dataset(f"sev-replies:{f}").ids == ["k0", "k2", "k3"]


# ---------------------------------------------------------------------------- resolution
def test_name_path_and_file_path(shared_data):
    by_name = load_dataset(f"emobank:{shared_data / 'emobank'}")
    by_file = load_dataset(shared_data / "emobank" / "emobank.csv")
    assert len(by_name) == len(by_file) == 10062 and by_file.name == "emobank"
    with pytest.raises(DatasetError, match="goemotions: expected a folder"):
        load_dataset(f"goemotions:{shared_data / 'goemotions' / 'original' / 'dev.tsv'}")


def test_names_are_normalised(shared_data):
    assert load_dataset(f"dair_emotion:{shared_data / 'dair_emotion'}").name == "dair-emotion"


def test_env_var_finds_external_datasets(shared_data, monkeypatch):
    monkeypatch.setenv("EMOPROBE_DATA", str(shared_data))
    assert len(load_dataset("sev")) == 480
    assert len(load_dataset("sev-replies")) == 2847  # lives in the sev/ folder
    assert load_dataset("dair-emotion", split="test").name == "dair-emotion"  # dair_emotion/


def test_missing_external_dataset_says_where_and_how(monkeypatch, tmp_path):
    monkeypatch.delenv("EMOPROBE_DATA", raising=False)
    with pytest.raises(DatasetError, match=r"github.com/declare-lab/MELD.*meld:/path"):
        load_dataset("meld")
    monkeypatch.setenv("EMOPROBE_DATA", str(tmp_path))
    with pytest.raises(DatasetError, match="EMOPROBE_DATA"):
        load_dataset("goemotions")


def test_default_is_bundled_scenarios():
    ds = load_dataset()
    assert ds.name == "emotion-scenarios" and Path(ds.card).name == "CARD.md"
    assert loaders.bundled_scenarios_path() == SCENARIOS


def test_wheel_location_is_preferred(tmp_path, monkeypatch):
    wheel = tmp_path / "probe" / "_datasets" / "emotion_scenarios"
    wheel.mkdir(parents=True)
    shutil.copy(SCENARIOS / "stimuli.jsonl", wheel)  # our own data, not shared/
    monkeypatch.setattr(loaders, "_PACKAGE_DIR", tmp_path / "probe")
    assert loaders.bundled_scenarios_path() == wheel
    shutil.rmtree(wheel)
    with pytest.raises(DatasetError, match="missing from this installation"):
        loaders.bundled_scenarios_path()


def test_available_datasets_lists_every_registered_name():
    names = available_datasets()
    assert next(iter(names)) == "emotion-scenarios"
    assert {"goemotions", "dair-emotion", "emobank", "meld", "sev", "sev-replies"} <= set(names)
    assert all(isinstance(d, str) and d and "\n" not in d for d in names.values())


# ---------------------------------------------------------------------------- user files
def test_user_csv_with_chosen_columns(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text('sentence,feeling,story,split,extra\n"I won, finally!",joy,s1,train,a\n'
                 "He left.,sadness,s1,val,b\nNothing much.,neutral,s2,test,c\n"
                 "Odd one.,,s3,train,d\n")
    ds = load_dataset(f, text_column="sentence", label_column="feeling", group_column="story")
    assert ds.texts[0] == "I won, finally!" and ds.ids == ["row-0", "row-1", "row-2", "row-3"]
    assert ds.targets == {"feeling": "label"} and ds.classes() == ("joy", "sadness", "neutral")
    assert list(ds.frame["split"]) == ["train", "dev", "test", "train"]
    assert list(ds.frame["group"]) == ["s1", "s1", "s2", "s3"]
    assert ds.frame["feeling"].iloc[3] is None and ds.frame["extra"].iloc[1] == "b"
    assert load_dataset(f, text_column="sentence", label_column="feeling", split="val").ids == \
        ["row-1"]


def test_user_csv_numeric_label_is_continuous(tmp_path):
    f = tmp_path / "scores.csv"
    f.write_text("text,label,uid\nGreat.,4.5,a\nBad.,1,b\n")
    ds = load_dataset(f, id_column="uid")
    assert ds.targets == {"label": "continuous"} and ds.ids == ["a", "b"]
    assert ds.frame["label"].tolist() == [4.5, 1.0] and ds.frame["group"].tolist() == ["a", "b"]


def test_user_jsonl_and_json(tmp_path):
    recs = [{"text": "Yay!", "label": "joy", "tags": [1]}, {"text": "Meh.", "label": "neutral"}]
    (tmp_path / "a.jsonl").write_text("\n".join(map(json.dumps, recs)) + "\n\n")
    (tmp_path / "b.json").write_text(json.dumps(recs))
    for name in ("a.jsonl", "b.json"):
        ds = load_dataset(tmp_path / name)
        assert ds.texts == ["Yay!", "Meh."] and ds.classes() == ("joy", "neutral")
        assert ds.frame["split"].tolist() == ["all", "all"]


def test_user_jsonl_list_labels_are_multilabel(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"text": "a", "label": ["joy", "love"]}\n{"text": "b", "label": ["anger"]}\n')
    ds = load_dataset(str(f))
    assert ds.targets == {"label": "multilabel"} and ds.frame["label"][0] == ("joy", "love")


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("spec, message", [
    ("no-such-dataset", "unknown dataset 'no-such-dataset'.*emotion-scenarios"),
    ("./nowhere/at/all", "no such file or folder"),
    ("meld:/nowhere/at/all", "meld: no such file or folder"),
    ("meld:", "give a path after the colon"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(spec)


def test_undetectable_folder_and_file_type(tmp_path):
    with pytest.raises(DatasetError, match="cannot tell which dataset.*meld: train_sent_emo"):
        load_dataset(tmp_path)
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(DatasetError, match="unsupported file type '.parquet'"):
        load_dataset(tmp_path / "x.parquet")


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.filterwarnings("ignore:.*lacks split")
@pytest.mark.parametrize("fmt, files, message", [
    ("goemotions", {"emotions.txt": "anger\nneutral", "train.tsv": "ok\t1\tid1\nbad line\t0\n"},
     r"train.tsv:2: expected 3 tab-separated fields"),
    ("goemotions", {"emotions.txt": "anger\nneutral", "train.tsv": "ok\t7\tid1\n"},
     r"train.tsv:1: label id '7'"),
    ("dair-emotion", {"train.txt": "fine;joy\nno label here\n"}, r"train.txt:2: expected"),
    ("dair-emotion", {"val.txt": "fine;hunger\n"}, r"val.txt:1: .*'fine;hunger'"),
    ("emobank", {"emobank.csv": "id,split,V,A,D,text\na_1_2,train,3,x,3,Hi.\n"},
     r"emobank.csv:2: column 'A' holds 'x'"),
    ("emobank", {"emobank.csv": "id,split,V,text\na_1_2,train,3,Hi.\n"},
     r"missing column\(s\) \['A', 'D'\]"),
    ("meld", {"train_sent_emo.csv": "Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,"
              "Utterance_ID\nHi.,Joey,joy,positive,0,0\nHo.,Joey,glee,positive,0,1\n"},
     r"data row 2: .*'glee'"),
    ("sev", {"sev.jsonl": '{"skeleton_id": "a", "scenario": "s", "event": {"positive": "p"}}\n'},
     r"sev.jsonl:1: 'event' must map"),
    ("sev", {"sev.jsonl": '{"skeleton_id": "a"\n'}, r"sev.jsonl:1: not valid JSON"),
    ("sev-replies", {"accepted.jsonl": '{"key": "k", "emotion": "joy", "gen_text": "x"}\n'},
     r"accepted.jsonl:1: emotion 'joy'"),
    ("emotion-scenarios", {"stimuli.jsonl": '{"id": "x"}\n'}, r"stimuli.jsonl:1: missing field"),
    ("sev", {"sev.jsonl": "\n\n"}, r"has no rows"),
])
def test_malformed_files_name_file_and_line(tmp_path, fmt, files, message):
    for name, text in files.items():
        _write(tmp_path, name, text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"{fmt}:{tmp_path}")


def test_scenario_target_word_must_be_in_text(tmp_path):
    row = json.loads((SCENARIOS / "stimuli.jsonl").read_text().splitlines()[0])
    _write(tmp_path, "stimuli.jsonl", json.dumps({**row, "target_word": "zebra"}))
    with pytest.raises(DatasetError, match="target_word 'zebra' is not in text"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("content, kwargs, message", [
    ("text,label\nHi,joy\n", {"text_column": "sentence"}, r"no column 'sentence'.*--text-column"),
    ("text,mood\nHi,joy\n", {}, r"no column 'label'.*\['text', 'mood'\].*label_column="),
    ("text,label\n,joy\n", {}, r"data row 1 \(line 2\) has no text"),
    ("text,label\nHi,\n", {}, r"label column 'label' is empty in every row"),
    ("text,label,g\nHi,joy,\n", {"group_column": "g"}, r"data row 1 .* empty 'g'"),
    ("", {}, r"cannot be read as CSV"),
    ('text,label\nHi,joy\n"broken,joy\n', {}, r"cannot be read as CSV"),
    ("text,label\nHi,joy\n", {"split": "test"}, r"no split 'test'.*\['all'\].*cross-validate"),
])
def test_user_csv_errors(tmp_path, content, kwargs, message):
    f = _write(tmp_path, "u.csv", content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f, **kwargs)


def test_user_json_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"j.jsonl:2: not valid JSON"):
        load_dataset(_write(tmp_path, "j.jsonl", '{"text": "a", "label": "x"}\n{oops\n'))
    with pytest.raises(DatasetError, match="expected a JSON list of objects"):
        load_dataset(_write(tmp_path, "j.json", '{"text": "a"}'))


def test_split_errors_and_aliases(load):
    with pytest.raises(DatasetError, match=r"no split 'holdout'; its splits are \['dev', "):
        loaders.select_split(load("dair_emotion"), "holdout")
    assert len(loaders.select_split(load("dair_emotion"), "val")) == 2000
    assert len(loaders.select_split(load("dair_emotion"), "all")) == 20000


def test_column_options_on_registered_datasets(shared_data):
    sev = shared_data / "sev"
    with pytest.raises(DatasetError, match="apply to your own CSV or JSON files"):
        load_dataset(f"sev:{sev}", text_column="event")
    with pytest.raises(DatasetError, match=r"no target 'mood'; choose one of \['emotion'"):
        load_dataset(f"sev-replies:{sev}", label_column="mood")
    assert load_dataset(f"sev-replies:{sev}", label_column="valence").default_target == "valence"


# ---------------------------------------------------------------------------- mojibake
@pytest.mark.parametrize("broken, fixed", [
    ("Itâ€™s fine", "It’s fine"),
    ("don\x92t", "don’t"),
    ("Iâ€™m â€œfineâ€\x9d", "I’m “fine”"),
    ("Wellâ€¦ okay", "Well… okay"),
    ("Ã©clair", "éclair"),
    ("cafÃƒÂ©", "café"),  # encoded twice
    ("Clean ’text’ — café…", "Clean ’text’ — café…"),
])
def test_repair_mojibake(broken, fixed):
    assert repair_mojibake(broken) == fixed


def test_meld_mojibake_is_repaired_in_loader(tmp_path):
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n"
    row = "1,Itâ€™s mine,Rachel,anger,negative,0,0\n"  # UTF-8 read as cp1252, saved as UTF-8
    _write(tmp_path, "train_sent_emo.csv", header + row)
    _write(tmp_path, "dev_sent_emo.csv", (header + "1,Don’t,Ross,fear,negative,3,1\n")
           .encode("cp1252"))  # raw cp1252 byte 0x92: not UTF-8
    with pytest.warns(UserWarning, match=r"lacks split\(s\) \['test'\]"):
        ds = load_dataset(tmp_path)
    assert ds.texts == ["It’s mine", "Don’t"] and ds.ids == ["train-d0-u0", "dev-d3-u1"]


# ---------------------------------------------------------------------------- our stimuli
# Words that name an emotion (or are its obvious synonyms). Used to check that most items
# imply the emotion without naming it, and that the flagged items really do name it.
EMOTION_WORD_LIST = [
    r"ang(?:er|ry|rily)", "furious", "fury", "rage", "enraged", "livid", "irate", "seething",
    "outraged", "annoyed", "irritated", r"resent\w*", "sad", "sadness", r"sorrow\w*",
    r"grie(?:f|ve\w*)", "heartbroken", "unhappy", "depressed", "miserable", r"melanchol\w*",
    r"happ(?:y|ier|iness|ily)", r"joy\w*", "glad", "delighted", "thrilled", "pleased",
    "cheerful", "elated", "overjoyed", "ecstatic", "afraid", r"fear\w*", "scared", "frightened",
    "terrified", "terror", r"panic\w*", "anxious", r"dread\w*", "nervous", r"surpris\w*",
    "shocked", "astonished", "amazed", "stunned", "startled", r"disgust\w*", r"revolt\w*",
    r"repuls\w*", r"sicken\w*", r"nauseat\w*", "gross"]
EMOTION_WORDS = re.compile(r"\b(?:" + "|".join(EMOTION_WORD_LIST) + r")\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def scenarios() -> EmotionDataset:
    return load_dataset("emotion-scenarios")


def test_scenarios_shape(scenarios):
    f = scenarios.frame
    assert len(f) == 448 and scenarios.classes() == EMOTIONS7
    assert scenarios.classes("valence") == ("positive", "negative", "neutral")
    assert Counter(f["emotion"]) == dict.fromkeys(EMOTIONS7, 64)
    assert f["group"].nunique() == 64 and f["theme"].nunique() == 8
    assert (f.groupby("group")["emotion"].apply(lambda e: sorted(e) == sorted(EMOTIONS7))).all()
    assert {"theme", "names_emotion", "target_word", "scenario", "event"} <= set(f.columns)


def test_scenarios_rows_are_consistent(scenarios):
    for r in scenarios.frame.itertuples():
        assert r.text == f"{r.scenario} {r.event}"
        # the first whole-word match (what token pooling reads) must fall in the event
        hit = re.search(rf"(?<!\w){re.escape(r.target_word)}(?!\w)", r.text, re.IGNORECASE)
        assert hit and hit.start() > len(r.scenario), r.id
        assert r.id == f"{r.group}-{r.emotion}" and r.group.startswith(r.theme)
        assert 20 <= len(r.text.split()) <= 40, r.id
        valence = {"happiness": "positive", "neutral": "neutral"}.get(r.emotion, "negative")
        assert r.valence == valence or r.emotion == "surprise"
        assert not (r.names_emotion and r.emotion == "neutral")


def test_scenarios_mostly_imply_rather_than_name(scenarios):
    f = scenarios.frame
    names = f["text"].str.contains(EMOTION_WORDS)
    flagged = f["names_emotion"].astype(bool)
    assert 0.05 <= flagged.mean() <= 0.15
    assert names[~flagged].mean() <= 0.15, f.loc[~flagged & names, "text"].tolist()[:5]
    assert names[flagged].mean() >= 0.9  # the flag is honest


def test_scenario_length_does_not_give_away_the_label(scenarios):
    f = scenarios.frame.assign(n=scenarios.frame["event"].str.split().map(len))
    spread = f.groupby("group")["n"].agg(lambda n: n.max() - n.min())
    assert spread.max() <= 8
    means = f.groupby("emotion")["n"].mean()
    assert means.max() - means.min() < 2.5


def test_scenario_card_exists_and_matches(scenarios):
    card = (SCENARIOS / "CARD.md").read_text()
    assert "Apache-2.0" in card and "scenario_id" in card
    flagged = int(np.sum(scenarios.frame["names_emotion"].astype(bool)))
    assert f"{flagged} of 448" in card


# ---------------------------------------------------------------------------- --limit subsets
def _whole_groups(subset: EmotionDataset, full: EmotionDataset) -> bool:
    size = full.frame.groupby("group").size()
    kept = subset.frame.groupby("group").size()
    return kept.equals(size[kept.index])


def test_limit_takes_whole_groups_in_proportion():
    full = load_dataset()
    small = full.limit(84)
    assert len(small) == 84 and small.frame.group.nunique() == 12 and _whole_groups(small, full)
    assert set(small.frame.emotion.value_counts()) == {12}
    assert small.ids == full.limit(84).ids  # deterministic
    assert small.ids != full.limit(84, seed=1).ids
    assert small.ids == sorted(small.ids, key=full.ids.index)  # original order kept
    assert len(full.limit(16)) == 14  # at most N rows: two whole scenarios


@pytest.mark.parametrize("folder, n, slack", [("meld", 500, 0.03), ("dair_emotion", 600, 0.01),
                                              ("sev", 100, 0.0)])
def test_limit_keeps_class_shares_on_real_data(load, folder, n, slack):
    full = load(folder)
    small = full.limit(n)
    assert n - full.frame.groupby("group").size().max() < len(small) <= n
    assert _whole_groups(small, full)
    target = full.default_target
    have = small.frame[target].value_counts(normalize=True)
    want = full.frame[target].value_counts(normalize=True)
    assert (have.reindex(want.index, fill_value=0) - want).abs().max() <= slack + 1e-9


def test_limit_on_a_continuous_target_spreads_its_range(load):
    full = load("emobank")
    small = full.limit(1000)
    assert 900 < len(small) <= 1000 and _whole_groups(small, full)
    q = full.frame.V.quantile([0.1, 0.9])
    assert small.frame.V.quantile(0.1) <= q[0.1] + 0.1
    assert small.frame.V.quantile(0.9) >= q[0.9] - 0.1


def test_limit_errors_and_smallest_working_limit():
    from probe.data.subset import smallest_working_limit
    from probe.stats import ProbeError, group_stratified_folds

    full = load_dataset()
    with pytest.raises(DatasetError, match="smallest group .7 rows.; use --limit 7 or more"):
        full.limit(5)

    def five_folds(ds):
        try:
            group_stratified_folds(ds.frame.emotion.to_numpy(str), ds.frame.group.to_numpy(str), 5)
            return True
        except ProbeError:
            return False

    assert smallest_working_limit(full, five_folds) == 35  # 5 scenarios x 7 emotions
    assert five_folds(full.limit(35)) and not five_folds(full.limit(34))


def test_another_file_in_a_registered_format_is_named_after_it(shared_data, tmp_path):
    mine = tmp_path / "my_events.jsonl"
    shutil.copy(shared_data / "sev" / "sev.jsonl", mine)
    assert load_dataset(f"sev:{mine}").name == "sev-my_events"
    assert load_dataset(shared_data / "sev" / "sev.jsonl").name == "sev"
