#!/usr/bin/env python
"""Host-RAM peak and time to load the 12B transformer from safetensors (issue 6: users with 32 GB of RAM must be able to
load it; target <= 30 GiB). Random weights at the real V5.1 12B config, bf16, written once in the diffusers layout
(10 GB shards, as `save_pretrained` writes them), then loaded by this project's `from_pretrained` and by diffusers', each
in a fresh process, onto the CPU (what the offload memory modes keep) and onto the GPU (memory mode `none`).

    python bench/bench_load.py                  # GPU machine: ~22 GiB written to --dir, then 4 loads
    python bench/bench_load.py --layers 16      # a machine with too little RAM for 12B: 16 of the 48 blocks
    python bench/bench_load.py --smoke          # CPU, tiny config, seconds: proves the script runs

Each load process then reads every weight once (a loader may hand back tensors that still map the file, read on first
use), and samples its own /proc/self/status every 10 ms throughout: peak RSS (VmHWM), and the peak of its anonymous part
(RssAnon: memory the process owns; the rest of RSS is file pages mapped from the checkpoint, which the kernel can drop
under pressure, so RssAnon is what a machine must really have free). The checkpoint was just written, so it is read from
the page cache: times are warm-cache times, not disk speed.
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, threading, time
from pathlib import Path

from bench_speed import GiB, SMOKE_CONFIG  # the same tiny config as the speed benchmark's --smoke (it puts the repo on sys.path)


def status_kib(field: str) -> int:
    "A field of /proc/self/status in KiB (0 where the kernel does not report it)."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"): return int(line.split()[1])
    return 0


class PeakSampler:
    "Samples RssAnon and VmRSS of this process every `interval` seconds in a thread; the peaks are kept."
    def __init__(self, interval: float = 0.01): self.interval, self.anon, self.rss, self._stop = interval, 0, 0, threading.Event()
    def _sample(self): self.anon, self.rss = max(self.anon, status_kib("RssAnon")), max(self.rss, status_kib("VmRSS"))
    def _run(self):
        while not self._stop.is_set(): self._sample(); time.sleep(self.interval)
    def __enter__(self): self._t = threading.Thread(target=self._run, daemon=True); self._t.start(); return self
    def __exit__(self, *exc): self._stop.set(); self._t.join(); self._sample()


def write_checkpoint(folder: Path, smoke: bool, layers: int | None = None):
    import torch
    from easyanimate.transformer import V51_12B_CONFIG, empty_model, random_weights_
    config = SMOKE_CONFIG if smoke else {**V51_12B_CONFIG, **(dict(num_layers=layers, mmdit_layers=layers) if layers else {})}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random numbers for 11.8 B parameters are quick on a GPU
    model = random_weights_(empty_model(config), device=device, dtype=torch.bfloat16)
    t0 = time.time(); model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    files = sorted(folder.glob("*.safetensors"))
    return dict(parameters=params, files=len(files), bytes=sum(f.stat().st_size for f in files), write_s=round(time.time() - t0, 1))


def load(folder: Path, loader: str, target: str) -> dict:
    "One load in this (fresh) process: time, host peaks and, on a GPU, the GPU memory it ends with."
    import torch
    if loader == "ours": from easyanimate.transformer import EasyAnimateTransformer3DModel
    else: from diffusers import EasyAnimateTransformer3DModel
    if target != "cpu": torch.zeros(1, device=target)  # CUDA context outside the timed load
    base = dict(anon=status_kib("RssAnon"), rss=status_kib("VmRSS"))  # torch and the libraries, before any weight
    with PeakSampler() as s:
        t0 = time.time()
        if loader == "ours":
            model = EasyAnimateTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16, device=target)
        else:
            kw = {} if target == "cpu" else dict(device_map=target)
            model = EasyAnimateTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16, **kw)
        if target != "cpu": torch.cuda.synchronize()
        seconds = time.time() - t0
        # read every weight once: a loader may return tensors that still map the file (diffusers does), whose pages are
        # read on first use; the peaks then include what use costs
        with torch.no_grad(): checksum = sum(float(p.sum()) for p in model.parameters())
        if target != "cpu": torch.cuda.synchronize()
        touch_seconds = time.time() - t0 - seconds
    dev = {p.device.type for p in model.parameters()}
    assert dev == {torch.device(target).type}, f"{loader} left parameters on {dev}, not {target}"
    return dict(loader=loader, target=target, seconds=round(seconds, 1), touch_seconds=round(touch_seconds, 1), checksum=checksum,
                peak_rss_gib=round(s.rss / 2**20, 2), peak_anon_gib=round(s.anon / 2**20, 2),
                vmhwm_gib=round(status_kib("VmHWM") / 2**20, 2), before_anon_gib=round(base["anon"] / 2**20, 2),
                gpu_gib=round(torch.cuda.max_memory_allocated() / GiB, 2) if target != "cpu" else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny config on CPU")
    ap.add_argument("--layers", type=int, default=None, help="the 12B config with this many blocks (of 48): a machine with too little RAM for all")
    ap.add_argument("--dir", default=None, help="folder for the checkpoint (default: the system's temporary folder); it is removed after")
    ap.add_argument("--loaders", nargs="*", default=["ours", "diffusers"], choices=["ours", "diffusers"])
    ap.add_argument("--targets", nargs="*", default=None, help="default: cpu, and cuda where there is one")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/bench_load.json, else bench/results/bench_load.json)")
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)  # internal: "load LOADER TARGET" in a child process
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.role:  # a child: one load, its result as the last line of stdout
        loader, target = a.role.split(":")
        print(json.dumps(load(Path(a.folder), loader, target))); return 0

    import torch, diffusers, transformers
    targets = a.targets or (["cpu", "cuda"] if torch.cuda.is_available() and not a.smoke else ["cpu"])
    if a.dir: Path(a.dir).mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="bench-load-", dir=a.dir)
    folder = Path(tmp.name) / "transformer"
    res = dict(date=time.strftime("%Y-%m-%d"), torch=torch.__version__, diffusers=diffusers.__version__,
               transformers=transformers.__version__, smoke=a.smoke, layers=a.layers or (None if a.smoke else 48), host_ram_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
               device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", loads=[])
    out = Path(a.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results") / "bench_load.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    save = lambda: out.write_text(json.dumps(res, indent=1))  # after every row: a run cut off by a time limit keeps what it measured
    res["checkpoint"] = write_checkpoint(folder, a.smoke, a.layers); print(res["checkpoint"], flush=True); save()
    for loader in a.loaders:
        for target in targets:
            p = subprocess.run([sys.executable, __file__, "--role", f"{loader}:{target}", "--folder", str(folder)],
                               capture_output=True, text=True)
            if p.returncode: row = dict(loader=loader, target=target, error=(p.stderr.strip().splitlines() or ["?"])[-1][:300])
            else: row = json.loads(p.stdout.strip().splitlines()[-1])
            res["loads"].append(row); print(row, flush=True); save()
    print(table(res))
    tmp.cleanup()
    return 0


def table(r: dict) -> str:
    c = r["checkpoint"]
    head = (f"{c['parameters'] / 1e9:.2f} B parameters ({c['parameters'] * 2 / GiB:.2f} GiB), bf16, {c['files']} safetensors files, {c['bytes'] / GiB:.1f} GiB "
            f"(written in {c['write_s']} s)" + (f", {r['layers']} of the 48 blocks" if r.get("layers") not in (None, 48) else "") + f"; {r['device']}, host RAM {r['host_ram_gib']} GiB; torch {r['torch']}, diffusers {r['diffusers']}\n\n")
    rows = ["| loader | target | load (s) | first read of every weight (s) | peak RSS (GiB) | peak anonymous (GiB) | anonymous before loading (GiB) | GPU after (GiB) |",
            "|---|---|---|---|---|---|---|---|"]
    for x in r["loads"]:
        rows.append(f"| {x['loader']} | {x['target']} | " + (f"error: {x['error']} | | | | | |" if "error" in x else
                    f"{x['seconds']} | {x['touch_seconds']} | {x['peak_rss_gib']} | {x['peak_anon_gib']} | {x['before_anon_gib']} | {x['gpu_gib'] if x['gpu_gib'] is not None else '-'} |"))
    return head + "\n".join(rows)


if __name__ == "__main__": sys.exit(main())
