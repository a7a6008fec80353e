"""Wall time of the default ``probe geometry`` run (target: under 15 min on 2 cores).

Runs the command in this process (``probe geometry`` with the given arguments, default: none,
i.e. SmolLM2, goemotions + dair-emotion + meld + emotion-scenarios + 54 stories, 1,000
bootstrap resamples) and prints the wall time, the CPU time, the machine's load average and
the time per stage from the run's ``run.json``.

    EMOPROBE_SHARED_DATA=../shared/data python benchmarks/bench_geometry.py --out /tmp/geo
    python benchmarks/bench_geometry.py --threads 1 --out /tmp/geo -- --sources goemotions,stories

The machine's load moves these numbers a lot (a shared 2-core machine can be 2-5x slower than
an idle one): report the load average next to any time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

from probe.cli import main


def run(out: Path, extra: list[str], threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    load0 = os.getloadavg()
    t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    code = main(["geometry", "--out", str(out), "--quiet", *extra])
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.time() - t0
    if code != 0:
        raise SystemExit(code)
    stages = json.loads((out / "run.json").read_text())["seconds"]
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime, 1),
        "torch_threads": torch.get_num_threads(),
        "load_before": [round(x, 1) for x in load0],
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "stages_s": stages,
        "args": extra,
    }


def cli() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="run folder to write (must not exist)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("extra", nargs="*", help="more `probe geometry` arguments (after --)")
    args = ap.parse_args()
    result = run(Path(args.out), args.extra, args.threads)
    print(json.dumps(result, indent=1))
    print(
        f"probe geometry: {result['wall_s'] / 60:.1f} min wall, {result['cpu_s'] / 60:.1f} min CPU "
        f"({result['torch_threads']} torch threads, load {result['load_before'][0]} -> "
        f"{result['load_after'][0]})"
    )


if __name__ == "__main__":
    cli()
