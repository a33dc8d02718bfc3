"""Benchmark the VAE decoder: ours (easyanimate.vae) against diffusers' AutoencoderKLMagvit, same random weights.

For each size (49 frames by default): random bf16 latents (1, 16, 13, H/8, W/8) on CUDA, decoded
- by ours, untiled, for every combination of --decode-chunk x --stream-frames x --split-taps, and tiled (--tile);
- by diffusers, untiled (OOM is caught) and with its enable_tiling().
Time: CUDA events, median of --runs after --warmup. Memory: torch.cuda.max_memory_allocated after
reset_peak_memory_stats, nothing subtracted (the model's weights are reported separately; only the model under
test is on the GPU). Error: relative L2 error of ours vs diffusers on the same latents.
Prints a markdown table last and writes JSON to --out (default $OUT/bench_vae.json when OUT is set).

    python bench/bench_vae.py                          # the H100 run
    python bench/bench_vae.py --decode-chunk 1,2,4,12 --stream-frames 1,2
    python bench/bench_vae.py --smoke                  # tiny sizes on the CPU in float32 (proves the script works)
"""
import argparse, gc, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # import easyanimate from the repo root
import torch

from easyanimate.vae import AutoencoderKLMagvit, CausalConv3d


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="384x672,576x1008,768x1344", help="HxW list (pixels)")
    p.add_argument("--frames", type=int, default=49, help="pixel frames (4k+1)")
    p.add_argument("--decode-chunk", default="2", help="ours: latent frames per decoder call, a list")
    p.add_argument("--stream-frames", default="1", help="ours: frames per piece after the first up block, a list")
    p.add_argument("--split-taps", default="1", help="ours: 1 = lone frames convolved tap by tap, 0 = one conv, a list")
    p.add_argument("--tile", default="auto:8",
                   help="ours, tiled run: 'auto:GIB' (auto_tiling to a budget), 'HxW:STRIDEHxSTRIDEW', or 'none'")
    p.add_argument("--tile-sizes", default="768x1344", help="sizes where ours also runs tiled ('all' for every size)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-diffusers", action="store_true", help="skip diffusers (e.g. when it is not installed)")
    p.add_argument("--diffusers-tiling", default="1", help="1: also time diffusers with enable_tiling()")
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one decode of ours per size")
    p.add_argument("--no-fp32-ref", action="store_true",
                   help="skip the float32 reference decode (ours in float32, TF32 off) used for 'err vs fp32'")
    p.add_argument("--encode", action="store_true",
                   help="also time encode (ours vs diffusers, untiled) of a random video at every size")
    p.add_argument("--encode-chunk", default="4", help="ours: pixel frames per encoder call (multiple of 4), a list")
    p.add_argument("--skip-decode", action="store_true", help="only the encode rows (with --encode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON results (default $OUT/bench_vae.json if OUT is set)")
    p.add_argument("--smoke", action="store_true", help="tiny model and sizes, CPU, float32")
    return p.parse_args(argv)


def ints(s): return [int(v) for v in str(s).split(",") if v.strip()]
def sizes(s): return [tuple(int(v) for v in hw.lower().split("x")) for hw in s.split(",") if hw.strip()]
def gib(n): return None if n is None else n / 2**30


class Timer:
    "CUDA events on a GPU, perf_counter on the CPU."
    def __init__(self, device): self.cuda = device.type == "cuda"
    def __call__(self, fn):
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(); a.record(); out = fn(); b.record(); torch.cuda.synchronize()
            return out, a.elapsed_time(b) / 1e3
        t = time.perf_counter(); out = fn(); return out, time.perf_counter() - t


def measure(decode, z, runs, warmup, device):
    "Median seconds and peak bytes of `decode(z)`; returns (output on CPU, seconds, peak bytes or None)."
    timer, out, times, peak = Timer(device), None, [], None
    with torch.inference_mode():
        for _ in range(warmup):
            out = None; out = decode(z)
        out = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        for _ in range(runs):
            out = None
            out, dt = timer(lambda: decode(z))
            times.append(dt)
        if device.type == "cuda": peak = torch.cuda.max_memory_allocated()
    return out.float().cpu(), statistics.median(times), peak


def rel_err(a, b): return ((a.double() - b.double()).norm() / b.double().norm()).item()


def set_split_taps(vae, on):
    for m in vae.modules():
        if isinstance(m, CausalConv3d): m.split_taps = bool(on)


def oom_safe(fn):
    try: return fn(), None
    except torch.OutOfMemoryError as e:
        gc.collect(); torch.cuda.empty_cache()
        return None, f"OOM: {str(e).splitlines()[0][:120]}"


def profile_once(vae, z):
    from torch.profiler import profile, ProfilerActivity
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        vae.decode(z); torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


def bench_encode(args, ours, ref, H, W, frames, device, dtype):
    "Rows for encoding a random smooth video: posterior mean error vs diffusers and vs a float32 encode."
    g = torch.Generator().manual_seed(args.seed)
    x = torch.nn.functional.avg_pool3d(torch.rand(1, 3, frames, H, W, generator=g) * 2 - 1, (1, 5, 5), 1, (0, 2, 2))
    x = x.to(device, dtype)
    rows, ref32, ref_out = [], None, None
    if not args.no_fp32_ref and dtype != torch.float32:
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        ours.to(device, torch.float32)
        r, err = oom_safe(lambda: measure(lambda v: ours.encode(v.float()).latent_dist.mean, x, 1, 0, device))
        ours.to("cpu", dtype); torch.backends.cudnn.allow_tf32 = tf32
        ref32 = r[0] if r is not None else None
        gc.collect(); torch.cuda.empty_cache()
    if ref is not None:
        ref.to(device); ref.disable_tiling()
        r, err = oom_safe(lambda: measure(lambda v: ref.encode(v).latent_dist.mean, x, args.runs, args.warmup, device))
        row = dict(impl="diffusers", mode="encode", size=f"{H}x{W}", error=err)
        if r is not None:
            ref_out, sec, peak = r
            row.update(seconds=sec, peak_gib=gib(peak))
            if ref32 is not None: row["rel_err_vs_fp32"] = rel_err(ref_out, ref32)
        rows.append(row); print(row, flush=True)
        ref.to("cpu"); gc.collect()
        if device.type == "cuda": torch.cuda.empty_cache()
    ours.to(device); ours.disable_tiling()
    base = rows[0] if rows and "seconds" in rows[0] else None
    for ec in ints(args.encode_chunk):
        ours.set_chunking(encode_chunk=ec)
        r, err = oom_safe(lambda: measure(lambda v: ours.encode(v).latent_dist.mean, x, args.runs, args.warmup, device))
        row = dict(impl="ours", mode=f"encode (chunk {ec})", size=f"{H}x{W}", error=err)
        if r is not None:
            out, sec, peak = r
            row.update(seconds=sec, peak_gib=gib(peak))
            if ref_out is not None: row["rel_err_vs_diffusers"] = rel_err(out, ref_out)
            if ref32 is not None: row["rel_err_vs_fp32"] = rel_err(out, ref32)
            if base is not None:
                row["time_ratio"] = sec / base["seconds"]
                if peak is not None and base.get("peak_gib"): row["peak_ratio"] = gib(peak) / base["peak_gib"]
        rows.append(row); print(row, flush=True)
    ours.set_chunking(encode_chunk=4); ours.to("cpu"); gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()
    return rows


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    if args.smoke:
        cfg, size_list, frames = dict(block_out_channels=[16, 16, 32, 32], norm_num_groups=4), [(32, 32), (48, 64)], 5
        tile_arg, tile_sizes, args.runs, args.warmup = "48x48:32x32", "48x64", 1, 0
    else:
        cfg, size_list, frames, tile_arg, tile_sizes = {}, sizes(args.sizes), args.frames, args.tile, args.tile_sizes
    torch.manual_seed(args.seed)

    # 1. one set of random weights for both implementations
    ours = AutoencoderKLMagvit(**cfg).eval()
    ref, note = None, ""
    if not args.no_diffusers:
        try:
            from diffusers import AutoencoderKLMagvit as DiffusersVAE
            ref = DiffusersVAE(**cfg).eval()
            ref.load_state_dict(ours.state_dict(), strict=True)
            ref.to(dtype)
        except ImportError as e:
            note = f"diffusers not importable ({e}); its rows are missing"
    ours.to(dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    results = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                   dtype=str(dtype), frames=frames, weights_gib=gib(weight_bytes), note=note, rows=[])
    lat_frames = (frames - 1) // 4 + 1

    for H, W in size_list:
        if args.encode: results["rows"] += bench_encode(args, ours, ref, H, W, frames, device, dtype)
        if args.skip_decode: continue
        g = torch.Generator().manual_seed(args.seed)
        z = torch.randn(1, 16, lat_frames, H // 8, W // 8, generator=g).to(device, dtype)
        rows = []
        # 2. a float32 reference (the same bf16-rounded weights and latents, TF32 off) to judge bf16 accuracy
        ref32 = None
        if not args.no_fp32_ref and dtype != torch.float32:
            tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            ours.to(device, torch.float32)
            r, err = oom_safe(lambda: measure(lambda v: ours.decode(v.float()).sample, z, 1, 0, device))
            ours.to("cpu", dtype)
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
            if r is not None: ref32 = r[0]
            print(dict(size=f"{H}x{W}", fp32_reference="ok" if r is not None else err, seconds=r and r[1]), flush=True)
            gc.collect(); torch.cuda.empty_cache()
        # 3. diffusers (its untiled output is the reference for 'err vs diffusers')
        ref_out = None
        if ref is not None:
            ref.to(device)
            modes = [("untiled", False)] + ([("tiled", True)] if args.diffusers_tiling == "1" else [])
            for label, tiled in modes:
                ref.enable_tiling() if tiled else ref.disable_tiling()
                r, err = oom_safe(lambda: measure(lambda v: ref.decode(v).sample, z, args.runs, args.warmup, device))
                row = dict(impl="diffusers", mode=label, size=f"{H}x{W}", error=err)
                if r is not None:
                    out, sec, peak = r
                    row.update(seconds=sec, peak_gib=gib(peak))
                    if ref32 is not None: row["rel_err_vs_fp32"] = rel_err(out, ref32)
                    if label == "untiled": ref_out = out
                    elif ref_out is None: ref_out = out
                rows.append(row); print(row, flush=True)
            ref.disable_tiling(); ref.to("cpu"); gc.collect()
            if device.type == "cuda": torch.cuda.empty_cache()
        # 4. ours, every chunking configuration, untiled; then tiled
        ours.to(device)
        base = next((r for r in rows if r["impl"] == "diffusers" and r["mode"] == "untiled" and "seconds" in r), None)
        configs = [(dc, sf, st) for dc in ints(args.decode_chunk) for sf in ints(args.stream_frames)
                   for st in ints(args.split_taps)]
        runs = [("untiled", c) for c in configs]
        if tile_arg != "none" and (tile_sizes == "all" or f"{H}x{W}" in tile_sizes.split(",")): runs.append(("tiled", configs[0]))
        for label, (dc, sf, st) in runs:
            ours.set_chunking(decode_chunk=dc, stream_frames=sf); set_split_taps(ours, st)
            tile = None
            if label == "tiled":
                if tile_arg.startswith("auto:"):
                    tile = ours.auto_tiling(H, W, budget_gib=float(tile_arg[5:]), num_frames=frames, dtype=dtype)
                    if tile is None: continue   # untiled already fits the budget
                else:
                    t, s = tile_arg.split(":")
                    (th, tw), (sh, sw) = sizes(t)[0], sizes(s)[0]
                    ours.enable_tiling(th, tw, sh, sw); tile = (th, tw)
            else: ours.disable_tiling()
            r, err = oom_safe(lambda: measure(lambda v: ours.decode(v).sample, z, args.runs, args.warmup, device))
            row = dict(impl="ours", mode=label if tile is None else f"tiled {tile[0]}x{tile[1]}", size=f"{H}x{W}",
                       decode_chunk=dc, stream_frames=sf, split_taps=st, error=err)
            if r is not None:
                out, sec, peak = r
                row.update(seconds=sec, peak_gib=gib(peak))
                if ref_out is not None: row["rel_err_vs_diffusers"] = rel_err(out, ref_out)
                if ref32 is not None: row["rel_err_vs_fp32"] = rel_err(out, ref32)
                if base is not None:
                    row["time_ratio"] = sec / base["seconds"]
                    if peak is not None and base.get("peak_gib"): row["peak_ratio"] = gib(peak) / base["peak_gib"]
                row["estimate_gib"] = gib(ours.decode_memory_estimate(H, W, frames, dtype, tile=tile))
            rows.append(row); print(row, flush=True)
        ours.disable_tiling()
        if args.profile and device.type == "cuda":
            dc, sf, st = configs[0]
            ours.set_chunking(decode_chunk=dc, stream_frames=sf); set_split_taps(ours, st)
            profile_once(ours, z)
        ours.to("cpu"); gc.collect()
        if device.type == "cuda": torch.cuda.empty_cache()
        results["rows"] += rows

    out = args.out or (os.path.join(os.environ["OUT"], "bench_vae.json") if os.environ.get("OUT") else None)
    if out:
        tmp = out + ".tmp"
        with open(tmp, "w") as f: json.dump(results, f, indent=1)
        os.replace(tmp, out)
    # 5. the table, last
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"
    print(f"\n{results['device']}, torch {results['torch']}, {results['dtype']}, {frames} frames, "
          f"weights {f(results['weights_gib'])} GiB (ours and diffusers alike). {note}")
    print("| size | impl | mode | decode_chunk | stream_frames | split_taps | time s | peak GiB | time / diffusers | peak / diffusers | err vs diffusers | err vs fp32 | est GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        if r.get("error"):
            print(f"| {r['size']} | {r['impl']} | {r['mode']} | {r.get('decode_chunk', '-')} | {r.get('stream_frames', '-')} | {r.get('split_taps', '-')} | {r['error']} | | | | | | |")
            continue
        print(f"| {r['size']} | {r['impl']} | {r['mode']} | {r.get('decode_chunk', '-')} | {r.get('stream_frames', '-')} | "
              f"{r.get('split_taps', '-')} | {f(r.get('seconds'))} | {f(r.get('peak_gib'), 2)} | {f(r.get('time_ratio'), 2)} | "
              f"{f(r.get('peak_ratio'), 2)} | {f(r.get('rel_err_vs_diffusers'), 4)} | {f(r.get('rel_err_vs_fp32'), 4)} | {f(r.get('estimate_gib'), 2)} |")
    return results


if __name__ == "__main__":
    main()
