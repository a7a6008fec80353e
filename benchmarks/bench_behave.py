"""Where the time of ``probe behave``'s recognition goes, before and after the speed-ups.

Recognition asks the model about every row with every template: per template it tokenizes the
prompts, scores the candidate labels (:func:`probe.scoring.score_candidates`), scores
them once more after a content-free input (contextual calibration), and for the ``generate``
template generates a reply. This script times each of those stages per template, on the same
rows, in two configurations measured in the same run, interleaved template by template (so both
see about the same load on a shared machine):

``before``  every template of the task (five for emotions, the generate one included), prompts
            batched in dataset order, every prompt run from its first token (what ``probe
            behave`` did by default);
``after``   the default templates (:data:`probe.behaviour.templates.DEFAULT_TEMPLATES`),
            prompts batched by length, the opening all prompts share (the chat template's
            system turn) run once and its KV cache reused (what ``probe behave`` does now).

The rows come from a "user CSV" written to a temporary folder: by default the model replies
of SEV (``sev_accepted.jsonl`` under ``$EMOPROBE_SHARED_DATA`` or ``../shared/data``: text =
the reply, label = its emotion, group = the scenario), i.e. free-form texts of varied length
like a user's own file; ``--dataset`` takes any dataset name or file instead.

    python benchmarks/bench_behave.py --n 350 --threads 2       # the issue's case: 350 user rows
    python benchmarks/bench_behave.py --n 48 --repeats 1        # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe.behaviour.generation import generate
from probe.behaviour.recognition import CONTENT_FREE, encode_prompts
from probe.scoring import score_candidates, tokenize_candidates
from probe.behaviour.templates import DEFAULT_TEMPLATES, select_templates, task_kind
from probe.data import load_dataset
from probe.models import load_model


def user_csv(n: int, folder: Path) -> Path:
    """``n`` SEV replies as a user's CSV (text, label, group), spread over the emotions."""
    default = Path(__file__).parents[1] / ".." / "shared" / "data"
    root = Path(os.environ.get("EMOPROBE_SHARED_DATA", default))
    rows = [json.loads(line) for line in (root / "sev" / "sev_accepted.jsonl").open()]
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(rows))[:n]
    path = folder / "user_rows.csv"
    pd.DataFrame({"text": [rows[i]["gen_text"] for i in pick],
                  "label": [rows[i]["emotion"] for i in pick],
                  "group": [rows[i]["skeleton_id"] for i in pick]}).to_csv(path, index=False)
    return path


def time_template(lm, template, texts, classes, *, sort: bool, batch_size: int,
                  max_new_tokens: int) -> dict[str, float]:
    """Seconds per stage of one template (as :func:`probe.behaviour.recognition.recognise`)."""
    t = {}
    t0 = time.perf_counter()
    prompts = encode_prompts(lm, template, texts, classes)
    t["encode"] = time.perf_counter() - t0
    if template.mode == "generate":
        t0 = time.perf_counter()
        generate(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        t["generate"] = time.perf_counter() - t0
        return t
    cands = tokenize_candidates(lm.tokenizer, template.candidates(
        classes, after_text=template.answers_follow_text(lm.chat_template)))
    t0 = time.perf_counter()
    score_candidates(lm, prompts, cands, batch_size=batch_size, sort_by_length=sort,
                     share_prefix=sort)
    t["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_candidates(lm, encode_prompts(lm, template, [CONTENT_FREE], classes), cands)
    t["calibrate"] = time.perf_counter() - t0
    t["tokens"] = sum(map(len, prompts))
    return t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", default=None,
                   help="name or file (default: a user CSV of SEV replies)")
    p.add_argument("--n", type=int, default=350, help="rows (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_model(args.model)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(args.dataset or str(user_csv(args.n, Path(tmp))))
        data = data.limit(args.n) if args.dataset else data
    target = data.default_target
    kind = task_kind(target, data.target_kind(target))
    classes = list(data.classes(target))
    texts = data.frame["text"].tolist()
    lengths = [len(x) for x in lm.tokenizer(texts)["input_ids"]]
    print(f"{args.model} (loaded in {load_s:.1f} s), {len(texts)} rows of "
          f"{args.dataset or 'a user CSV of SEV replies'}, {len(classes)} classes, texts of "
          f"{min(lengths)}-{max(lengths)} tokens (median {int(np.median(lengths))}), "
          f"{args.threads} thread(s), batch {args.batch_size}; load average "
          f"{os.getloadavg()[0]:.1f} (shared machine)")
    before = [t.name for t in select_templates(kind)]
    after = list(DEFAULT_TEMPLATES[kind])
    totals = {"before": [], "after": []}
    for rep in range(args.repeats):
        spent = {"before": 0.0, "after": 0.0}
        for template in select_templates(kind, before):
            # interleaved per template (order alternating between repeats): both configurations
            # of a template see about the same machine load
            runs = [("before", False)] + ([("after", True)] if template.name in after else [])
            for name, new in runs if rep % 2 == 0 else runs[::-1]:
                t = time_template(lm, template, texts, classes, sort=new,
                                  batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
                spent[name] += sum(v for k, v in t.items() if k != "tokens")
                stages = ", ".join(f"{k} {v:.1f} s" for k, v in t.items() if k != "tokens")
                extra = f" ({int(t['tokens'])} prompt tokens)" if "tokens" in t else ""
                print(f"  [{rep}] {name:6s} {template.name:12s} {stages}{extra}; load "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
        for name in totals:
            totals[name].append(spent[name])
        print(f"  [{rep}] before {spent['before']:.1f} s ({len(before)} templates: "
              f"{','.join(before)}); after {spent['after']:.1f} s ({len(after)} templates: "
              f"{','.join(after)})", flush=True)
    b, a = np.median(totals["before"]), np.median(totals["after"])
    print(f"recognition on {len(texts)} rows: before {b:.1f} s, after {a:.1f} s "
          f"({b / a:.1f}x faster); load average now {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
