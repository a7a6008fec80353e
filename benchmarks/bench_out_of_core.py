"""The smallest address-space cap each probe sweep runs under, for stores of growing size.

For each store size (600 rows x L layers x 2 poolings x 256 float32 features, synthetic), a
child process (``tests/probe/_capped_sweep.py --only``) warms up on one site, caps its address
space (``RLIMIT_AS``) at ``cap`` MiB above what it then uses, and runs the whole sweep: out of
core (``memory=--budget``) or in memory.
Caps are tried in increasing order; the first that the sweep completes under is printed. glibc
runs with one arena and a fixed mmap threshold, so the address space grows with what is
allocated (see ``tests/probe/test_lazy.py``).

    python benchmarks/bench_out_of_core.py                      # 16, 32, 64 layers
    python benchmarks/bench_out_of_core.py --layers 128 --caps 8,12,16,24,32
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def smallest_cap(store: Path, mode: str, caps: list[int], budget: str) -> int | None:
    from tests.probe._capped_sweep import CHILD_ENV

    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(ROOT)}
    for cap in caps:
        rc = subprocess.run([sys.executable, "-m", "tests.probe._capped_sweep", "--only", mode,
                             str(store), str(cap), budget],
                            cwd=ROOT, env=env, capture_output=True, check=False).returncode
        if rc == 0:
            return cap
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="16,32,64")
    ap.add_argument("--caps", default="4,8,12,16,24,32,48,64,96,128,192")
    ap.add_argument("--budget", default="6MiB")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tests.probe._synthetic_store import make_store

    caps = [int(c) for c in args.caps.split(",")]
    print("| layers | store (MiB) | out-of-core, memory=" + args.budget + " | in-memory |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n_layers in (int(x) for x in args.layers.split(",")):
            store = make_store(Path(tmp) / f"s{n_layers}.zarr", n=600, layers=n_layers, d=256,
                               block=200)
            size = 600 * n_layers * 2 * 256 * 4 / 2**20
            got = [smallest_cap(store, mode, caps, args.budget) for mode in ("ooc", "mem")]
            cells = [f"{c} MiB" if c is not None else f"> {caps[-1]} MiB" for c in got]
            print(f"| {n_layers} | {size:.2f} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
