"""Image/text modality conflict: a stimulus set and what a vision-language model does with it.

The set (:func:`build_conflict_set`) pairs our emotion-scenarios texts with images of positive
or negative valence (drawn by :mod:`probe.vlm.images`, or the user's own folder): in
*congruent* items image and text imply the same valence, in *conflict* items opposite ones
(the CA-MER modality-conflict setting). Each text ends with a one-word question, so the model's
answer position reads out an emotion.

:func:`run_conflict` measures, per item, the valence read-out at the answer
(:func:`probe.vlm.attribution.valence_readout`), which modality the answer follows (the sign of
the read-out against the image's and the text's valence), and how much of the read-out comes
from image vs text tokens at every layer (attribution patching, checked by mean-ablating each
modality's tokens). It writes ``items.csv``, ``layers.csv``, ``summary.json``, ``run.json`` and
``conflict.png/svg``.

On the tiny random models of the tests the mechanics run end to end; the numbers mean nothing
about real models. ``probe conflict --model llava-1.5-7b --device cuda`` runs the same code.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probe.data.schema import EmotionDataset
from probe.errors import EmoprobeError
from probe.vlm.attribution import GROUPS, Attribution, modality_attribution, valence_readout
from probe.vlm.images import KINDS, user_images, write_images

QUESTION = "How does the person feel? Answer with one word."
NEGATIVE_EMOTIONS = ("sadness", "fear", "anger", "disgust")


class ConflictError(EmoprobeError, ValueError):
    """The conflict experiment cannot run as asked."""


@dataclass(frozen=True, kw_only=True)
class ConflictConfig:
    """How to build and measure a conflict set.

    ``scenarios`` scenario groups of emotion-scenarios each give 4 items: a happy text and a
    negative one (sadness, fear, anger, disgust in turn), each with a positive and a negative
    image. ``images``: a folder with ``positive/`` and ``negative/`` images to use instead of
    drawn ones (``per_cell`` drawn images per kind x valence otherwise).
    """

    scenarios: int = 16
    per_cell: int = 4
    image_size: int = 224
    kinds: tuple[str, ...] = KINDS
    images: str | None = None
    question: str = QUESTION
    system_prompt: str | None = None
    layers: tuple[int, ...] | None = None
    check_layer: int = 0
    batch_size: int = 8
    seed: int = 0


def build_conflict_set(out_dir: str | Path, scenarios: EmotionDataset, *,
                       config: ConflictConfig = ConflictConfig()) -> Path:
    """Write ``conflict.jsonl`` (and drawn images) into ``out_dir``; return the file.

    Rows: ``id``, ``text`` (scenario + question), ``image`` (path relative to the file),
    ``text_emotion``, ``text_valence``, ``image_valence``, ``image_kind``, ``condition``
    (``congruent`` / ``conflict``) and ``group`` (the scenario: never split across folds).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = (user_images(config.images) if config.images else
              write_images(out, per_cell=config.per_cell, size=config.image_size,
                           kinds=config.kinds))
    pools = {v: [r for r in images if r["valence"] == v] for v in ("positive", "negative")}
    rows = []
    for i, (group, texts) in enumerate(_scenario_pairs(scenarios, config)):
        for t_emotion, text in texts:
            t_val = "positive" if t_emotion == "happiness" else "negative"
            for i_val in ("positive", "negative"):
                img = pools[i_val][(2 * i + (t_val == "negative")) % len(pools[i_val])]
                rows.append({"id": f"{group}-{t_emotion}-{i_val}-image", "group": group,
                             "text": f"{text} {config.question}", "image": img["path"],
                             "text_emotion": t_emotion, "text_valence": t_val,
                             "image_valence": i_val, "image_kind": img["kind"],
                             "condition": "congruent" if t_val == i_val else "conflict"})
    file = out / "conflict.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return file


def _scenario_pairs(ds: EmotionDataset, config: ConflictConfig):
    f = ds.frame
    if not {"emotion", "scenario_id"} <= set(f.columns):
        raise ConflictError(f"dataset {ds.name!r} has no emotion / scenario_id columns; "
                            "use emotion-scenarios")
    groups = sorted(f["scenario_id"].unique())
    rng = np.random.default_rng(config.seed)
    chosen = sorted(rng.permutation(len(groups))[:config.scenarios])
    for k, gi in enumerate(chosen):
        g = groups[gi]
        rows = f[f["scenario_id"] == g].set_index("emotion")["text"]
        neg = NEGATIVE_EMOTIONS[k % len(NEGATIVE_EMOTIONS)]
        yield g, [("happiness", rows["happiness"]), (neg, rows[neg])]


def load_conflict_set(file: str | Path) -> pd.DataFrame:
    """The rows of a ``conflict.jsonl`` with image paths made absolute."""
    file = Path(file)
    frame = pd.read_json(file, lines=True, dtype=False)
    missing = {"text", "image", "text_valence", "image_valence", "condition"} - set(frame.columns)
    if missing:
        raise ConflictError(f"{file} lacks columns {sorted(missing)}; build it with "
                            "build_conflict_set (probe conflict)")
    frame["image"] = [str(p if Path(p).is_absolute() else file.parent / p) for p in frame["image"]]
    return frame


# ------------------------------------------------------------------------------ measuring
def measure(lm, frame: pd.DataFrame,
            config: ConflictConfig = ConflictConfig()) -> tuple[pd.DataFrame, Attribution]:
    """Per-item read-out, answer and attribution (see module docstring)."""
    from probe.multimodal.encode import encode_multimodal

    if "image" not in lm.media:
        raise ConflictError(f"model {lm.spec.alias!r} takes no images; the conflict experiment "
                            "needs a vision-language model (e.g. --model llava-1.5-7b)")
    enc = encode_multimodal(lm.processor, frame["text"].tolist(), images=frame["image"].tolist(),
                            chat_template=lm.chat_template,
                            system_prompt=config.system_prompt if lm.chat_template else None)
    readout = valence_readout(lm.tokenizer)
    att = modality_attribution(lm, enc, readout=readout, layers=config.layers,
                               check_layer=config.check_layer, batch_size=config.batch_size)
    items = frame.drop(columns=["text"]).copy()
    items["readout"] = att.readout
    answer = np.where(att.readout > 0, "positive", "negative")
    items["answer_valence"] = answer
    image, text = answer == items["image_valence"], answer == items["text_valence"]
    congruent = (items["condition"] == "congruent").to_numpy()
    items["follows"] = np.where(congruent, np.where(text, "both", "neither"),
                                np.select([image, text], ["image", "text"], "neither"))
    embed = att.layers.index(att.check_layer)
    for k, g in enumerate(GROUPS):
        items[f"atp_{g}"] = att.atp[:, embed, k]
        items[f"ablated_{g}"] = att.ablated[:, k]
        items[f"n_{g}_tokens"] = att.n_tokens[:, k]
    return items, att


def layer_table(items: pd.DataFrame, att: Attribution) -> pd.DataFrame:
    """Mean attribution per layer x group x condition (and its share of the total |AtP|)."""
    rows = []
    for cond in ("conflict", "congruent", "all"):
        sel = (np.ones(len(items), bool) if cond == "all"
               else (items["condition"] == cond).to_numpy())
        if not sel.any():
            continue
        a = att.atp[sel]  # [n, layer, group]
        share = np.abs(a) / np.maximum(np.abs(a).sum(-1, keepdims=True), 1e-30)
        for j, layer in enumerate(att.layers):
            for k, g in enumerate(GROUPS):
                rows.append({"condition": cond, "layer": layer, "group": g,
                             "atp_mean": a[:, j, k].mean(), "abs_share": share[:, j, k].mean(),
                             "n": int(sel.sum())})
    return pd.DataFrame(rows)


def summarize(items: pd.DataFrame, att: Attribution) -> dict:
    """Headline numbers: what the answer follows, attribution shares, the ablation check."""
    conflict = items[items["condition"] == "conflict"]
    congruent = items[items["condition"] == "congruent"]
    out: dict = {"n_items": len(items), "n_conflict": len(conflict),
                 "check_layer": att.check_layer}
    if len(conflict):
        out["conflict_follows"] = {k: float((conflict["follows"] == k).mean())
                                   for k in ("image", "text")}
    if len(congruent):
        out["congruent_accuracy"] = float((congruent["follows"] == "both").mean())
    share = {}
    for g in ("media", "text"):
        a, b = items[f"atp_{g}"].to_numpy(), items[f"ablated_{g}"].to_numpy()
        share[g] = float(np.abs(b).mean())
        out[f"check_{g}"] = {"pearson_r": _pearson(a, b),
                             "sign_agreement": float(np.mean(np.sign(a) == np.sign(b))),
                             "atp_mean": float(a.mean()), "ablation_mean": float(b.mean())}
    total = share["media"] + share["text"]
    out["media_share_by_ablation"] = share["media"] / total if total > 0 else float("nan")
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def run_conflict(lm, out_dir: str | Path, *, scenarios: EmotionDataset,
                 config: ConflictConfig = ConflictConfig(),
                 set_file: str | Path | None = None) -> dict:
    """Build (or reuse ``set_file``) a conflict set, measure it, write results.

    Returns:
        The summary (also in ``summary.json``).
    """
    from probe.vlm.report import plot_conflict, write_tables

    out = Path(out_dir)
    started = time.time()
    file = Path(set_file) if set_file else build_conflict_set(out / "set", scenarios, config=config)
    items, att = measure(lm, load_conflict_set(file), config)
    summary = summarize(items, att)
    out.mkdir(parents=True, exist_ok=True)
    plot_conflict(items, layer_table(items, att), summary, out / "conflict",
                  title=f"{lm.spec.alias}: image/text conflict, {len(items)} items")
    write_tables(out, items, layer_table(items, att), summary,  # run.json last: after the figure
                 {"command": "conflict", "config": asdict(config), "set": str(file),
                  "provenance": lm.provenance(), "seconds": round(time.time() - started, 1)})
    return summary
