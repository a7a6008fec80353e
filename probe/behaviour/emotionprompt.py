"""EmotionPrompt / NegativePrompt: emotional stimuli appended to task prompts.

Li et al. (2023, "EmotionPrompt") and Wang et al. (2024, "NegativePrompt") append a short
emotional sentence to a task prompt and report better task accuracy. Here the stimuli (the
papers' own phrases, a few of each) and a length-matched neutral control are appended to the
prompts of a small task set we ship (``datasets/emotionprompt_tasks``: 80 multiple-choice items,
five kinds), and we measure on the same items:

* task accuracy with and without each stimulus (label scoring over the item's options; paired
  bootstrap CI of the difference);
* the representation at the answer position (``last`` pooling: the end of the generation
  prompt), shifted along a valence direction (mean positive minus mean negative stimulus of
  ``emotion-scenarios``, per layer, in SDs of that projection), with paired CIs.

>>> tasks = load_tasks()
>>> len(tasks), sorted(set(tasks.frame["task"]))[:2]
(80, ['arithmetic', 'commonsense'])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probe.behaviour.paired import Bootstrap
from probe.scoring import score_candidates, tokenize_candidates
from probe.behaviour.templates import RAW_ANSWER_CUE
from probe.data.schema import DatasetError, EmotionDataset
from probe.store import cached_layers, open_store
from probe.tokens import render

#: Stimuli (Li et al. 2023 EP02, EP03, EP08; Wang et al. 2024 NP01, NP04, NP06) and a neutral
#: control of similar length that says nothing about stakes, ability or feelings.
STIMULI: dict[str, str] = {
    "EP02": "This is very important to my career.",
    "EP03": "You'd better be sure.",
    "EP08": "Embrace challenges as opportunities for growth. Each obstacle you overcome brings "
            "you closer to success.",
    "NP01": "You've never been particularly good at this, have you?",
    "NP04": "Perhaps this task is just beyond your skill set.",
    "NP06": "Everyone else managed to do it; why can't you?",
    "control": "This question is part of a routine list of questions.",
}
KIND = {"EP02": "positive", "EP03": "positive", "EP08": "positive", "NP01": "negative",
        "NP04": "negative", "NP06": "negative", "control": "control"}
BASELINE = "none"
INSTRUCTION = "\nOptions: {options}.\nAnswer with one of the options."


def tasks_path() -> Path:
    """The shipped task set (in the wheel, or in a source checkout)."""
    from probe.data.loaders import shipped_file

    found = shipped_file("emotionprompt_tasks", "tasks.jsonl")
    if found is not None:
        return found
    raise DatasetError("the EmotionPrompt task set (datasets/emotionprompt_tasks/tasks.jsonl) "
                       "is missing from this installation; reinstall emoprobe")


def load_tasks(path: str | Path | None = None) -> EmotionDataset:
    """The task items (``id, task, question, options, answer``), checked."""
    path = Path(path) if path is not None else tasks_path()
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        missing = {"id", "task", "question", "options", "answer"} - set(obj)
        if missing or obj.get("answer") not in obj.get("options", []):
            raise DatasetError(f"{path}:{lineno}: needs id, task, question, options and an "
                               f"answer among the options (missing {sorted(missing)})")
        rows.append({**obj, "text": obj["question"], "group": obj["id"], "split": "all"})
    return EmotionDataset.from_records("emotionprompt-tasks", rows, targets={"answer": "label"},
                                       source=str(path))


def with_stimulus(question: str, options: Sequence[str], stimulus: str | None) -> str:
    """The user's message: question, options, instruction, then the stimulus (as the papers
    append it, at the end)."""
    message = question + INSTRUCTION.format(options=", ".join(options))
    return message if not stimulus else f"{message} {stimulus}"


def conditions(names: Sequence[str] | None = None) -> dict[str, str | None]:
    """``{condition: stimulus}``, the baseline (no stimulus) first."""
    names = list(names) if names else list(STIMULI)
    unknown = [n for n in names if n not in STIMULI]
    if unknown:
        raise DatasetError(f"unknown stimulus {unknown[0]!r}; choose from {', '.join(STIMULI)}")
    return {BASELINE: None, **{n: STIMULI[n] for n in names}}


def prompt_dataset(tasks: EmotionDataset, conds: Mapping[str, str | None], *,
                   raw: bool = False) -> EmotionDataset:
    """One row per (item, condition): the text is the full user message, the group the item
    (so caching it gives the answer-position representation of every condition). ``raw``: the
    model runs without a chat template, so the text ends with the answer cue it is scored
    after."""
    cue = RAW_ANSWER_CUE if raw else ""
    rows = [{"id": f"{r.id}:{c}", "text": with_stimulus(r.question, r.options, s) + cue,
             "group": r.id, "split": "all", "condition": c, "item": r.id}
            for c, s in conds.items() for r in tasks.frame.itertuples()]
    return EmotionDataset.from_records("emotionprompt-prompts", rows,
                                       targets={"condition": "label"})


@dataclass(frozen=True)
class _Prompted:
    prompts: list[list[int]]
    candidates: list[list[list[int]]]


def _encode(lm, tasks: EmotionDataset, stimulus: str | None) -> _Prompted:
    prompts, cands = [], []
    for r in tasks.frame.itertuples():
        message = with_stimulus(r.question, r.options, stimulus)
        if lm.chat_template:
            text, _ = render(lm.tokenizer, message, chat_template=True, system_prompt=None)
            strings = [o[:1].upper() + o[1:] for o in r.options]
        else:
            text, strings = message + RAW_ANSWER_CUE, [" " + o for o in r.options]
        prompts.append(lm.tokenizer(text, add_special_tokens=not lm.chat_template)["input_ids"])
        cands.append(tokenize_candidates(lm.tokenizer, strings))
    return _Prompted(prompts, cands)


def task_accuracy(lm, tasks: EmotionDataset, conds: Mapping[str, str | None], *,
                  batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """Items table of every condition: ``id, task, condition, answer, correct``."""
    out = []
    for name, stimulus in conds.items():
        enc = _encode(lm, tasks, stimulus)
        scores = score_candidates(lm, enc.prompts, enc.candidates, batch_size=batch_size,
                                  progress=progress)
        pick = np.nanargmax(scores.logprob, axis=1)
        answers = [opts[k] for opts, k in zip(tasks.frame["options"], pick)]
        out.append(pd.DataFrame({"id": tasks.frame["id"], "task": tasks.frame["task"],
                                 "condition": name, "answer": answers,
                                 "correct": (np.array(answers) == tasks.frame["answer"]).astype(
                                     float)}))
    return pd.concat(out, ignore_index=True)


def accuracy_table(items: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Accuracy per condition and task kind (``(all)`` too), and its paired difference from the
    baseline, with bootstrap CIs over items."""
    rows = []
    base = items[items["condition"] == BASELINE].set_index("id")
    for task in ["(all)", *sorted(items["task"].unique())]:
        part = items if task == "(all)" else items[items["task"] == task]
        for cond, df in part.groupby("condition", sort=False):
            boot = Bootstrap.of(df["id"].to_numpy(), n_boot, seed)
            right = df["correct"].to_numpy(float)
            stats = {"accuracy": boot.mean(right)}
            if cond != BASELINE:
                stats["accuracy_shift"] = boot.mean(
                    right - base.loc[df["id"], "correct"].to_numpy(float))
            rows += [{"condition": cond, "kind": KIND.get(cond, "baseline"), "task": task,
                      "metric": m, "value": float(v), "ci_low": float(lo), "ci_high": float(hi),
                      "n": len(df)} for m, (v, lo, hi) in stats.items()]
    return pd.DataFrame(rows)


def valence_directions(store, *, pooling: str = "last", site: str = "hook_resid_post",
                       target: str = "valence") -> tuple[list[int], np.ndarray, np.ndarray]:
    """Per layer: unit ``mean(positive) - mean(negative)`` of a labelled store, and the SD of
    that store's projections on it (``layers, [S, d], [S]``)."""
    ds = open_store(store) if not hasattr(store, "data_vars") else store
    if target not in ds.coords:
        raise DatasetError(f"the direction store has no {target!r} labels")
    y = ds[target].values.astype(str)
    layers = cached_layers(ds, site)
    X = np.asarray(ds[site].sel(pooling=pooling, layer=layers).values, np.float32)  # [n, S, d]
    u = X[y == "positive"].mean(0) - X[y == "negative"].mean(0)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    sd = np.einsum("nsd,sd->ns", X, u).std(0)
    return layers, u, sd


def representation_shift(prompt_store, direction_store, *, n_boot: int = 1000, seed: int = 0,
                         site: str = "hook_resid_post") -> pd.DataFrame:
    """Shift of the answer-position representation along the valence direction, per layer and
    condition, relative to no stimulus (paired over items), in SDs of the direction store."""
    layers, u, sd = valence_directions(direction_store, site=site)
    ds = open_store(prompt_store) if not hasattr(prompt_store, "data_vars") else prompt_store
    cond = ds["condition"].values.astype(str)
    item = ds["group"].values.astype(str)
    X = np.asarray(ds[site].sel(pooling="last", layer=layers).values, np.float32)
    proj = np.einsum("nsd,sd->ns", X, u) / sd  # [n, S]
    base = {i: k for k, (i, c) in enumerate(zip(item, cond)) if c == BASELINE}
    rows = []
    for c in [c for c in dict.fromkeys(cond) if c != BASELINE]:
        idx = np.flatnonzero(cond == c)
        delta = proj[idx] - proj[[base[i] for i in item[idx]]]
        boot = Bootstrap.of(item[idx], n_boot, seed)
        v, lo, hi = boot.mean(delta)
        rows += [{"condition": c, "kind": KIND.get(c, "?"), "site": site, "layer": layer,
                  "pooling": "last", "direction": "valence", "metric": "shift",
                  "value": float(v[s]), "ci_low": float(lo[s]), "ci_high": float(hi[s]),
                  "n": len(idx)} for s, layer in enumerate(layers)]
    return pd.DataFrame(rows)
