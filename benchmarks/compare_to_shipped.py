"""A candidate steering vector against the shipped operating point, paired on the test prompts.

The question before replacing a shipped point: on the 40 shipped *test* prompts, greedy, 60 new
tokens (the ``probe steer`` default), judged by the reporting judges (the shipped GoEmotions
classifier and the NRC lexicon), does the candidate express the emotion more than what
``probe steer --emotion E`` does today, and at what fluency and relevance? Arms: unsteered, the
shipped operating point (its directions rebuilt as ``probe steer`` builds them), the candidate
(a saved :class:`~steering.vector.SteeringVector` at ``--strength`` x RMS per layer), and a
random vector of the candidate's norm. The candidate's strength must have been chosen on tune
prompts (e.g. by ``eval_trained_steering.py``); this script only reports.

    python benchmarks/compare_to_shipped.py --emotion sadness \
        --vector runs/t4-sadness/expression/sadness --strength 1 --json runs/compare-sadness.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_modulation_judged import steering_setting  # noqa: E402  (a sibling benchmark)

from probe.io import atomic_write  # noqa: E402
from probe.models import load_model  # noqa: E402
from steering.eval.baselines import random_like  # noqa: E402
from steering.eval.grid import Arm, Decoding  # noqa: E402
from steering.eval.prompts import load_prompts  # noqa: E402
from steering.eval.protocol import spread  # noqa: E402
from steering.eval.scorer import Scorer  # noqa: E402
from steering.eval.trained import add_composites, paired, report_rows  # noqa: E402
from steering.inject import Setting  # noqa: E402
from steering.judges.emotion import ClassifierJudge, LexiconJudge  # noqa: E402
from steering.vector import SteeringVector  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emotion", required=True)
    ap.add_argument("--vector", required=True, help="a saved SteeringVector (path without suffix)")
    ap.add_argument("--strength", type=float, required=True, help="x RMS per layer (chosen on tune)")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m")
    report = {"classifier": ClassifierJudge.load(), "lexicon": LexiconJudge.load(Path(args.data) / "lexicons")}
    shipped, info = steering_setting(lm, args.emotion)
    vec = SteeringVector.load(args.vector, lm)
    arms = [Arm(condition="unsteered", emotion=None),
            Arm(condition="shipped", emotion=args.emotion, setting=shipped),
            Arm(condition="candidate", emotion=args.emotion, setting=Setting(vector=vec, strength=args.strength)),
            Arm(condition="random", emotion=args.emotion,
                setting=Setting(vector=random_like(vec, seed=1), strength=args.strength))]
    test = spread(load_prompts("test"), None)
    scorer = Scorer(lm, report, decoding=Decoding(max_new_tokens=60), batch_size=64)
    frame = scorer.frame(test, arms, relevance=True, targets=[args.emotion])
    unsteered = frame["condition"] == "unsteered"
    ref_ppl = float(np.nanmedian(frame.loc[unsteered, "perplexity"]))
    ref_rel = float(np.nanmedian(frame.loc[unsteered, "relevance"]))
    frame = add_composites(frame, concept_judges=report, ref_perplexity=ref_ppl, ref_relevance=ref_rel)
    base = frame[unsteered]
    rows = report_rows(frame, judges=list(report), unsteered=base, ref_perplexity=ref_ppl,
                       ref_relevance=ref_rel)
    pairs = [paired(frame, a, b, judge=j) for j in report
             for a, b in (("candidate", "shipped"), ("candidate", "random"), ("shipped", "unsteered"),
                          ("candidate", "unsteered"))]
    print(f"shipped: {info['describe']}; candidate: {args.vector} x{args.strength:g}")
    print("| condition | judge | expression [95% CI] | ppl ratio | relevance ratio |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['condition']} | {r['judge']} | {r['expression']:.2f} [{r['ci_low']:.2f}, "
              f"{r['ci_high']:.2f}] | {r['ppl_ratio']:.2f} | {r['relevance_ratio']:.2f} |")
    print("\n| difference | judge | [95% CI] |\n|---|---|---|")
    for p in pairs:
        print(f"| {p['a']} - {p['b']} | {p['judge']} | {p['diff']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}] |")
    if args.json:
        atomic_write(Path(args.json), json.dumps({"rows": rows, "paired": pairs, "shipped": info,
                                                  "candidate": {"vector": args.vector,
                                                                "strength": args.strength}},
                                                 indent=1, default=float))


if __name__ == "__main__":
    main()
