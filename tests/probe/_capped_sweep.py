"""Child process of test_lazy (and benchmarks/bench_out_of_core.py): probe a store with the
address space capped.

argv: store, cap in MiB, budget for the out-of-core sweep, output CSV. Prints "out-of-core ok"
once the out-of-core sweep has run under the cap and written its results, then runs the
in-memory sweep under the same cap: exits 0 when it raises MemoryError (a C allocator may abort
the process instead, a negative return code), 4 when it succeeds (the cap proves nothing), 3
when the out-of-core sweep itself ran out of memory.

``--only ooc|mem`` as the first argument (then: store, cap, budget) runs one sweep under the
cap: exits 0 when it completes, 3 on MemoryError.
"""

import resource
import sys

import dask
import torch

from probe.evaluate import EvalConfig
from probe.sweep import probe_store

CONFIG = EvalConfig(n_bootstrap=0, control=False, lexical=False)
#: The child's environment: one thread, and glibc with one arena and a fixed mmap threshold, so
#: that the address space grows with what is allocated (a thread's reserved 64 MiB arena or a
#: raised threshold would hold memory the cap cannot see).
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}


def vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))


def cap_after_warm_up(store: str, cap_mib: int, budget: str) -> None:
    """Run every code path on one site (lazy initialisations happen before the cap), then cap
    the address space ``cap_mib`` MiB above what the process uses."""
    torch.set_num_threads(1)
    dask.config.set(scheduler="synchronous")
    site = "blocks.0.hook_resid_post"
    probe_store(store, config=CONFIG, progress=False, sites=site, poolings=["last"], memory=budget)
    probe_store(store, config=CONFIG, progress=False, sites=site, poolings=["last"])
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + cap_mib * 2**20, resource.RLIM_INFINITY))


def main() -> int:
    if sys.argv[1] == "--only":
        mode, store, cap_mib, budget = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        cap_after_warm_up(store, cap_mib, budget)
        try:
            probe_store(store, config=CONFIG, progress=False,
                        **({"memory": budget} if mode == "ooc" else {}))
        except MemoryError:
            return 3
        return 0
    store, cap_mib, budget, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cap_after_warm_up(store, cap_mib, budget)
    try:
        probe_store(store, config=CONFIG, progress=False, memory=budget).to_csv(out, index=False)
    except MemoryError:
        return 3
    print("out-of-core ok", flush=True)
    try:
        probe_store(store, config=CONFIG, progress=False)
    except MemoryError:
        return 0
    return 4


if __name__ == "__main__":
    sys.exit(main())
