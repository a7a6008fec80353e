"""Steered vs. unsteered generation on the embedded model, and a strength sweep, in one run.

Part 1: the same prompts, batch and KV cache, greedy, exactly ``--new`` tokens per row
(``min_new_tokens`` pins the length, so steering cannot change how much is generated), timed
unsteered (plain ``model.generate``) and steered (a unit direction at each of layers 10-19 added
at the last prompt token and every generated token), alternating A/B over ``--repeats``
rounds; per batch size the ratio of medians, the median of the per-round ratios (each
round's two runs see about the same machine load) and the ratio of the fastest runs.

Then the time spent inside the steering hooks as a share of a steered call (a ratio within
one call, so it does not depend on the machine's load as the A/B timings do).

Part 2: a sweep of 6 strengths over the same prompts, as one batched
:func:`steering.inject.generate_settings` call (each row its own strength; the prompt prefix
computed once per prompt) vs. six calls of ``vec.apply(...)`` + ``lm.generate``.

    python benchmarks/bench_steering.py                       # batch 1 and 16, 48 tokens, 5 rounds
    python benchmarks/bench_steering.py --batches 1 --repeats 3 --new 24   # quick look

Timings on a shared machine are noisy; compare the two sides of each line, measured in the
same run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from probe.models import load_model
from probe.sites import Site
from steering.inject import Setting, generate_settings
from steering.vector import SteeringVector

PROMPTS = [
    "Tell me about your day.", "What should I cook tonight?", "Describe your morning commute.",
    "Write two sentences about the weather.", "How do I water a cactus?",
    "What is a good name for a cat?", "Explain what a library card is for.",
    "Give me a tip for learning to juggle.", "What do you think of trains?",
    "Describe a quiet street at noon.", "How long should I boil an egg?",
    "What is your favourite season?", "Suggest a weekend plan.", "Describe the colour blue.",
    "What makes a good sandwich?", "Tell me something about clouds.",
]


def random_vector(lm, layers, seed: int = 0) -> SteeringVector:
    """Unit directions at ``layers`` (timing does not depend on which direction)."""
    g = torch.Generator().manual_seed(seed)
    d = lm.arch.d_model(lm.model)
    dirs = {Site("hook_resid_post", layer): torch.randn(d, generator=g) for layer in layers}
    return SteeringVector({s: v / v.norm() for s, v in dirs.items()}, lm.provenance())


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def overhead(lm, vec, batch: int, new: int, repeats: int, scale: float) -> dict:
    prompts = (PROMPTS * ((batch + len(PROMPTS) - 1) // len(PROMPTS)))[:batch]
    kw = dict(max_new_tokens=new, min_new_tokens=new)

    def plain():
        lm.generate(prompts, **kw)

    def steered():
        with vec.apply(lm, strength=scale, unit="absolute"):
            lm.generate(prompts, **kw)

    plain(), steered()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(plain))
        b.append(timed(steered))
    ma, mb = statistics.median(a), statistics.median(b)
    paired = statistics.median(y / x for x, y in zip(a, b))
    return {"batch": batch, "new_tokens": new, "repeats": repeats, "unsteered_s": a, "steered_s": b,
            "unsteered_median_s": ma, "steered_median_s": mb, "ratio": mb / ma,
            "paired_ratio_median": paired, "ratio_of_minima": min(b) / min(a),
            "unsteered_tok_s": batch * new / ma, "steered_tok_s": batch * new / mb}


def hook_share(lm, vec, batch: int, new: int, scale: float) -> dict:
    """Time spent inside the steering hooks as a share of the steered ``generate`` call: a
    within-run fraction, so the machine's load cancels out."""
    from steering.inject import steering_hooks

    prompts = (PROMPTS * ((batch + len(PROMPTS) - 1) // len(PROMPTS)))[:batch]
    inside = [0.0]

    def timed_hook(fn):
        def wrapper(value, ctx):
            t = time.perf_counter()
            try:
                return fn(value, ctx)
            finally:
                inside[0] += time.perf_counter() - t
        return wrapper

    hooks = steering_hooks(Setting(vector=vec, strength=scale, unit="absolute"), lm)
    with lm.hooks({s: timed_hook(f) for s, f in hooks.items()}):
        lm.generate(prompts, max_new_tokens=new, min_new_tokens=new)  # warm-up
        inside[0] = 0.0
        total = timed(lambda: lm.generate(prompts, max_new_tokens=new, min_new_tokens=new))
    return {"batch": batch, "inside_hooks_s": inside[0], "generate_s": total,
            "share": inside[0] / total}


def sweep(lm, vec, n_prompts: int, new: int, repeats: int) -> dict:
    prompts = PROMPTS[:n_prompts]
    strengths = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    kw = dict(max_new_tokens=new, min_new_tokens=new)
    settings = [Setting(vector=vec, strength=s, unit="absolute") for s in strengths]

    def batched():
        return generate_settings(lm, prompts, settings, batch_size=len(settings) * len(prompts), **kw)

    def batched_no_prefix():
        return generate_settings(lm, prompts, settings, batch_size=len(settings) * len(prompts),
                                 reuse_prefix=False, **kw)

    def six_calls():
        out = []
        for s in strengths:
            with vec.apply(lm, strength=s, unit="absolute"):
                out.append(lm.generate(prompts, **kw))
        return out

    same = batched() == six_calls()  # warm-up, and the two give the same texts
    t = {"one_call": [], "one_call_no_prefix_reuse": [], "six_calls": []}
    for _ in range(repeats):
        t["one_call"].append(timed(batched))
        t["one_call_no_prefix_reuse"].append(timed(batched_no_prefix))
        t["six_calls"].append(timed(six_calls))
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"prompts": n_prompts, "strengths": strengths, "new_tokens": new, "times_s": t,
            "median_s": med, "speedup_one_call": med["six_calls"] / med["one_call"],
            "speedup_no_prefix_reuse": med["six_calls"] / med["one_call_no_prefix_reuse"],
            "same_texts": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16", help="batch sizes (default: %(default)s)")
    ap.add_argument("--new", type=int, default=48, help="new tokens per row (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="A/B rounds; 0 skips the A/B timing (default: %(default)s)")
    ap.add_argument("--sweep-prompts", type=int, default=4,
                    help="prompts in the strength sweep, 0 to skip (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m")
    vec = random_vector(lm, range(10, 20))
    scale = 2.0  # in absolute units: small enough to keep the text a text (timing is the same)
    results = {"threads": torch.get_num_threads(), "overhead": [], "sweep": None}
    print(f"SmolLM2-135M, fp32, CPU, {torch.get_num_threads()} threads; steering: layers 10-19, "
          f"positions last-prompt+generated; {args.new} new tokens per row")
    for b in (int(x) for x in args.batches.split(",")) if args.repeats else ():
        r = overhead(lm, vec, b, args.new, args.repeats, scale)
        results["overhead"].append(r)
        print(f"batch {b:3d}: unsteered {r['unsteered_median_s']:6.2f} s ({r['unsteered_tok_s']:6.1f} "
              f"tok/s)  steered {r['steered_median_s']:6.2f} s ({r['steered_tok_s']:6.1f} tok/s)  "
              f"ratio of medians {r['ratio']:.3f}, median of paired ratios "
              f"{r['paired_ratio_median']:.3f}, ratio of minima {r['ratio_of_minima']:.3f} "
              f"({args.repeats} A/B rounds)")
    results["hook_share"] = []
    for b in (int(x) for x in args.batches.split(",")):
        h = hook_share(lm, vec, b, args.new, scale)
        results["hook_share"].append(h)
        print(f"batch {b:3d}: time inside the 10 steering hooks {h['inside_hooks_s']:.3f} s of "
              f"{h['generate_s']:.2f} s steered generate = {100 * h['share']:.2f}%")
    if args.sweep_prompts:
        s = sweep(lm, vec, args.sweep_prompts, args.new, max(1, args.repeats))
        results["sweep"] = s
        m = s["median_s"]
        print(f"sweep of 6 strengths x {s['prompts']} prompts: one batched call {m['one_call']:.2f} s "
              f"(without prefix reuse {m['one_call_no_prefix_reuse']:.2f} s) vs six calls "
              f"{m['six_calls']:.2f} s: {s['speedup_one_call']:.2f}x "
              f"({s['speedup_no_prefix_reuse']:.2f}x without prefix reuse); same texts: {s['same_texts']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
