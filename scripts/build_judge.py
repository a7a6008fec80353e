"""Rebuild the emotion-classifier judge and print its held-out accuracy on every source.

    python scripts/build_judge.py                      # the shipped judge (GoEmotions only)
    python scripts/build_judge.py --sources goemotions,dair,sev-replies --out my_judge

Data come from ``--data ROOT`` (a folder holding goemotions/, dair_emotion/, sev/), else
$EMOPROBE_SHARED_DATA, else $EMOPROBE_DATA; ``name:/path`` points one source elsewhere. The same
data give the same weights (the build is deterministic). See docs/judges.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steering.judges.build import (  # noqa: E402
    HELDOUT_DEFAULT, SHIPPED_SOURCES, SOURCE_FOLDERS, JudgeConfig, build_judge)
from steering.judges.emotion import ARTIFACT_DIR, ARTIFACT_NAME, JudgeError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sources", default=",".join(SHIPPED_SOURCES),
                    help=f"training sources, comma-separated: {', '.join(SOURCE_FOLDERS)} "
                         "(each may be name:/path). Default: goemotions (the shipped judge)")
    ap.add_argument("--evaluate", default=",".join(HELDOUT_DEFAULT),
                    help="held-out parts to score (missing ones are skipped with a note)")
    ap.add_argument("--data", help="folder holding the datasets (default $EMOPROBE_SHARED_DATA, "
                                   "then $EMOPROBE_DATA)")
    ap.add_argument("--out", help="artifact path without suffix (default: the shipped judge, "
                                  "only for the GoEmotions-only build)")
    ap.add_argument("--limit", type=int, help="first N training rows per source (quick checks)")
    args = ap.parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    shipped = ARTIFACT_DIR / ARTIFACT_NAME
    if args.out is None and ([s.partition(":")[0] for s in sources] != list(SHIPPED_SOURCES)
                             or args.limit):
        print("error: the shipped judge is trained on all of GoEmotions only (dair-ai is research-"
              "only, SEV has no licence); pass --out PATH for any other build", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        meta = build_judge(sources, [s.strip() for s in args.evaluate.split(",") if s.strip()],
                           data_root=args.data, out=args.out or shipped,
                           cfg=JudgeConfig(limit=args.limit))
    except JudgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"built {args.out or shipped} in {time.perf_counter() - t0:.1f} s "
          f"({sum(len(b['vocabulary']) for b in meta['blocks'])} features, "
          f"{len(meta['words'])} words in the gate's word list)")
    print(f"{'held-out':<12} {'n':>5}  {'accuracy':>8}  {'95% CI':>15}  {'macro-F1':>8}")
    for name, s in meta["heldout"].items():
        print(f"{name:<12} {s['n']:>5}  {s['accuracy']:>8.3f}  "
              f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]  {s['macro_f1']:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
