"""How far are expression directions from perception directions? Cosines and held-out AUROC.

* perception: context-agnostic directions from emotion-scenarios (last prompt token; what the
  shipped operating points use), rows = the 448 emotion-scenarios texts;
* expression (own): contrasted across emotions over the reply tokens of SmolLM2's own
  designed-prompt replies to 40 SEV neutral scenarios (``benchmarks/eval_trained_steering.py``
  computes them; here recomputed on prompts 0-19 and scored on 20-39);
* expression (SEV): the same over SEV replies (Llama-3.2-3B's, GPT-4o-mini-accepted), read by
  SmolLM2 given the scenario; computed on skeleton half A, scored on half B.

Each direction set is scored (AUROC of emotion vs the rest, projection on the direction) on rows
it was not computed from: its own held-out half and the other sources' rows.

    python benchmarks/expression_geometry.py --layers 6,9,12,15 --json runs/geometry.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from probe.models import load_model
from probe.io import atomic_write
from probe.sites import Site
from steering.directions import cache_on_the_fly, directions, load_rows
from steering.expression import expression_vectors, reply_activations, transfer_auroc
from steering.judges.emotion import EMOTIONS
from steering.train.data import sev_prompts, teacher_replies


def sev_rows(path: Path, half: int, per_emotion: int, seed: int = 0):
    rows = [json.loads(x) for x in (path / "sev_accepted.jsonl").read_text().splitlines() if x.strip()]
    ids = sorted({r["skeleton_id"] for r in rows})
    keep = set(ids[half::2])
    rng = np.random.default_rng(seed)
    out = []
    for e in EMOTIONS:
        mine = [r for r in rows if r["emotion"] == e and r["skeleton_id"] in keep]
        for i in rng.permutation(len(mine))[:per_emotion]:
            r = mine[i]
            out.append((f"{r['scenario'].rstrip('.')}. {r['event']}", r["gen_text"], e,
                        f"{r['skeleton_id']}/{r['valence']}"))
    return [list(x) for x in zip(*out)]


def cos(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="6,9,12,15")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--per-emotion", type=int, default=40)
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    layers = [int(x) for x in args.layers.split(",")]
    data = Path(args.data)
    t0 = time.time()
    lm = load_model("smollm2-135m")
    store = cache_on_the_fly(lm)
    perc_rows = load_rows(store, layers=layers, pooling="last")
    perc = directions(store, method="context-agnostic", layers=layers)
    print(f"perception ready {time.time() - t0:.0f} s", flush=True)

    teach = teacher_replies(lm, sev_prompts(data / "sev", n=40), EMOTIONS, max_new_tokens=40,
                            cache="runs/teacher")
    own = {}
    for part, idx in (("a", range(0, 20)), ("b", range(20, 40))):
        p = [teach.prompts[i] for e in EMOTIONS for i in idx]
        r = [teach.replies[e][i] for e in EMOTIONS for i in idx]
        y = [e for e in EMOTIONS for _ in idx]
        g = [str(i) for e in EMOTIONS for i in idx]
        own[part] = (p, r, y, g, reply_activations(lm, p, r, layers))
    own_vecs = expression_vectors(lm, *own["a"][:3], layers=layers, emotions=EMOTIONS,
                                  groups=own["a"][3], X=own["a"][4], source="own replies, prompts 0-19")
    print(f"own ready {time.time() - t0:.0f} s", flush=True)
    sev = {}
    for half in (0, 1):
        p, r, y, g = sev_rows(data / "sev", half, args.per_emotion)
        sev[half] = (p, r, y, g, reply_activations(lm, p, r, layers))
    sev_vecs = expression_vectors(lm, *sev[0][:3], layers=layers, emotions=EMOTIONS, groups=sev[0][3],
                                  X=sev[0][4], source="SEV replies, skeleton half A")
    print(f"sev ready {time.time() - t0:.0f} s", flush=True)

    sets = {"perception": perc, "expression-own": own_vecs, "expression-sev": sev_vecs}
    rowsets = {"perception rows (emotion-scenarios)": (perc_rows.X, perc_rows.labels),
               "own replies, prompts 20-39": (own["b"][4], own["b"][2]),
               "SEV replies, half B": (sev[1][4], sev[1][2])}
    auroc = {f"{d} on {r}": {e: v for e, v in transfer_auroc(vs, X, list(y), layers).items()}
             for d, vs in sets.items() for r, (X, y) in rowsets.items()}
    summary = {k: float(np.mean([np.mean(v) for v in d.values()])) for k, d in auroc.items()}
    cosines = {}
    for a, b in (("expression-own", "perception"), ("expression-sev", "perception"),
                 ("expression-own", "expression-sev")):
        cosines[f"{a} ~ {b}"] = {e: [cos(sets[a][e][Site("hook_resid_post", L)].numpy(),
                                         sets[b][e][Site("hook_resid_post", L)].numpy()) for L in layers]
                                 for e in EMOTIONS}
    within = {}
    for name, vs in sets.items():
        c = [cos(vs[a][Site("hook_resid_post", L)].numpy(), vs[b][Site("hook_resid_post", L)].numpy())
             for L in layers for i, a in enumerate(EMOTIONS) for b in EMOTIONS[i + 1:]]
        within[name] = {"min": min(c), "max": max(c), "mean": float(np.mean(c))}
        ffs = [cos(vs[a][Site("hook_resid_post", L)].numpy(), vs[b][Site("hook_resid_post", L)].numpy())
               for L in layers for a, b in (("fear", "surprise"), ("fear", "disgust"), ("surprise", "disgust"))]
        within[name]["fear/surprise/disgust mean"] = float(np.mean(ffs))
    res = {"layers": layers, "auroc_mean": summary, "auroc": auroc, "cosines": cosines,
           "between_emotions": within, "seconds": round(time.time() - t0, 1),
           "command": "python benchmarks/expression_geometry.py " + " ".join(argv or [])}
    atomic_write(Path(args.json), json.dumps(res, indent=1))
    for k, v in summary.items():
        print(f"{v:.3f}  {k}")
    for k, d in cosines.items():
        print(k, {e: round(float(np.mean(v)), 2) for e, v in d.items()})
    print(json.dumps(within, indent=1))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
