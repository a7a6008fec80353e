"""Caching throughput against the limit: a bare forward pass of the base model (no LM head).

Both run on the same batches (the plan `probe cache` uses), alternately, in one process; the
report gives each one's median time and the ratio (caching throughput / bare throughput; goal
>= 0.9). Caching here is the whole job: every layer's residual stream, pooled two ways, written
to a fresh float16 Zarr store, tokenization included.

    python benchmarks/bench_cache.py                       # embedded SmolLM2 on CPU
    python benchmarks/bench_cache.py --memory              # peak RSS at n and 4n texts
    python benchmarks/bench_cache.py --random-llama-8b --device cuda --dtype bfloat16 --n 2048

``--random-llama-8b`` builds a randomly initialised model with Meta-Llama-3-8B's shapes (speed
does not depend on the weights) and uses the embedded tokenizer.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def random_llama_8b(device: str, dtype: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from probe.arch import architecture_for
    from probe.models import LoadedModel, ModelSpec, load_model, resolve_device, resolve_dtype

    tok = load_model("smollm2-135m", device="cpu").tokenizer
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=8192, rope_theta=500000.0)
    dev, tdtype = resolve_device(device), resolve_dtype(dtype, resolve_device(device))
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=tdtype)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tok, spec=ModelSpec(alias="random-llama-8b", hf_id="random"),
                       arch=architecture_for(model), device=dev, dtype=tdtype, source="random",
                       fingerprint="random", chat_template=True)


def texts(n: int) -> list[str]:
    from probe.data import load_dataset

    base = load_dataset("emotion-scenarios").texts
    return [base[i % len(base)] + ("" if i < len(base) else f" ({i // len(base)})") for i in range(n)]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_bare(lm, encoded, plan) -> float:
    from probe.capture import pad_batch

    base = lm.arch.base(lm.model)
    sync(lm.device)
    t = time.perf_counter()
    with torch.inference_mode():
        for _, batches in plan:
            for idx in batches:
                inputs = pad_batch([encoded.ids[r] for r in idx], lm.tokenizer.pad_token_id,
                                   lm.tokenizer.padding_side, lm.device)
                base(**inputs, use_cache=False)
    sync(lm.device)
    return time.perf_counter() - t


def run_cache(lm, dataset, config, root: Path) -> float:
    from probe.cache import cache_activations

    out = root / "bench.zarr"
    shutil.rmtree(out, ignore_errors=True)
    sync(lm.device)
    t = time.perf_counter()
    cache_activations(lm, dataset, config=config, out=out, progress=False)
    sync(lm.device)
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--random-llama-8b", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--n", type=int, default=256, help="texts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=None,
                    help="rows per block (default: the rule probe cache uses, block_size_for)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="peak RSS of caching n and 4n texts")
    ap.add_argument("--_rss", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory:
        return memory(args)

    from probe.cache import CacheConfig, block_size_for
    from probe.capture import plan_blocks
    from probe.data.schema import EmotionDataset
    from probe.models import load_model
    from probe.tokens import encode

    lm = (random_llama_8b(args.device, args.dtype) if args.random_llama_8b else
          load_model(args.model, device=args.device, dtype=args.dtype))
    items = texts(args.n)
    args.block_size = args.block_size or block_size_for(args.n, args.batch_size)
    dataset = EmotionDataset.from_records("bench", [{"id": str(i), "text": t, "label": "x"}
                                                    for i, t in enumerate(items)])
    config = CacheConfig(sites="blocks.*.hook_resid_post", poolings=("last", "content-mean"),
                         batch_size=args.batch_size, block_size=args.block_size)
    encoded = encode(lm.tokenizer, items, chat_template=lm.chat_template)
    plan = list(plan_blocks(encoded.lengths, batch_size=args.batch_size, block_size=args.block_size))
    tokens = sum(encoded.lengths)
    with tempfile.TemporaryDirectory() as tmp:
        run_bare(lm, encoded, plan[:1])  # warm-up
        run_cache(lm, dataset.select(list(range(min(args.batch_size, args.n)))), config, Path(tmp))
        bare, cache = [], []
        for _ in range(args.repeats):
            bare.append(run_bare(lm, encoded, plan))
            cache.append(run_cache(lm, dataset, config, Path(tmp)))
        if args._rss:
            print(json.dumps({"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
            return
    b, c = statistics.median(bare), statistics.median(cache)
    print(f"model {lm.spec.alias} on {lm.device} in {str(lm.dtype).removeprefix('torch.')}; "
          f"{args.n} texts, {tokens} tokens, batch {args.batch_size}, block {args.block_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"bare forward (base model, no LM head): median {b:.2f} s  ({tokens / b:,.0f} tok/s)  runs {[round(x, 2) for x in bare]}")
    print(f"caching 30-layer pooled resid + store : median {c:.2f} s  ({tokens / c:,.0f} tok/s)  runs {[round(x, 2) for x in cache]}")
    print(f"throughput ratio caching / bare: {b / c:.3f}  (goal >= 0.9)")


def memory(args) -> None:
    """Peak RSS of the whole caching process at n and 4n texts (flat means it does not grow)."""
    out = {}
    for n in (args.n, 4 * args.n):
        cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device,
               "--dtype", args.dtype, "--n", str(n), "--repeats", "1", "--_rss",
               "--batch-size", str(args.batch_size)]
        cmd += ["--block-size", str(args.block_size)] if args.block_size else []
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[n] = json.loads(res.stdout.strip().splitlines()[-1])["rss_mib"]
        print(f"{n:6d} texts: peak RSS {out[n]:.0f} MiB")
    a, b = out[args.n], out[4 * args.n]
    print(f"growth from {args.n} to {4 * args.n} texts: {b - a:+.0f} MiB ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
