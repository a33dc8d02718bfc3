#!/usr/bin/env python
"""CPU time of the README's main job: one video from a prompt with the demo model shipped in the package
(17 frames at 128x128, 25 flow-matching steps, classifier-free guidance 5, so 50 transformer calls, then the VAE decode).

    python bench/bench_demo_cpu.py                 # 2 torch threads (the CI machine's cores), 3 timed runs
    python bench/bench_demo_cpu.py --threads 0     # all cores

Reports the model load time, and per run the whole call (text encoding, sampling, decode) and its split, median of
`--runs` after one warm-up run. Prints a markdown table; writes bench/results/demo_cpu_<date>.json (or --out).
"""
from __future__ import annotations
import argparse, datetime, json, platform, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import easyanimate from the repo root
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (0: leave torch's default)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--prompt", default="a red triangle moves to the right")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    from easyanimate.pipeline import load_pipeline
    from easyanimate.shapes import DEMO_GENERATION, demo_model_dir
    t0 = time.perf_counter()
    pipe = load_pipeline(demo_model_dir(), device="cpu")
    load_s = time.perf_counter() - t0
    marks = {}
    def callback(step, timestep, latents):  # the time the sampling loop ends = the decode starts
        marks["last_step"] = time.perf_counter()
    def run():
        t = time.perf_counter()
        out = pipe(a.prompt, seed=0, progress=False, callback=callback, **DEMO_GENERATION)
        end = time.perf_counter()
        return end - t, end - marks["last_step"], out.frames.shape
    run()  # warm-up
    runs = [run() for _ in range(a.runs)]
    total = statistics.median(r[0] for r in runs); decode = statistics.median(r[1] for r in runs)
    row = dict(date=datetime.date.today().isoformat(), cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
               torch=torch.__version__, frames=list(runs[0][2]), load_s=round(load_s, 2), generate_s=round(total, 2),
               decode_s=round(decode, 2), runs=[round(r[0], 2) for r in runs])
    print("| threads | video | load (s) | generate (s, median) | of which VAE decode (s) |\n|---|---|---|---|---|")
    print(f"| {row['threads']} | {'x'.join(map(str, row['frames'][:3]))} | {row['load_s']} | {row['generate_s']} | {row['decode_s']} |")
    out = Path(a.out or Path(__file__).parent / "results" / f"demo_cpu_{row['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__": sys.exit(main())
