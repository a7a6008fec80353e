"""Scale benchmarks on an 8B-shaped random Llama: caching, steering overhead, several workers.

One command prints every ratio, each measured against its own baseline in the same run
(alternating repeats, best of N: the least disturbed run on a shared machine):

1. caching all layers vs a bare forward of the base model (goal >= 0.9): the whole
   ``probe cache`` job (every layer's residual stream pooled two ways, written to a store);
2. steering overhead (goal <= 5%): a forward with an ``add`` hook at 10 layers vs none, and
   greedy generation steered at the last prompt token and every generated token vs unsteered;
3. caching throughput of N worker processes writing one store vs one worker (near-linear when
   each worker has its own device; on one GPU or a few CPU cores they share it).

    python benchmarks/bench_scale.py --device cuda --dtype bfloat16     # 8B shapes, GPU
    python benchmarks/bench_scale.py                                    # CPU: width / 8 (says so)

The model is ``LlamaConfig`` with Meta-Llama-3-8B's shapes (hidden 4096, 32 layers, 32 heads,
8 KV heads, MLP 14336, vocab 128256), randomly initialised: speed does not depend on the
weights. ``--width-div K`` divides hidden, MLP, heads and vocab by K (default 8 on CPU, 1 on
CUDA). Texts are random words with a word-level tokenizer, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

WORDS = [f"w{i}" for i in range(4000)]


def build_model(*, device: str, dtype: str, width_div: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from probe.arch import architecture_for
    from probe.models import LoadedModel, ModelSpec, resolve_device, resolve_dtype

    d = width_div
    cfg = LlamaConfig(hidden_size=4096 // d, intermediate_size=14336 // d, num_hidden_layers=layers,
                      num_attention_heads=max(1, 32 // d), num_key_value_heads=max(1, 8 // d),
                      head_dim=128, vocab_size=128256 // d, max_position_embeddings=8192,
                      rope_theta=500000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    dev, tdtype = resolve_device(device), resolve_dtype(dtype, resolve_device(device))
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(tdtype)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=word_tokenizer(cfg.vocab_size),
                       spec=ModelSpec(alias=f"random-llama-8b-div{d}", hf_id="random"),
                       arch=architecture_for(model), device=dev, dtype=tdtype, source="random",
                       fingerprint=f"random-div{d}", chat_template=False)


def word_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS[:vocab_size - 4])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def dataset(n: int, lo: int, hi: int):
    from probe.data.schema import EmotionDataset

    rng = random.Random(0)
    rows = [{"id": str(i), "text": " ".join(rng.choices(WORDS, k=rng.randint(lo, hi))),
             "label": "abc"[i % 3]} for i in range(n)]
    return EmotionDataset.from_records("bench-scale", rows)


def sync(lm) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def timed(lm, fn) -> float:
    sync(lm)
    t = time.perf_counter()
    fn()
    sync(lm)
    return time.perf_counter() - t


def alternate(lm, fns: dict, repeats: int) -> dict[str, float]:
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in fns.items():
            runs[k].append(timed(lm, fn))
    return {k: min(v) for k, v in runs.items()}


# ------------------------------------------------------------------------------ 1. caching
def bench_cache(lm, ds, args, root: Path) -> dict[str, float]:
    from probe.cache import CacheConfig, cache_activations
    from probe.capture import pad_batch, plan_blocks
    from probe.tokens import encode

    enc = encode(lm.tokenizer, ds.texts, chat_template=False)
    config = CacheConfig(sites="blocks.*.hook_resid_post", poolings=("last", "mean"),
                         batch_size=args.batch_size, block_size=args.block_size,
                         store_dtype=args.store_dtype, padding_side="right")
    plan = list(plan_blocks(enc.lengths, batch_size=args.batch_size, block_size=args.block_size))

    def bare():
        with torch.inference_mode():
            for _, batches in plan:
                for idx in batches:
                    lm.arch.base(lm.model)(**pad_batch([enc.ids[r] for r in idx], 0, "right",
                                                       lm.device), use_cache=False)

    def cache():
        out = root / "bench.zarr"
        shutil.rmtree(out, ignore_errors=True)
        cache_activations(lm, ds, config=config, out=out, progress=False)

    t = alternate(lm, {"bare": bare, "cache": cache}, args.repeats)
    return {**t, "tokens": sum(enc.lengths)}


# ------------------------------------------------------------------------------ 2. steering
def bench_steer(lm, ds, args) -> dict[str, float]:
    from probe.interventions import add

    texts = ds.texts[:args.batch_size]
    batch = lm.batch(texts)
    v = torch.randn(lm.arch.d_model(lm.model), generator=torch.Generator().manual_seed(0))
    layers = f"blocks.{lm.n_layers // 3}-{lm.n_layers // 3 + 9}.hook_resid_post"
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)

    def forward():
        with torch.inference_mode():
            lm.logits(batch)

    def forward_steered():
        with torch.inference_mode(), lm.hooks({layers: add(v, strength=4.0)}):
            lm.logits(batch)

    def generate():
        lm.generate(batch, **gen)

    def generate_steered():
        with lm.hooks({layers: add(v, strength=4.0, positions="last-prompt+generated")}):
            lm.generate(batch, **gen)

    return alternate(lm, {"forward": forward, "forward_steered": forward_steered,
                          "generate": generate, "generate_steered": generate_steered},
                     args.repeats)


# ------------------------------------------------------------------------------ 3. workers
def bench_workers(lm, ds, args, root: Path) -> dict[int, float]:
    from probe.cache import CacheConfig
    from probe.distributed import cache_with_workers

    config = CacheConfig(sites="blocks.*.hook_resid_post", poolings=("last", "mean"),
                         batch_size=args.batch_size, block_size=args.block_size,
                         store_dtype=args.store_dtype, padding_side="right")
    loader = (build_model, (), dict(device=args.device, dtype=args.dtype, width_div=args.width_div,
                                    layers=args.layers))
    out: dict[int, float] = {}
    for n in args.workers:
        path = root / f"workers-{n}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        cache_with_workers(loader, ds, config=config, out=path, workers=n,
                           devices=_devices(args.device, n), start_method="spawn")
        out[n] = time.perf_counter() - t
    return out


def _devices(device: str, n: int) -> list[str]:
    if device.startswith("cuda") and torch.cuda.device_count() > 1:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(n)]
    return [device] * n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--width-div", type=int, default=None, help="default: 1 on CUDA, 8 on CPU")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--n", type=int, default=None, help="texts (default: 1024 on CUDA, 48 on CPU)")
    ap.add_argument("--words", default="64,128", help="text length range in words")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 on CUDA, 8 on CPU")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--store-dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare ('' to skip)")
    args = ap.parse_args(argv)
    from probe.models import resolve_device

    cuda = resolve_device(args.device).type == "cuda"
    args.device = str(resolve_device(args.device))
    args.width_div = args.width_div or (1 if cuda else 8)
    args.n = args.n or (1024 if cuda else 48)
    args.batch_size = args.batch_size or (32 if cuda else 8)
    args.block_size = args.block_size or args.batch_size * 4
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    lo, hi = (int(x) for x in args.words.split(","))
    lm = build_model(device=args.device, dtype=args.dtype, width_div=args.width_div,
                     layers=args.layers)
    ds = dataset(args.n, lo, hi)
    n_params = sum(p.numel() for p in lm.model.parameters())
    print(f"model: random Llama, 8B shapes / {args.width_div} in width ({n_params / 1e9:.2f} B "
          f"parameters), {args.layers} layers, {lm.dtype} on {lm.device}; {args.n} texts of "
          f"{lo}-{hi} words, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    if args.width_div != 1:
        print(f"NOTE: reduced width (1/{args.width_div}): not the 8B model; rerun with "
              "--device cuda --dtype bfloat16 for the real shapes")
    with tempfile.TemporaryDirectory() as tmp:
        c = bench_cache(lm, ds, args, Path(tmp))
        tok = c["tokens"]
        print(f"1. caching every layer ({args.store_dtype} store) vs bare forward: bare "
              f"{c['bare']:.2f} s ({tok / c['bare']:,.0f} tok/s), caching {c['cache']:.2f} s "
              f"({tok / c['cache']:,.0f} tok/s): throughput ratio "
              f"{c['bare'] / c['cache']:.3f} (goal >= 0.9)")
        s = bench_steer(lm, ds, args)
        fwd = 100 * (s["forward_steered"] / s["forward"] - 1)
        gen = 100 * (s["generate_steered"] / s["generate"] - 1)
        print(f"2. steering overhead, add() at 10 layers: forward {s['forward']:.3f} s -> "
              f"{s['forward_steered']:.3f} s ({fwd:+.1f}%); generation of {args.new_tokens} "
              f"tokens {s['generate']:.2f} s -> {s['generate_steered']:.2f} s ({gen:+.1f}%) "
              "(goal <= +5%)")
        if args.workers:
            w = bench_workers(lm, ds, args, Path(tmp))
            base = w.get(1) or next(iter(w.values()))
            parts = ", ".join(f"{n} worker(s) {t:.1f} s (x{base / t:.2f})" for n, t in w.items())
            print(f"3. caching with worker processes (model load included): {parts} "
                  f"(devices: {', '.join(sorted(set(_devices(args.device, max(w)))))})")


if __name__ == "__main__":
    main()
