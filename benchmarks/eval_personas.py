"""System-prompt personas: the representation along *steering* directions, and what they make the
model express, judged like ``probe steer-eval``.

``probe behave --experiments personas`` measures how each persona moves the items along probe and
mean-difference directions and how it shifts the zero-shot answers. This script adds the two
pieces that need ``steering/`` (which ``probe/`` must not import):

* **shift along steering directions**: context-agnostic directions (Wang et al.; the steering
  default) from the no-persona store's *training* scenarios, per layer; every held-out item's
  ``last``-pooled residual under each persona projected on them, minus the same item's projection
  without a persona, in SDs of the no-persona projections; 95% cluster-bootstrap CI over
  scenarios;
* **expressed emotion**: replies to the shipped neutral ``test`` prompts under each persona (the
  system prompt of the chat template), judged by the shipped classifier and the NRC lexicon with
  the fluency gate and the echo rule, as ``probe steer-eval`` judges (gated rate of happiness and
  of sadness, bootstrap CI over prompts).

    python benchmarks/eval_personas.py --json runs/docs/eval_personas.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

EMOTIONS = ("happiness", "sadness")
GEN = {"max_new_tokens": 40, "repetition_penalty": 1.05, "no_repeat_ngram_size": 3}


def _projections(store, vec, rows: np.ndarray, layers) -> np.ndarray:
    """``[rows, layers]`` projections of ``last``-pooled resid_post on the unit directions."""
    x = store["hook_resid_post"].sel(pooling="last")
    out = []
    for layer in layers:
        (v,) = [t for s, t in vec.directions.items() if s.layer == layer]
        v = (v / v.norm()).numpy()
        out.append(np.asarray(x.sel(layer=layer).values, dtype=np.float64)[rows] @ v)
    return np.stack(out, 1)


def _cluster_ci(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> tuple:
    """Mean over rows and a percentile CI resampling whole groups; ``values`` is ``[rows, L]``."""
    names, idx = np.unique(groups, return_inverse=True)
    sums = np.zeros((len(names), values.shape[1]))
    np.add.at(sums, idx, values)
    counts = np.bincount(idx).astype(float)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(names), size=(n_boot, len(names)))
    boot = sums[draw].sum(1) / counts[draw].sum(1)[:, None]
    return values.mean(0), np.percentile(boot, 2.5, 0), np.percentile(boot, 97.5, 0)


def representation(args, lm, ds, personas) -> list[dict]:
    from circuits.pairs import split_groups
    from probe.cache import CacheConfig, cache_activations, default_store_path
    from probe.store import open_store
    from steering.directions import directions

    stores = {}
    for name, text in personas.items():
        cfg = CacheConfig(system_prompt=text)
        path = cache_activations(lm, ds, config=cfg, out=default_store_path(lm, ds, cfg),
                                 progress=False)
        stores[name] = open_store(path)
    base = stores["none"]
    groups = base["group"].values.astype(str)
    train, _ = split_groups(ds, seed=args.seed)
    is_train = np.isin(groups, train)
    layers = list(range(lm.n_layers))
    vecs = directions(base, method="context-agnostic", site="resid_post", layers=layers,
                      rows=is_train)
    test = np.flatnonzero(~is_train)
    rows = []
    for emotion in EMOTIONS:
        ref = _projections(base, vecs[emotion], test, layers)
        sd = _projections(base, vecs[emotion], np.flatnonzero(is_train), layers).std(0)
        for name, store in stores.items():
            if name == "none":
                continue
            shift = (_projections(store, vecs[emotion], test, layers) - ref) / sd
            mean, lo, hi = _cluster_ci(shift, groups[test], args.n_boot, args.seed)
            rows += [{"kind": "shift", "persona": name, "direction": emotion, "layer": layer,
                      "value": float(m), "ci_low": float(a), "ci_high": float(b), "n": len(test)}
                     for layer, m, a, b in zip(layers, mean, lo, hi)]
    return rows


def expression(args, lm, personas) -> list[dict]:
    from steering.eval.grid import Arm
    from steering.eval.prompts import load_prompts
    from steering.eval.scorer import Scorer, load_judges, table_rows

    prompts = load_prompts("test")[: args.prompts]
    texts = [p.text for p in prompts]
    scorer = Scorer(lm, load_judges(lexicon=args.lexicons))
    reference = None
    rows = []
    for name, system in personas.items():
        replies = []
        for i in range(0, len(texts), args.batch_size):
            batch = lm.batch(texts[i:i + args.batch_size], system_prompt=system)
            replies += lm.generate(batch, **GEN)
        for emotion in EMOTIONS:
            arm = Arm(condition=name, emotion=emotion, system_prompt=system)
            frame = scorer.frame(prompts, [arm], texts=[replies])
            if reference is None:  # the no-persona replies: the perplexity ratios' denominator
                reference = float(np.nanmedian(frame["perplexity"]))
            for r in table_rows(frame, reference=reference, n_boot=args.n_boot, seed=args.seed):
                rows.append({"kind": "expression", "persona": name, **r})
        rows.append({"kind": "examples", "persona": name, "replies": replies[:3]})
        print(f"[expression] {name}: " + "; ".join(
            f"{r['emotion']} {r['judge']} {r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            for r in rows if r.get("kind") == "expression" and r["persona"] == name), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=300, help="emotion-scenarios rows (as probe behave)")
    p.add_argument("--prompts", type=int, default=40, help="neutral test prompts")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--lexicons", default="../shared/data/lexicons")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from probe.behaviour.sysprompt import PERSONAS
    from probe.data import load_dataset
    from probe.models import load_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_model("smollm2-135m")
    ds = load_dataset("emotion-scenarios").limit(args.limit)
    rows = representation(args, lm, ds, PERSONAS)
    for name in PERSONAS:
        if name == "none":
            continue
        sel = [r for r in rows if r["persona"] == name and r["direction"] == "happiness"]
        best = max(sel, key=lambda r: abs(r["value"]))
        at15 = [r for r in sel if r["layer"] == 15][0]
        print(f"[shift] {name} along happiness: L15 {at15['value']:+.2f} "
              f"[{at15['ci_low']:+.2f}, {at15['ci_high']:+.2f}] SD; largest |shift| at "
              f"L{best['layer']} {best['value']:+.2f}", flush=True)
    rows += expression(args, lm, PERSONAS)
    out = {"config": vars(args), "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
