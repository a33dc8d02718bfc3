#!/usr/bin/env python
"""Sequence-parallel (Ulysses) step time of the 12B transformer on N GPUs vs 1 GPU (issue 12).

    torchrun --standalone --nproc_per_node 2 bench/bench_parallel.py                 # 2 GPUs, 576x1008x49, ~3 minutes
    torchrun --standalone --nproc_per_node 2 bench/bench_parallel.py --smoke         # CPU (gloo), tiny model, seconds

Every rank builds the same random weights (same seed) at the V5.1 12B config in bf16, and the same inputs: batch 2 (CFG),
256 text tokens. Rank 0 first times the plain model alone (the 1-GPU baseline, the other ranks wait), then all ranks
time the sharded model; rank 0 prints the table (speed-up, scaling efficiency = speed-up / N, relative error of the
sharded output vs the 1-GPU output, peak memory per GPU) and writes JSON to $OUT or bench/results/.
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import torch.distributed as dist
from easyanimate.parallel import enable_sequence_parallel
from easyanimate.transformer import V51_12B_CONFIG, empty_model, random_weights_
from easyanimate.testing import tiny_transformer_config


def timed(fn, device, warmup, iters):
    for _ in range(warmup): out = fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device); t = time.perf_counter(); out = fn(); torch.cuda.synchronize(device)
        else: t = time.perf_counter(); out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true"); ap.add_argument("--size", default="576x1008x49")
    ap.add_argument("--iters", type=int, default=3); ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=256); ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cuda = torch.cuda.is_available() and not a.smoke
    rank_local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda: torch.cuda.set_device(rank_local)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank_local) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    config = V51_12B_CONFIG if not a.smoke else dict(tiny_transformer_config(16), num_attention_heads=4)
    h, w, f = (int(v) for v in a.size.split("x")) if not a.smoke else (64, 96, 9)
    model = random_weights_(empty_model(config), device=device, dtype=dtype, seed=0)
    g = torch.Generator(device="cpu").manual_seed(1)
    lat = torch.randn(2, 16, (f - 1) // 4 + 1, h // 8, w // 8, generator=g).to(device, dtype)
    text = torch.randn(2, a.text_tokens if not a.smoke else 8, config["text_embed_dim"], generator=g).to(device, dtype)
    t = torch.tensor([500.0, 500.0], device=device)
    step = lambda: model(lat, t, encoder_hidden_states=text, return_dict=False)[0]
    rows = {}
    with torch.no_grad():
        if rank == 0:
            if cuda: torch.cuda.reset_peak_memory_stats(device)
            s1, ref = timed(step, device, a.warmup, a.iters)
            rows["1 GPU"] = dict(s_per_step=s1, peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None)
        dist.barrier()
        enable_sequence_parallel(model)
        if cuda: torch.cuda.reset_peak_memory_stats(device)
        sN, out = timed(step, device, a.warmup, a.iters)
        peak = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0], device=device)
        peaks = [torch.zeros_like(peak) for _ in range(world)]; dist.all_gather(peaks, peak)
    if rank == 0:
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        rows[f"{world} GPUs, Ulysses"] = dict(s_per_step=sN, peak_gib=[round(p.item(), 2) for p in peaks] if cuda else None,
                                              speedup=s1 / sN, efficiency=s1 / sN / world, rel_err_vs_1gpu=err)
        meta = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), device=torch.cuda.get_device_name(device) if cuda else "cpu",
                    torch=torch.__version__, world=world, size=f"{h}x{w}x{f}", dtype=str(dtype), text_tokens=text.shape[1])
        print(json.dumps(meta))
        print("| run | s/step | speed-up | scaling efficiency | peak GiB per GPU | rel. err. vs 1 GPU |\n|---|---|---|---|---|---|")
        for k, r in rows.items():
            print(f"| {k} | {r['s_per_step']:.3f} | {r.get('speedup', 1):.2f}x | {r.get('efficiency', 1):.2f} | {r['peak_gib']} | "
                  f"{r.get('rel_err_vs_1gpu', 0):.1e} |")
        path = Path(a.out or (Path(os.environ["OUT"]) / "bench_parallel.json" if os.environ.get("OUT")
                              else Path(__file__).parent / "results" / "bench_parallel.json"))
        path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
