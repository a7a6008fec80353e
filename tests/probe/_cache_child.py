"""Child process for kill-and-resume tests: caches a tiny model's activations into a store.

usage: python -m tests.probe._cache_child MODEL_DIR STORE [kill-at-block K]
With ``kill-at-block K`` the process SIGKILLs itself in the middle of writing block K: after
the first array's rows are on disk, before the block's progress is committed.
"""

import os
import signal
import sys

from probe.cache import CacheConfig, cache_activations
from probe.data.schema import EmotionDataset
from probe.models import load_model
from probe.store import ActivationStore

N_ROWS = 96
CONFIG = CacheConfig(sites="hook_embed blocks.*.hook_resid_post blocks.1.attn.hook_z",
                     poolings=("last", "content-mean"), batch_size=5, block_size=8)


def dataset() -> EmotionDataset:
    from tests.tiny import CORPUS

    rows = [{"id": f"r{i}", "text": f"{CORPUS[i % len(CORPUS)]} ({i})", "label": "ab"[i % 2]}
            for i in range(N_ROWS)]
    return EmotionDataset.from_records("kill-test", rows)


def main() -> None:
    model_dir, store = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        kill_block = int(sys.argv[4])
        original = ActivationStore.write_block

        def write_then_die(self, start, arrays):
            if start // self.block_size == kill_block:
                name, (layers, values) = next(iter(arrays.items()))
                self.group[name][start:start + len(values)] = values if layers is None else 0
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, start, arrays)

        ActivationStore.write_block = write_then_die
    lm = load_model(model_dir, device="cpu", dtype="float32")
    cache_activations(lm, dataset(), config=CONFIG, out=store, progress=False)


if __name__ == "__main__":
    main()
