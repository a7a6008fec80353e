"""Time to train one steering vector on the embedded model (CPU), per objective.

Uses the cached teacher replies of ``benchmarks/eval_trained_steering.py`` (SmolLM2's own
designed-prompt replies to 40 SEV neutral scenarios; generated and cached on first use) and the
runner's settings: layers 6, 9, 12, 15, batch 8, 40-token replies, positions
last-prompt+generated (prompt KV caches reused). Prints seconds for the one-off preparation
(teacher / reference passes), seconds per Adam step, and the total for ``--steps`` steps.
``--ranks 0,4`` times each objective as a vector (rank 0) and as a LoReFT edit of rank 4, in the
same run (the ratio is what to read; absolute times follow the machine's load).

    python benchmarks/bench_train_steering.py --emotion anger --steps 20 --threads 1
    python benchmarks/bench_train_steering.py --objectives lm --ranks 0,4 --steps 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from probe.io import atomic_write
from probe.models import load_model
from steering.judges.emotion import EMOTIONS
from steering.train.data import sev_prompts, teacher_replies
from steering.train.objectives import PairData, objective
from steering.train.trainer import TrainConfig, train_vector


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emotion", default="anger")
    ap.add_argument("--objectives", default="distill,preference,lm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--ranks", default="0", help="0 = a vector; R >= 1 = a LoReFT edit of rank R")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m")
    teach = teacher_replies(lm, sev_prompts(Path(args.data) / "sev", n=40), EMOTIONS,
                            max_new_tokens=40, batch_size=40, cache="runs/teacher")
    e, n = args.emotion, len(teach.prompts)
    others = [o for o in EMOTIONS if o != e]
    results = {}
    runs = [(name, int(r)) for name in args.objectives.split(",") for r in args.ranks.split(",")]
    for name, rank in runs:
        if name == "distill":
            data = PairData(teach.prompts, teach.replies[e], system_prompt=teach.system_prompts[e],
                            user_suffix=teach.user_suffixes[e])
        elif name == "preference":
            data = PairData(teach.prompts, teach.replies[e],
                            negatives=[teach.replies[others[i % 5]][i] for i in range(n)])
        else:
            data = PairData(teach.prompts, teach.replies[e])
        obj = objective(name)
        t0 = time.perf_counter()
        obj.prepare(lm, data)
        prep = time.perf_counter() - t0
        cfg = TrainConfig(layers=(6, 9, 12, 15), steps=args.steps, batch_size=8, lr=0.02, rank=rank)
        # train_vector prepares again; subtract the measured preparation
        t1 = time.perf_counter()
        _, log = train_vector(lm, data, obj, cfg, emotion=e)
        total = time.perf_counter() - t1
        per_step = (total - prep) / args.steps
        key = f"{name}-r{rank}" if rank else name
        results[key] = {"rank": rank, "prepare_s": round(prep, 1), "per_step_s": round(per_step, 2),
                         "total_s": round(total, 1), "steps": args.steps,
                         "loss_first": log.losses[0], "loss_last5": sum(log.losses[-5:]) / 5}
        print(f"{key:13s} prepare {prep:6.1f} s  step {per_step:5.2f} s  total {total:6.1f} s "
              f"(loss {log.losses[0]:.3f} -> {results[key]['loss_last5']:.3f})", flush=True)
    for name, rank in runs:
        if rank and name in results:
            print(f"{name}: rank {rank} / vector, seconds per step: "
                  f"{results[f'{name}-r{rank}']['per_step_s'] / results[name]['per_step_s']:.2f}")
    if args.json:
        atomic_write(Path(args.json), json.dumps({"threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
