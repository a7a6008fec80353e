"""Label scoring: batched prefixes + candidates on a copied KV cache vs one forward per label.

Both sides score the same real items (our emotion-scenarios stimuli, or any dataset) with the
same template and candidates on SmolLM2-135M: :func:`probe.scoring.score_candidates`
(prompts left-padded in batches, one forward with ``use_cache=True``, each prompt's cache copied
once per candidate, all candidates in one second forward) against
:func:`probe.scoring.score_candidates_naive` (a full forward over prompt + label for
every item and label). The script prints items/s of both, their ratio (measured in the same
run, interleaved), and the largest difference between their log-likelihoods.

    python benchmarks/bench_label_scoring.py                      # 32 items, one-word template
    python benchmarks/bench_label_scoring.py --n 64 --template completion --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from probe.behaviour.recognition import encode_prompts
from probe.scoring import score_candidates, score_candidates_naive, tokenize_candidates
from probe.behaviour.templates import select_templates
from probe.data import load_dataset
from probe.models import load_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dataset", default="emotion-scenarios")
    p.add_argument("--n", type=int, default=32, help="items (default: %(default)s)")
    p.add_argument("--template", default="one-word", help="emotion template (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    data = load_dataset(args.dataset).limit(args.n)
    classes = data.classes()
    template = select_templates("emotion", [args.template])[0]
    prompts = encode_prompts(lm, template, data.texts, classes)
    cands = tokenize_candidates(lm.tokenizer, template.candidates(
        classes, after_text=template.answers_follow_text(lm.chat_template)))
    print(f"{args.model}, {len(prompts)} items of {args.dataset}, template {args.template!r}: "
          f"{len(cands)} labels of {min(map(len, cands))}-{max(map(len, cands))} tokens, prompts "
          f"of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.threads} thread(s)")
    fast_t, slow_t = [], []
    for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
        t0 = time.perf_counter()
        fast = score_candidates(lm, prompts, cands, batch_size=args.batch_size)
        fast_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        slow = score_candidates_naive(lm, prompts, cands)
        slow_t.append(time.perf_counter() - t0)
    f, s = np.median(fast_t), np.median(slow_t)
    n = len(prompts)
    print(f"batched (shared prefix, one forward):  median {f:7.2f} s  {n / f:7.2f} items/s")
    print(f"naive (one forward per item x label):  median {s:7.2f} s  {n / s:7.2f} items/s")
    print(f"speed-up: {s / f:.1f}x   max |log-likelihood difference|: "
          f"{np.nanmax(np.abs(fast.logprob - slow.logprob)):.2e}   same answers: "
          f"{(fast.mean.argmax(1) == slow.mean.argmax(1)).mean():.0%}")


if __name__ == "__main__":
    main()
