"""Activation memory of one transformer block at the V5.1 12B width, whole batch against `set_max_block_tokens` slices.

The low-memory modes keep ~1.4 GiB of weights on the GPU, so at 768x1344x49 (52 672 tokens a row) one block's
activations set the peak. This script measures the peak bytes that one block's forward allocates (bf16, no grad, CFG
batch 2, 256 text tokens) at a few token counts, fits peak = a + b x tokens, and extrapolates to the generation sizes.
On a GPU it reads `torch.cuda.max_memory_allocated`; on the CPU it counts every tensor storage the forward creates
(`TensorMemoryMeter`), which is what the CUDA caching allocator must hold at least (no fragmentation, no kernel
workspace), so the CPU figures are a lower bound of the GPU's.

  python bench/bench_block_memory.py                  # CPU: token counts 1024 2048 3072 (about a minute)
  python bench/bench_block_memory.py --tokens 13360 52672   # GPU: the real sizes directly
"""
import argparse, json, sys, time
import numpy as np
import torch
from bench_speed import GiB, SMOKE_CONFIG  # the speed benchmark's tiny config (it puts the repo on sys.path)
from easyanimate.transformer import V51_12B_CONFIG, empty_model, random_weights_
from easyanimate.vae import TensorMemoryMeter

SIZES = {"384x672x49": 13 * 24 * 42, "576x1008x49": 13 * 36 * 63, "768x1344x49": 13 * 48 * 84}  # video tokens a row
TEXT_TOKENS = 256


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 3072], help="video + text tokens a row")
    p.add_argument("--batch", type=int, default=2, help="rows (2: CFG)")
    p.add_argument("--smoke", action="store_true", help="a tiny width (tests)")
    p.add_argument("--out", default=None, help="write the results here (JSON)")
    return p.parse_args(argv)


def block_peak(block, tokens:int, batch:int, dim:int, temb_dim:int, max_tokens, device) -> int:
    "Peak bytes allocated by one forward of `block` (inputs and weights excluded)."
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, tokens - TEXT_TOKENS, dim, generator=g, device=device, dtype=torch.bfloat16)
    c = torch.randn(batch, TEXT_TOKENS, dim, generator=g, device=device, dtype=torch.bfloat16)
    t = torch.randn(batch, temb_dim, generator=g, device=device, dtype=torch.bfloat16)
    block.max_tokens = max_tokens
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
            out = block(x, c, t, None)
            torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
        else:
            with TensorMemoryMeter() as meter: out = block(x, c, t, None)
            peak = meter.peak
    del out
    return peak


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = SMOKE_CONFIG if args.smoke else dict(V51_12B_CONFIG, num_layers=1, mmdit_layers=1)  # one block is measured
    model = random_weights_(empty_model(config), device=device, dtype=torch.bfloat16)
    block = model.transformer_blocks[0]
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    rows = []
    for tokens in args.tokens:
        t0 = time.time()
        whole = block_peak(block, tokens, args.batch, dim, config["time_embed_dim"], None, device)
        sliced = block_peak(block, tokens, args.batch, dim, config["time_embed_dim"], tokens, device)  # one row at a time
        rows.append(dict(tokens=tokens, whole=whole, sliced=sliced))
        print(f"{tokens} tokens: whole batch {whole / GiB:.3f} GiB, one row at a time {sliced / GiB:.3f} GiB "
              f"({time.time() - t0:.0f} s)", flush=True)
    out = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
               width=dim, batch=args.batch, rows=rows, extrapolated={})
    if len(rows) >= 2:
        for key in ("whole", "sliced"):
            b, a = np.polyfit([r["tokens"] for r in rows], [r[key] for r in rows], 1)
            for name, video in SIZES.items():
                out["extrapolated"].setdefault(name, {})[key] = float(a + b * (video + TEXT_TOKENS))
        print("\n| size | tokens a row | whole batch (GiB) | one row at a time (GiB) |\n|---|---|---|---|")
        for name, video in SIZES.items():
            e = out["extrapolated"][name]
            print(f"| {name} | {video + TEXT_TOKENS} | {e['whole'] / GiB:.2f} | {e['sliced'] / GiB:.2f} |")
    if args.out:
        with open(args.out, "w") as f: json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
