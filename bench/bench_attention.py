#!/usr/bin/env python
"""Attention alone at the 12B model's real shapes (issue 6): time per layer of each backend of
`easyanimate.transformer.attention`, and its error against an exact float32 softmax.

    python bench/bench_attention.py                  # GPU: 384x672x49 and 576x1008x49, CFG batch 2, the 12B's 48 heads x 64
    python bench/bench_attention.py --smoke          # CPU, tiny shape: proves the script runs

Inputs are random bf16 with the spread of real queries and keys (unit variance per element, then the model's 1/sqrt(d)
scale inside the kernel). The error is measured on a slice (batch 0, the first 2 heads, the first 1024 queries against
all keys) against float32 math, and reported as relative L2 error; the bf16 rounding of an exact kernel sets the floor.
Time: CUDA events, median of `--iters` calls after 2 warm-ups. `flex` is torch's flex_attention compiled (no mask).
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, time, traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import easyanimate from the repo root
import torch
from easyanimate.transformer import V51_12B_CONFIG, attention, set_attention_backend
from easyanimate.core import InputError

SIZES = {"384x672x49": 13104, "576x1008x49": 29484, "768x1344x49": 52416}  # video tokens (2x2 patches of the latent)


def reference(q, k, v, n_q: int = 1024):
    "Exact attention in float32 on the slice the error is measured on."
    q, k, v = (t[:1, :2].float() for t in (q, k, v))
    q = q[:, :, :n_q]
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return w @ v


def timed(fn, iters: int, cuda: bool) -> tuple[float, list]:
    for _ in range(2): fn()
    times = []
    for _ in range(iters):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); b.synchronize(); times.append(a.elapsed_time(b) / 1000)
        else:
            t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def flex_fn():
    from torch.nn.attention.flex_attention import flex_attention
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--sizes", nargs="*", default=["384x672x49", "576x1008x49"], choices=list(SIZES))
    ap.add_argument("--backends", nargs="*", default=["cudnn", "flash", "efficient", "sage", "flex"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--heads", type=int, default=None, help="default: the 12B config's")
    ap.add_argument("--head-dim", type=int, default=None, help="default: the 12B config's")
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/bench_attention.json, else bench/results/)")
    a = ap.parse_args()
    out = Path(a.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results") / "bench_attention.json")
    cuda = torch.cuda.is_available() and not a.smoke
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    heads_12b, hd_12b = V51_12B_CONFIG["num_attention_heads"], V51_12B_CONFIG["attention_head_dim"]
    batch, heads, hd = (2, a.heads or heads_12b, a.head_dim or hd_12b) if cuda else (1, 2, 64)
    backends = a.backends if cuda else ["math", "sdpa"]
    sizes = {s: SIZES[s] + a.text_tokens for s in a.sizes} if cuda else {"smoke": 300}
    res = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
               cudnn=torch.backends.cudnn.version(), batch=batch, heads=heads, head_dim=hd, rows=[], errors={})
    for size, tokens in sizes.items():
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(batch, heads, tokens, hd, generator=g, device=device, dtype=dtype) for _ in range(3))
        k = k + 0.5 * torch.randn(1, heads, 1, hd, generator=g, device=device, dtype=dtype)  # real keys share an offset
        ref = reference(q, k, v)
        flops = 4 * batch * heads * tokens * tokens * hd
        for name in backends:
            try:
                if name == "flex": fn = flex_fn()
                else: set_attention_backend(name); fn = lambda q, k, v: attention(q, k, v)
                o = fn(q, k, v)
                err = ((o[:1, :2, :ref.shape[2]].float() - ref).norm() / ref.norm()).item()
                med, times = timed(lambda: fn(q, k, v), a.iters, cuda)
                row = dict(size=size, tokens=tokens, backend=name, s_per_layer=med, tflops=flops / med / 1e12, rel_err=err)
                res["rows"].append(row)
                print(f"{size} {name}: {med * 1e3:.2f} ms/layer, {row['tflops']:.0f} TFLOP/s, rel err {err:.2e}", flush=True)
            except (RuntimeError, InputError, ImportError, AssertionError) as e:
                res["errors"][f"{size} {name}"] = repr(e)[:500]; print(f"{size} {name}: {e!r}"[:300], flush=True)
            set_attention_backend("sdpa")
        del q, k, v
        if cuda: torch.cuda.empty_cache()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp"); tmp.write_text(json.dumps(res, indent=2)); os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
