"""``run_geometry``: the whole protocol on one model, into one run folder.

Steps: read the text sources and the ratings (:func:`prepare`, before any model loads, so bad
input fails fast); write stories with the model; pool every source and the neutral texts; the
neutral basis; vectors, PCs vs ratings, agreement between sources (and with a second model or
saved vectors when given); then the folder: ``results.csv/json`` (tidy, one measurement per
row), ``vectors/<source>/<emotion>.safetensors`` (steering vectors), ``stories.jsonl``,
figures (PNG + SVG) and ``run.json`` (written last).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import pandas as pd
import torch

from probe.io import atomic_write
from steering.geometry import analysis, defaults
from steering.geometry.analysis import Labelled
from steering.geometry.features import GeometryError, pool_texts
from steering.geometry.figures import write_figures
from steering.geometry.ratings import Ratings, emotion_ratings
from steering.geometry.recipe import Recipe, neutral_basis
from steering.geometry.sources import (
    TextSource,
    canonical,
    load_corpus,
    load_neutral,
)
from steering.geometry.stories import load_stories, save_stories, write_stories
from steering.geometry.vectors import save_vectors


@dataclass(frozen=True, kw_only=True)
class GeometryConfig:
    """Options of ``probe geometry`` (defaults sized for a 2-core CPU run under 15 min)."""

    sources: tuple[str, ...] = defaults.SOURCES
    emotions: tuple[str, ...] | None = None
    per_emotion: int = defaults.PER_EMOTION
    min_words: int = defaults.MIN_WORDS
    neutral: str = defaults.NEUTRAL
    n_neutral: int = defaults.N_NEUTRAL
    recipe: Recipe = field(default_factory=Recipe)
    stories_per_emotion: int = defaults.STORIES_PER_EMOTION
    story_tokens: int = defaults.STORY_TOKENS
    stories_file: str | None = None
    n_boot: int = defaults.N_BOOT
    n_perm: int = defaults.N_PERM
    n_pcs: int = defaults.N_PCS
    layers: tuple[int, ...] | None = None
    batch_size: int = defaults.BATCH_SIZE
    padding_side: str = "right"
    chat_template: bool = False
    lexicon: str | None = None
    ratings: str | None = None
    data_root: str | None = None
    compare_vectors: str | None = None
    min_shared: int = defaults.MIN_SHARED
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise GeometryError("no --sources given")
        for name, v, lo in (
            ("--per-emotion", self.per_emotion, 2),
            ("--n-neutral", self.n_neutral, 0),
            ("--bootstrap", self.n_boot, 0),
            ("--permutations", self.n_perm, 1),
            ("--pcs", self.n_pcs, 1),
            ("--batch-size", self.batch_size, 1),
            ("--story-tokens", self.story_tokens, 1),
            ("--min-shared", self.min_shared, 3),
        ):
            if v < lo:
                raise GeometryError(f"{name} must be >= {lo}, got {v}")
        if self.padding_side not in ("left", "right"):
            raise GeometryError(f"padding side must be left or right, not {self.padding_side!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prepared:
    """Texts and ratings, read before the model loads."""

    corpora: list[TextSource]
    neutral: list[str]
    ratings: Ratings
    story_emotions: list[str]
    stories: list | None = None


def prepare(config: GeometryConfig) -> Prepared:
    """Read every corpus, the neutral texts and the ratings; check they fit together."""
    corpora, neutral = [], []
    for spec in config.sources:
        if spec == "stories":
            continue
        src, _ = load_corpus(
            spec,
            per_emotion=config.per_emotion,
            min_words=config.min_words,
            seed=config.seed,
            emotions=config.emotions,
            data_root=config.data_root,
        )
        corpora.append(src)
    if config.recipe.neutral_share > 0:
        neutral = load_neutral(
            config.neutral,
            n=config.n_neutral,
            min_words=config.min_words,
            seed=config.seed,
            data_root=config.data_root,
        )
    neutral = neutral[: config.n_neutral]
    if config.recipe.neutral_share > 0 and len(neutral) < 10:
        raise GeometryError(
            f"--neutral {config.neutral!r} gave {len(neutral)} neutral texts; "
            "the projection needs >= 10 (raise --n-neutral or --neutral-share 0)"
        )
    primary = corpora[0].emotions if corpora else list(config.emotions or ())
    if not primary:
        raise GeometryError(
            "stories need emotions: put a corpus first in --sources or pass --emotions"
        )
    every = list(dict.fromkeys(e for s in corpora for e in s.emotions))
    ratings = emotion_ratings(every or primary, lexicon=config.lexicon, ratings_file=config.ratings)
    stories = load_stories(config.stories_file) if config.stories_file else None
    return Prepared(corpora, neutral, ratings, primary, stories)


def run_geometry(
    lm,
    config: GeometryConfig,
    prepared: Prepared,
    out: Path,
    *,
    lm2=None,
    log: Callable[[str], None] = lambda m: None,
    argv: Sequence[str] = (),
) -> dict:
    """Run the protocol on ``lm`` (and ``lm2``: RDM agreement by relative depth); write ``out``."""
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    sources = list(prepared.corpora)
    if "stories" in config.sources:
        t = time.time()
        stories = prepared.stories
        if stories is None:
            log(
                f"writing {config.stories_per_emotion} stories for each of "
                f"{len(prepared.story_emotions)} emotions"
            )
            stories = write_stories(
                lm,
                prepared.story_emotions,
                per_emotion=config.stories_per_emotion,
                max_new_tokens=config.story_tokens,
                batch_size=config.batch_size,
                log=log,
            )
        save_stories(stories, out / "stories.jsonl", atomic_write)
        kept = [s for s in stories if s.withheld and s.emotion in prepared.ratings.emotions]
        info = {
            "n_written": len(stories),
            "n_named_emotion_dropped": len(stories) - len(kept),
            "offset": config.recipe.story_offset,
        }
        sources.append(
            TextSource(
                "stories", [s.text for s in kept], [s.emotion for s in kept], "stories", info
            )
        )
        timings["stories"] = time.time() - t
    t = time.time()
    data, neutral_feats, pool_info = _pool_all(lm, config, sources, prepared.neutral, log)
    timings["pooling"] = time.time() - t
    bases, ks, shares = (
        neutral_basis(neutral_feats, config.recipe.neutral_share, config.recipe.max_neutral_pcs)
        if neutral_feats is not None
        else (None, [], [])
    )
    rows, full = _analyses(config, data, bases, prepared.ratings, log, timings)
    if lm2 is not None:
        src0 = next(s for s in sources if s.name == data[0].name)
        rows += _second_model(lm2, config, src0, data[0], prepared.neutral, bases, lm, log)
    if config.compare_vectors:
        rows += _saved_vectors(config, data, bases, log)
    table = pd.DataFrame(rows)
    for d in data:
        save_vectors(
            full[d.name]["vectors"],
            d,
            lm,
            out / "vectors" / d.name,
            recipe=config.recipe,
            info=next(s.info for s in sources if s.name == d.name),
        )
    figures = write_figures(table, full, data, prepared.ratings, out)
    timings["total"] = time.time() - t0
    atomic_write(out / "results.csv", table.to_csv(index=False))
    atomic_write(out / "results.json", table.to_json(orient="records", indent=1) + "\n")
    command = (
        "probe " + " ".join(argv) if argv else "probe geometry (steering.geometry.run_geometry)"
    )
    run = {
        "command": command,
        "config": config.to_dict(),
        "recipe": config.recipe.to_dict(),
        "model": lm.provenance(),
        "model2": lm2.provenance() if lm2 is not None else None,
        "sources": {
            s.name: {
                "kind": s.kind,
                "n_texts": len(s.texts),
                "emotions": s.emotions,
                **s.info,
                **pool_info.get(s.name, {}),
            }
            for s in sources
        },
        "neutral": {
            "source": config.neutral,
            "n_texts": len(prepared.neutral),
            "pcs_removed": ks,
            "variance_removed": [round(x, 4) for x in shares],
        },
        "ratings": {
            "source": prepared.ratings.source,
            "scales": prepared.ratings.scales,
            "words": prepared.ratings.words,
        },
        "figures": figures,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write(out / "run.json", json.dumps(run, indent=1, default=str) + "\n")
    return run


def _pool_all(lm, config, sources, neutral, log):
    layers = list(config.layers) if config.layers else None
    data, info = [], {}
    for src in sources:
        offset = config.recipe.story_offset if src.kind == "stories" else config.recipe.token_offset
        log(f"pooling {src.name}: {len(src.texts)} texts from token {offset}")
        if not src.texts:
            log(f"  {src.name}: no texts left; skipped")
            continue
        f = pool_texts(
            lm,
            src.texts,
            token_offset=offset,
            layers=layers,
            batch_size=config.batch_size,
            padding_side=config.padding_side,
            chat_template=config.chat_template,
        )
        labels = [src.labels[i] for i in f.kept]
        emotions = [e for e in src.emotions if labels.count(e) >= 2]
        keep = [i for i, lab in enumerate(labels) if lab in emotions]
        info[src.name] = {
            "n_pooled": len(keep),
            "n_too_short": len(src.texts) - len(f.kept),
            "mean_pooled_tokens": round(sum(f.n_tokens) / len(f.n_tokens), 1),
        }
        if len(emotions) < 3:
            log(f"  {src.name}: fewer than 3 emotions with >= 2 texts; skipped")
            continue
        data.append(
            Labelled(
                src.name,
                emotions,
                torch.tensor([emotions.index(labels[i]) for i in keep]),
                f.values[keep],
                f.layers,
            )
        )
    if not data:
        raise GeometryError("no source has 3 emotions with >= 2 pooled texts")
    neutral_feats = None
    if config.recipe.neutral_share > 0:
        log(f"pooling {len(neutral)} neutral texts ({config.neutral})")
        neutral_feats = pool_texts(
            lm,
            neutral,
            token_offset=config.recipe.token_offset,
            layers=layers,
            batch_size=config.batch_size,
            padding_side=config.padding_side,
            chat_template=config.chat_template,
        ).values
    return data, neutral_feats, info


def _analyses(config, data, bases, ratings, log, timings):
    rows, full = [], {}
    t = time.time()
    for d in data:
        log(f"geometry of {d.name}: {len(d.emotions)} emotions, {config.n_boot} resamples")
        r, full[d.name] = analysis.analyze(
            d,
            ratings,
            bases,
            grand_mean=config.recipe.subtract_grand_mean,
            k=config.n_pcs,
            n_boot=config.n_boot,
            n_perm=config.n_perm,
            seed=config.seed,
        )
        rows += r
    timings["geometry"] = time.time() - t
    t = time.time()
    for a, b in combinations(data, 2):
        shared = [e for e in a.emotions if canonical(e) in {canonical(x) for x in b.emotions}]
        if len(shared) < config.min_shared:
            log(
                f"agreement {a.name} vs {b.name}: {len(shared)} shared emotions "
                f"(< {config.min_shared}); skipped"
            )
            continue
        other = [next(x for x in b.emotions if canonical(x) == canonical(e)) for e in shared]
        log(f"agreement {a.name} vs {b.name}: {len(shared)} shared emotions")
        rows += analysis.agreement(
            a.subset(shared),
            _renamed(b.subset(other), shared),
            bases,
            bases,
            grand_mean=config.recipe.subtract_grand_mean,
            n_boot=config.n_boot,
            seed=config.seed,
        )
    timings["agreement"] = time.time() - t
    return rows, full


def _renamed(d: Labelled, emotions: list[str]) -> Labelled:
    return Labelled(d.name, emotions, d.labels, d.feats, d.layers)


def _second_model(
    lm2, config, src: TextSource, primary: Labelled, neutral, bases, lm, log
) -> list[dict]:
    """The primary source on a second model: RDM agreement at matched relative depth."""
    log(f"second model {lm2.spec.alias}: pooling {len(src.texts)} texts of {src.name}")
    cfg = {
        "batch_size": config.batch_size,
        "padding_side": config.padding_side,
        "chat_template": config.chat_template,
    }
    offset = config.recipe.story_offset if src.kind == "stories" else config.recipe.token_offset
    f = pool_texts(lm2, src.texts, token_offset=offset, **cfg)
    labels = [src.labels[i] for i in f.kept]
    keep = [i for i, lab in enumerate(labels) if lab in primary.emotions]
    data2 = Labelled(
        f"{primary.name}@{lm2.spec.alias}",
        primary.emotions,
        torch.tensor([primary.emotions.index(labels[i]) for i in keep]),
        f.values[keep],
        f.layers,
    )
    b2 = None
    if bases is not None:
        nf = pool_texts(lm2, neutral, token_offset=config.recipe.token_offset, **cfg).values
        b2 = neutral_basis(nf, config.recipe.neutral_share, config.recipe.max_neutral_pcs)[0]
    n1, n2 = lm.n_layers, lm2.n_layers
    layer_map = [min(n2 - 1, max(0, round((x + 1) * n2 / n1) - 1)) for x in primary.layers]
    return analysis.agreement(
        primary,
        data2,
        bases,
        b2,
        grand_mean=config.recipe.subtract_grand_mean,
        n_boot=config.n_boot,
        seed=config.seed,
        name_b=data2.name,
        layer_map=layer_map,
    )


def _saved_vectors(config, data, bases, log) -> list[dict]:
    """Agreement of each source's geometry with saved vectors (e.g. expression directions)."""
    from steering.vector import VectorSet

    saved = VectorSet.load(config.compare_vectors)
    rows = []
    for d in data:
        shared = [e for e in d.emotions if e in saved or canonical(e) in saved]
        names = [e if e in saved else canonical(e) for e in shared]
        if len(shared) < config.min_shared:
            continue
        sites = [
            s
            for s in saved[names[0]].sites
            if s.kind == "hook_resid_post"
            and s.layer in d.layers
            and all(s in saved[n].directions for n in names)
        ]
        if not sites:
            continue
        layers = [s.layer for s in sites]
        sub = d.subset(shared)
        sub = Labelled(
            sub.name,
            sub.emotions,
            sub.labels,
            sub.feats[:, [d.layers.index(x) for x in layers]],
            layers,
        )
        vb = torch.stack([torch.stack([saved[n].directions[s] for s in sites]) for n in names])
        b = [bases[d.layers.index(x)] for x in layers] if bases is not None else None
        log(f"agreement {d.name} vs saved vectors {config.compare_vectors}: {len(shared)} emotions")
        rows += analysis.agreement(
            sub,
            vb,
            b,
            grand_mean=config.recipe.subtract_grand_mean,
            n_boot=config.n_boot,
            seed=config.seed,
            name_b=f"vectors:{Path(config.compare_vectors).name}",
        )
    return rows
