#!/usr/bin/env python
"""Time one CFG step (batch 2) of the V5.1 12B transformer, ours vs diffusers' port, with the same random bf16 weights.

    python bench/bench_transformer.py                  # GPU: 12B, 384x672x49 and 576x1008x49
    python bench/bench_transformer.py --smoke          # CPU, tiny float32 model: proves the script runs

Weights are materialised directly on the device in bf16 (the model is built on the meta device first); diffusers'
model is built on meta too and *shares* our tensors (same keys, `load_state_dict(assign=True)`), so both fit at once.
Prints a markdown table last; writes JSON to --out (default $OUT/bench_transformer.json when OUT is set).
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import easyanimate from the repo root
import torch
from easyanimate.transformer import (V51_12B_CONFIG, attention_backend, empty_model, random_weights_,
                                     set_attention_backend)

SIZES = {"384x672x49": (13, 48, 84), "576x1008x49": (13, 72, 126)}  # pixel size -> latent (frames, height, width)
SMOKE_CONFIG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, patch_size=2,
                    num_layers=2, mmdit_layers=2, time_embed_dim=32, text_embed_dim=48, add_norm_text_encoder=True)
SMOKE_SIZES = {"64x96x9": (3, 8, 12), "96x64x5": (2, 12, 8)}


def diffusers_twin(ours: torch.nn.Module, config: dict):
    "diffusers' model with our very tensors (built on meta, then the parameters assigned: no extra memory)."
    try: from diffusers import EasyAnimateTransformer3DModel as DiffusersModel
    except ImportError as e: return None, f"diffusers not importable ({e})"
    known = set(DiffusersModel.extract_init_dict(dict(config))[0])  # diffusers' constructor lacks the original's extra keys
    with torch.device("meta"): ref = DiffusersModel(**{k: v for k, v in config.items() if k in known})
    ref.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return ref.eval(), None


def timed(fn, device: torch.device, warmup: int, iters: int) -> tuple[list[float], torch.Tensor]:
    "Seconds per call (CUDA events on GPU, perf_counter on CPU) after `warmup` calls; returns the last output."
    for _ in range(warmup): out = fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(); out = fn(); end.record(); torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t0)
    return times, out


def run_model(model, inputs, device, warmup, iters):
    if device.type == "cuda": torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        fn = lambda: model(inputs["latents"], inputs["timestep"], encoder_hidden_states=inputs["text"], return_dict=False)[0]
        times, out = timed(fn, device, warmup, iters)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return dict(median_s=statistics.median(times), times_s=times, peak_gib=peak), out.float()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny float32 model on CPU")
    ap.add_argument("--sizes", nargs="*", help=f"subset of {list(SIZES)}")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--backend", default="sdpa", help="attention backend of our model (easyanimate.transformer.ATTENTION_BACKENDS)")
    ap.add_argument("--no-diffusers", action="store_true", help="time our model only")
    ap.add_argument("--floor-backend", default=None, help="attention backend for the bf16 noise floor: our model's output "
                    "with another valid attention kernel (default: 'efficient' on CUDA, 'math' on CPU; 'none' to skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.environ["OUT"], "bench_transformer.json") if os.environ.get("OUT") else None)
    args = ap.parse_args(argv)
    if args.iters < 3: ap.error("--iters must be at least 3 (the median of >= 3 runs is reported)")

    if args.smoke: device, dtype, config, sizes = torch.device("cpu"), torch.float32, SMOKE_CONFIG, SMOKE_SIZES
    else:
        if not torch.cuda.is_available(): sys.exit("No CUDA device: run with --smoke on a CPU.")
        device, dtype, config, sizes = torch.device("cuda"), torch.bfloat16, V51_12B_CONFIG, SIZES
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.sizes: sizes = {k: v for k, v in sizes.items() if k in args.sizes}
    floor_backend = args.floor_backend or ("efficient" if device.type == "cuda" else "math")
    if floor_backend == "none": floor_backend = None
    set_attention_backend(args.backend)

    # 1. Our model: meta -> random weights straight on the device in the target dtype
    t0 = time.perf_counter()
    ours = random_weights_(empty_model(config, dtype), device, seed=args.seed)
    n_params = sum(p.numel() for p in ours.parameters())
    build_s = time.perf_counter() - t0
    # 2. diffusers' model sharing the same tensors
    ref, why_not = (None, "--no-diffusers") if args.no_diffusers else diffusers_twin(ours, dict(ours.config))
    weights_gib = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None

    results = []
    g = torch.Generator(device=device).manual_seed(args.seed)
    for name, (frames, h, w) in sizes.items():
        inputs = dict(latents=torch.randn(2, config["in_channels"], frames, h, w, generator=g, device=device, dtype=dtype),
                      timestep=torch.tensor([500.0, 500.0], device=device),
                      text=torch.randn(2, args.text_tokens, config["text_embed_dim"], generator=g, device=device, dtype=dtype))
        row = dict(size=name, latents=[2, config["in_channels"], frames, h, w],
                   video_tokens=frames * (h // 2) * (w // 2), text_tokens=args.text_tokens)
        row["ours"], out_ours = run_model(ours, inputs, device, args.warmup, args.iters)
        rel = lambda a, b: ((a - b).norm() / b.norm()).item()
        if floor_backend:  # how far two valid bf16 computations of the same model drift apart: the scale for rel_err
            with attention_backend(floor_backend):
                _, out_floor = run_model(ours, inputs, device, 0, 3)
            row["rel_err_noise_floor"] = rel(out_floor, out_ours); del out_floor
        if ref is not None:
            row["diffusers"], out_ref = run_model(ref, inputs, device, args.warmup, args.iters)
            row["rel_err_vs_diffusers"] = rel(out_ours, out_ref)
            row["speedup"] = row["diffusers"]["median_s"] / row["ours"]["median_s"]
            del out_ref
        row["finite"] = bool(torch.isfinite(out_ours).all())
        del out_ours, inputs
        results.append(row)

    info = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", dtype=str(dtype),
                torch=torch.__version__, config="smoke" if args.smoke else "V5.1 12B", params=n_params,
                weights_gib=weights_gib, build_s=build_s, attention_backend=args.backend, noise_floor_backend=floor_backend, batch=2,
                warmup=args.warmup, iters=args.iters, diffusers=why_not or "same weights, shared tensors", results=results)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".json.tmp"); tmp.write_text(json.dumps(info, indent=2)); os.replace(tmp, args.out)

    print(f"\n{info['config']} transformer, {n_params / 1e9:.2f} B params, {info['dtype']}, {info['device']}, "
          f"torch {torch.__version__}, attention {args.backend}; one CFG step = batch 2, {args.text_tokens} text tokens; "
          f"median of {args.iters} after {args.warmup} warm-up" + (f"; diffusers: {why_not}" if why_not else ""))
    if floor_backend: print(f"noise floor = rel. err. of our output with the '{floor_backend}' attention kernel vs '{args.backend}'")
    print("\n| size | video tokens | ours (s) | diffusers (s) | speed-up | ours peak (GiB) | diffusers peak (GiB) "
          "| rel. err. vs diffusers | noise floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    gib = lambda v: "-" if v is None else f"{v:.1f}"
    sci = lambda v: "-" if v is None else f"{v:.1e}"
    for r in results:
        d = r.get("diffusers") or {}
        print(f"| {r['size']} | {r['video_tokens']} | {r['ours']['median_s']:.3f} | "
              + (f"{d['median_s']:.3f} | {r['speedup']:.2f}x" if d else "- | -")
              + f" | {gib(r['ours']['peak_gib'])} | {gib(d.get('peak_gib'))} | {sci(r.get('rel_err_vs_diffusers'))} "
              f"| {sci(r.get('rel_err_noise_floor'))} |")
    return info


if __name__ == "__main__":
    main()
