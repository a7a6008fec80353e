"""Child process of test_lazy: probe a store with the address space capped.

argv: store, cap in MiB, budget for the out-of-core sweep, output CSV. Prints "out-of-core ok"
once the out-of-core sweep has run under the cap and written its results, then runs the
in-memory sweep under the same cap: exits 0 when it raises MemoryError (a C allocator may abort
the process instead, a negative return code), 4 when it succeeds (the cap proves nothing), 3
when the out-of-core sweep itself ran out of memory.
"""

import resource
import sys

import dask
import torch

from probe.evaluate import EvalConfig
from probe.sweep import probe_store


def vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))


def main() -> int:
    store, cap_mib, budget, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dask.config.set(scheduler="synchronous")
    config = EvalConfig(n_bootstrap=0, control=False, lexical=False)
    # warm up every code path on one site, so lazy initialisations happen before the cap
    probe_store(store, config=config, progress=False, sites="blocks.0.hook_resid_post",
                poolings=["last"], memory=budget)
    probe_store(store, config=config, progress=False, sites="blocks.0.hook_resid_post",
                poolings=["last"])
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + cap_mib * 2**20, resource.RLIM_INFINITY))
    try:
        probe_store(store, config=config, progress=False, memory=budget).to_csv(out, index=False)
    except MemoryError:
        return 3
    print("out-of-core ok", flush=True)
    try:
        probe_store(store, config=config, progress=False)
    except MemoryError:
        return 0
    return 4


if __name__ == "__main__":
    sys.exit(main())
