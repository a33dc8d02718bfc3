#!/usr/bin/env python
"""Speed and memory of the 12B model on one GPU (issue 6): regional compilation + attention kernel, memory modes of a
whole generation, fp8, TeaCache. Random weights at the real V5.1 12B config, bf16, CFG (batch 2), 256 text tokens.

    python bench/bench_speed.py                       # GPU, all sections, about 4 minutes (--budget caps the total)
    python bench/bench_speed.py --sections compile memory
    python bench/bench_speed.py --smoke               # CPU, tiny model, seconds: proves the script runs

Sections, in priority order (each optional, each with a time cap; a section or row that would not fit in the time left
is skipped and says so, and the JSON is rewritten after every section, so a partial run still yields tables):
  compile   s/step of eager (default SDPA and the fastest exact kernel) vs regional compilation, compile time,
            relative error vs eager bf16; diffusers eager in the same run (same tensors)
  memory    a whole generation (N steps + VAE decode, text encoder excluded: embeddings given) through the pipeline for
            each memory mode: peak GPU memory of the denoising phase and of the decode, s/step, decode time, total,
            and the 25-step total extrapolated; plus diffusers' group offloading (block level, stream) of its transformer
  fp8       fp8 storage (ours: per-row scale, upcast; diffusers' layerwise casting: plain cast), fp8 compute
            (torch._scaled_mm rowwise), eager and regionally compiled, and SageAttention (INT8 QK) with bf16 or fp8
            matmuls, compiled: s/step and relative error vs bf16
  teacache  a Flow sampling loop (CFG) of N steps, exact vs TeaCache thresholds: steps computed, time, relative error
            of the final latents
"""
from __future__ import annotations
import argparse, gc, json, os, statistics, sys, tempfile, time, traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import easyanimate from the repo root
import torch
from easyanimate.transformer import V51_12B_CONFIG, empty_model, random_weights_, set_attention_backend
from easyanimate.offload import (MEMORY_MODES, compile_transformer, enable_memory_mode, fastest_attention_backend,
                                 quantize_fp8_, weight_bytes)
from easyanimate.teacache import disable_teacache, enable_teacache, sample_with_transformer

SMOKE_CONFIG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, patch_size=2,
                    num_layers=2, mmdit_layers=2, time_embed_dim=32, text_embed_dim=48, add_norm_text_encoder=True)
SMOKE_VAE = dict(block_out_channels=[16, 16, 32, 32], norm_num_groups=4)
GiB = 2**30


def parse_size(s: str) -> tuple[int, int, int]:
    "'384x672x49' -> (height, width, frames)."
    h, w, f = (int(v) for v in s.lower().split("x"))
    return h, w, f


class Bench:
    "Shared state: device, model config, the CPU copy of the weights, results, the clock."
    def __init__(self, args):
        self.args, self.t_start = args, time.perf_counter()
        self.smoke = args.smoke
        self.device = torch.device("cpu") if args.smoke else torch.device("cuda")
        self.dtype = torch.float32 if args.smoke else torch.bfloat16
        self.config = SMOKE_CONFIG if args.smoke else V51_12B_CONFIG
        self.text_tokens = 8 if args.smoke else args.text_tokens
        self.results = dict(args=vars(args), sections={}, skipped=[], errors={})
        self.cpu_state, self.model, self.eager_out = None, None, None

    # -- clock ---------------------------------------------------------------------------------------------------
    def left(self) -> float: return self.args.budget - (time.perf_counter() - self.t_start)
    def fits(self, section_deadline: float, need: float, what: str) -> bool:
        ok = self.smoke or (min(self.left(), section_deadline - time.perf_counter()) >= need)
        if not ok:
            self.results["skipped"].append(what); print(f"  skipped (time): {what}", flush=True)
        return ok

    # -- device helpers ------------------------------------------------------------------------------------------
    def sync(self):
        if self.device.type == "cuda": torch.cuda.synchronize()
    def reset_peak(self):
        if self.device.type == "cuda": self.sync(); torch.cuda.reset_peak_memory_stats()
    def peak(self): return torch.cuda.max_memory_allocated() / GiB if self.device.type == "cuda" else None
    def free(self):
        gc.collect()
        if self.device.type == "cuda": torch.cuda.empty_cache()

    def timed(self, fn, warmup: int, iters: int):
        "Seconds per call (median of `iters` after `warmup`), all times, last output."
        out = None
        for _ in range(warmup): out = fn()
        times = []
        for _ in range(iters):
            self.sync(); t0 = time.perf_counter(); out = fn(); self.sync(); times.append(time.perf_counter() - t0)
        return (statistics.median(times) if times else None), times, out

    # -- the model -----------------------------------------------------------------------------------------------
    def latent_shape(self, size: str):
        h, w, f = parse_size(size)
        return (f - 1) // 4 + 1, h // 8, w // 8

    def inputs(self, size: str, seed: int = 0):
        F_, h, w = self.latent_shape(size)
        g = torch.Generator(device=self.device).manual_seed(seed)
        return dict(latents=torch.randn(2, self.config["in_channels"], F_, h, w, generator=g, device=self.device, dtype=self.dtype),
                    timestep=torch.tensor([500.0, 500.0], device=self.device),
                    text=torch.randn(2, self.text_tokens, self.config["text_embed_dim"], generator=g, device=self.device,
                                     dtype=self.dtype))

    def gpu_model(self):
        "The transformer on the device: built once with random weights; later rebuilt from the (pinned) CPU copy."
        if self.model is not None: return self.model
        if self.cpu_state is None:
            self.model = random_weights_(empty_model(self.config, self.dtype), self.device, seed=self.args.seed)
        else:
            m = empty_model(self.config, self.dtype)
            m.load_state_dict({k: v.to(self.device, non_blocking=True) for k, v in self.cpu_state.items()}, assign=True)
            self.model = m.eval()
        return self.model

    def drop_gpu_model(self):
        "Keep a pinned CPU copy of the weights (for the offload modes and rebuilding), free the device."
        if self.cpu_state is None:
            src = self.gpu_model()
            pin = self.device.type == "cuda"
            self.cpu_state = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=pin).copy_(v) for k, v in src.state_dict().items()}
        self.model = None; self.free()

    def cpu_model(self, cls=None):
        "A transformer whose parameters *are* the CPU copy (no copy made): ours, or diffusers' with the same tensors."
        if cls is None:
            m = empty_model(self.config, self.dtype)
        else:
            known = set(cls.extract_init_dict(dict(self.config))[0])
            with torch.device("meta"): m = cls(**{k: v for k, v in self.config.items() if k in known})
        m.load_state_dict(self.cpu_state, strict=True, assign=True)
        return m.eval()

    def forward(self, model, inp):
        with torch.inference_mode():
            return model(inp["latents"], inp["timestep"], encoder_hidden_states=inp["text"], return_dict=False)[0]

    def eager_reference(self, inp):
        "Eager bf16 output at the main size (computed once; the error reference of compile and fp8)."
        if self.eager_out is None:
            set_attention_backend("sdpa")
            self.eager_out = self.forward(self.gpu_model(), inp).float()
        return self.eager_out

    def save(self):
        out = self.args.out
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(out) + ".tmp"); tmp.write_text(json.dumps(self.results, indent=2, default=str)); os.replace(tmp, out)


def rel(a, b) -> float: return ((a.float() - b.float()).norm() / b.float().norm()).item()


def uncompile(model):
    for m in model.modules():
        if getattr(m, "_compiled_call_impl", None) is not None: m._compiled_call_impl = None


# ---------------------------------------------------------------------------------------------------------------------
def section_compile(B: Bench, deadline: float):
    a, rows = B.args, []
    res = B.results["sections"]["compile"] = dict(size=a.size, rows=rows)
    inp = B.inputs(a.size)
    model = B.gpu_model()
    # 1. attention kernels alone at the real shape
    F_, h, w = B.latent_shape(a.size)
    tokens = F_ * (h // 2) * (w // 2) + B.text_tokens
    heads, hd = B.config["num_attention_heads"], B.config["attention_head_dim"]
    cands = ("math", "efficient") if B.smoke else ("cudnn", "flash", "efficient")
    best, att = fastest_attention_backend(2, heads, tokens, hd, device=B.device, dtype=B.dtype, candidates=cands)
    res["attention_s_per_layer"], res["best_attention"] = att, best
    print(f"  attention per layer: {att} -> {best}", flush=True)
    ref = B.eager_reference(inp)
    step = lambda m: (lambda: B.forward(m, inp))
    # 2. eager, default SDPA and the fastest kernel
    for backend in dict.fromkeys(("sdpa", best)):
        if not B.fits(deadline, 8, f"compile: eager {backend}"): continue
        set_attention_backend(backend); B.reset_peak()
        med, times, out = B.timed(step(model), 1, a.iters)
        rows.append(dict(variant=f"ours eager ({backend})", s_per_step=med, times=times, peak_gib=B.peak(), rel_err=rel(out, ref)))
        print(f"  {rows[-1]['variant']}: {med:.3f} s/step", flush=True)
    # 3. diffusers eager with the same tensors
    if not a.no_diffusers and B.fits(deadline, 10, "compile: diffusers eager"):
        try:
            from diffusers import EasyAnimateTransformer3DModel as DM
            known = set(DM.extract_init_dict(dict(B.config))[0])
            with torch.device("meta"): dm = DM(**{k: v for k, v in B.config.items() if k in known})
            dm.load_state_dict(model.state_dict(), strict=True, assign=True); dm.eval()
            B.reset_peak()
            med, times, out = B.timed(step(dm), 1, a.iters)
            rows.append(dict(variant="diffusers eager", s_per_step=med, times=times, peak_gib=B.peak(), rel_err=rel(out, ref)))
            if a.diffusers_compile and B.fits(deadline, 60, "compile: diffusers regional compile"):
                t0 = time.perf_counter(); dm.compile_repeated_blocks(fullgraph=True); B.forward(dm, inp); B.sync()
                ct = time.perf_counter() - t0
                med, times, out = B.timed(step(dm), 0, a.iters)
                rows.append(dict(variant="diffusers regional compile", s_per_step=med, times=times, compile_s=ct, rel_err=rel(out, ref)))
            del dm
        except Exception as e: B.results["errors"]["compile: diffusers"] = repr(e)
    # 4. regional compilation with the fastest kernel
    if B.fits(deadline, 45, "compile: regional compile"):
      try:
        set_attention_backend(best)
        t0 = time.perf_counter()
        compile_transformer(model, mode=a.compile_mode, backend=a.compile_backend)
        B.forward(model, inp); B.sync()
        ct = time.perf_counter() - t0
        B.reset_peak()
        med, times, out = B.timed(step(model), 1, a.iters)
        rows.append(dict(variant=f"ours regional compile ({best}{', ' + a.compile_mode if a.compile_mode else ''})",
                         s_per_step=med, times=times, compile_s=ct, peak_gib=B.peak(), rel_err=rel(out, ref)))
        print(f"  {rows[-1]['variant']}: {med:.3f} s/step, compile {ct:.1f} s", flush=True)
      except Exception as e:
        B.results["errors"]["compile: regional"] = repr(e); traceback.print_exc()
      uncompile(model)
    set_attention_backend("sdpa")
    res["noise_floor_note"] = "bf16 noise floor (another exact kernel, 48 blocks): ~1.6e-2 relative (bench/RESULTS.md)"


# ---------------------------------------------------------------------------------------------------------------------
def section_memory(B: Bench, deadline: float):
    "Every memory mode at `--size`, then at each of `--mem-sizes` (the table of which mode fits which GPU)."
    from diffusers import FlowMatchEulerDiscreteScheduler
    from easyanimate.pipeline import EasyAnimatePipeline
    from easyanimate.vae import AutoencoderKLMagvit
    a, rows = B.args, []
    sizes = list(dict.fromkeys([a.size] + (a.mem_sizes or [])))
    res = B.results["sections"]["memory"] = dict(size=", ".join(sizes), steps=a.mem_steps, rows=rows)
    B.drop_gpu_model()
    torch.manual_seed(a.seed)
    vae_cpu = AutoencoderKLMagvit(**(SMOKE_VAE if B.smoke else {})).to(B.dtype).eval()
    vae_state = {k: v.clone() for k, v in vae_cpu.state_dict().items()}
    g = torch.Generator().manual_seed(a.seed)
    pe = torch.randn(1, B.text_tokens, B.config["text_embed_dim"], generator=g).to(B.dtype)
    ne = torch.randn(1, B.text_tokens, B.config["text_embed_dim"], generator=g).to(B.dtype)
    cost = {"none": 15, "group_offload": 25, "model_cpu_offload_and_qfloat8": 30, "model_cpu_offload": 30,
            "sequential_cpu_offload": 40, "diffusers_group_offload": 20}
    order = [m for m in a.modes if m in MEMORY_MODES or m == "diffusers_group_offload"]
    for size in sizes:
        H, W, frames = parse_size(size)
        scale = H * W * frames / (384 * 672 * 49)  # the costs above are for 384x672x49
        for mode in order:
            if not B.fits(deadline, cost.get(mode, 20) * max(1.0, scale), f"memory: {mode} at {size}"): continue
            B.free(); B.reset_peak()
            try:
                if mode == "diffusers_group_offload": row = diffusers_group_offload(B, H, W, frames)
                else: row = pipeline_run(B, mode, vae_state, pe, ne, H, W, frames, EasyAnimatePipeline,
                                         FlowMatchEulerDiscreteScheduler, AutoencoderKLMagvit)
                rows.append({"size": size, **row})
                print(f"  {size} {mode}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
            except Exception as e:
                B.results["errors"][f"memory: {mode} at {size}"] = repr(e); traceback.print_exc()
            B.free()
            B.save()


def pipeline_run(B, mode, vae_state, pe, ne, H, W, frames, Pipe, Sched, VAE):
    a = B.args
    steps = 1 if mode == "sequential_cpu_offload" else a.mem_steps
    t_setup = time.perf_counter()
    transformer = B.cpu_model()
    with torch.device("meta"): vae = VAE(**(SMOKE_VAE if B.smoke else {}))
    vae.load_state_dict(vae_state, assign=True); vae.eval()
    pipe = Pipe(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer, scheduler=Sched(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    enable_memory_mode(pipe, mode, B.device)
    B.sync(); setup_s = time.perf_counter() - t_setup
    B.reset_peak()
    marks, phase = [], {}
    def cb(i, t, latents):
        B.sync(); marks.append(time.perf_counter())
        if i == steps - 1:
            phase["denoise_peak"] = B.peak()
            if B.device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, num_frames=frames, height=H, width=W,
               num_inference_steps=steps, guidance_scale=6.0, seed=0, callback=cb, progress=False)
    B.sync(); t1 = time.perf_counter()
    step_times = [marks[0] - t0] + [b - a_ for a_, b in zip(marks, marks[1:])]
    steady = statistics.median(step_times[1:]) if len(step_times) > 1 else step_times[0]
    decode_s = t1 - marks[-1]
    row = dict(mode=mode, steps=steps, setup_s=setup_s, first_step_s=step_times[0], s_per_step=steady, decode_s=decode_s,
               total_s=t1 - t0, est_25_steps_s=(t1 - t0) + (25 - steps) * steady,
               denoise_peak_gib=phase.get("denoise_peak"), decode_peak_gib=B.peak(),
               vae_tiling=f"{vae.tile_sample_min_height}x{vae.tile_sample_min_width}" if getattr(vae, "use_tiling", False) else None,
               finite=bool(torch.isfinite(torch.as_tensor(out.videos)).all()),
               transformer_weights_gib=weight_bytes(transformer) / GiB)
    if row["denoise_peak_gib"] is not None: row["peak_gib"] = max(row["denoise_peak_gib"], row["decode_peak_gib"])
    try: pipe.remove_all_hooks()
    except Exception: pass
    del pipe, transformer, vae, out
    return row


def diffusers_group_offload(B, H, W, frames):
    "diffusers' transformer (same tensors) with its group offloading, block level, CUDA stream: denoising steps only."
    from diffusers import EasyAnimateTransformer3DModel as DM
    from diffusers.hooks import apply_group_offloading
    t_setup = time.perf_counter()
    m = B.cpu_model(DM)
    if B.device.type == "cuda":
        apply_group_offloading(m, onload_device=B.device, offload_type="block_level", num_blocks_per_group=1,
                               use_stream=True, non_blocking=True)
    setup_s = time.perf_counter() - t_setup
    inp = B.inputs(f"{H}x{W}x{frames}")
    B.reset_peak()
    med, times, out = B.timed(lambda: B.forward(m, inp), 1, max(1, B.args.mem_steps - 1))
    row = dict(mode="diffusers_group_offload (transformer only)", steps=len(times) + 1, setup_s=setup_s,
               s_per_step=med, denoise_peak_gib=B.peak(), finite=bool(torch.isfinite(out).all()))
    del m, out
    return row


# ---------------------------------------------------------------------------------------------------------------------
def section_fp8(B: Bench, deadline: float):
    a, rows = B.args, []
    res = B.results["sections"]["fp8"] = dict(size=a.size, rows=rows)
    inp = B.inputs(a.size)
    ref = B.eager_reference(inp)
    exact = B.results["sections"].get("compile", {}).get("best_attention") or ("math" if B.smoke else "cudnn")
    # key: (row name, weight kind: fp8 storage / compute or None for bf16, regional compile, attention backend)
    variants = {"upcast": ("ours fp8 storage, upcast (qfloat8 mode)", "upcast", False, exact),
                "layerwise": ("diffusers layerwise casting (plain e4m3 cast)", "layerwise", False, exact),
                "scaled_mm": ("ours fp8 compute (scaled_mm rowwise), eager", "scaled_mm", False, exact),
                "scaled_mm_compiled": (f"ours fp8 compute (scaled_mm rowwise), regional compile, {exact} attention",
                                       "scaled_mm", True, exact),
                "sage_compiled": ("ours bf16 matmuls, SageAttention, regional compile", None, True, "sage"),
                "scaled_mm_sage_compiled": ("ours fp8 compute (scaled_mm rowwise), SageAttention, regional compile",
                                            "scaled_mm", True, "sage")}
    for key in a.fp8_variants:
        name, kind, comp, attn = variants[key]
        if not B.fits(deadline, 50 if comp else 10, f"fp8: {name}"): continue
        try:
            if B.cpu_state is None: B.drop_gpu_model()
            B.model = None; B.free()
            model = B.gpu_model()
            if kind == "layerwise":
                model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=B.dtype)
            elif kind is not None: quantize_fp8_(model, kind)
            row = dict(variant=name, weights_gib=weight_bytes(model) / GiB)
            set_attention_backend(attn)
            if comp:
                t0 = time.perf_counter()
                compile_transformer(model, mode=a.compile_mode, backend=a.compile_backend)
                B.forward(model, inp); B.sync(); row["compile_s"] = time.perf_counter() - t0
            B.reset_peak()
            med, times, out = B.timed(lambda: B.forward(model, inp), 1, a.iters if kind == "scaled_mm" else 2)
            row.update(s_per_step=med, times=times, peak_gib=B.peak(), rel_err=rel(out, ref))
            rows.append(row)
            print(f"  {name}: {med:.3f} s/step, rel err {row['rel_err']:.2e}", flush=True)
            del out
        except Exception as e:
            B.results["errors"][f"fp8: {name}"] = repr(e); traceback.print_exc()
        set_attention_backend("sdpa")
        B.model = None; B.free()


# ---------------------------------------------------------------------------------------------------------------------
def section_teacache(B: Bench, deadline: float):
    a, rows = B.args, []
    res = B.results["sections"]["teacache"] = dict(size=a.tc_size, steps=a.tc_steps, rows=rows)
    model = B.gpu_model()
    set_attention_backend("sdpa")
    F_, h, w = B.latent_shape(a.tc_size)
    g = torch.Generator(device=B.device).manual_seed(a.seed)
    lat = torch.randn(1, B.config["in_channels"], F_, h, w, generator=g, device=B.device, dtype=B.dtype)
    text = torch.randn(2, B.text_tokens, B.config["text_embed_dim"], generator=g, device=B.device, dtype=B.dtype)
    exact = None
    for thr in [0.0, *a.tc_thresholds]:
        if not B.fits(deadline, 15, f"teacache: threshold {thr}"): continue
        disable_teacache(model)
        cache = enable_teacache(model, thr, "12b") if thr > 0 else None
        B.sync(); t0 = time.perf_counter()
        with torch.inference_mode(): out = sample_with_transformer(model, lat, text, a.tc_steps)
        B.sync(); dt = time.perf_counter() - t0
        if thr == 0: exact, exact_s = out.float(), dt
        run = cache.history[-1] if cache is not None else [True] * a.tc_steps
        rows.append(dict(threshold=thr, computed=sum(run), steps=len(run), pattern="".join("C" if c else "." for c in run),
                         seconds=dt, speedup=(exact_s / dt) if exact is not None else None,
                         rel_err=rel(out, exact) if exact is not None else None))
        print(f"  threshold {thr}: {sum(run)}/{len(run)} computed, {dt:.2f} s, rel err {rows[-1]['rel_err']}", flush=True)
    disable_teacache(model)


SECTIONS = dict(compile=section_compile, memory=section_memory, fp8=section_fp8, teacache=section_teacache)


# ---------------------------------------------------------------------------------------------------------------------
GPU_ROWS_GB = (8, 12, 16, 24, 40, 80)
MODE_MARKS = {"none": "✅", "model_cpu_offload": "✅", "model_cpu_offload_and_qfloat8": "🧡", "group_offload": "🟦",
              "sequential_cpu_offload": "⭕️"}
HEADROOM_GIB = 1.0  # CUDA context, cuBLAS workspace and fragmentation above the allocator's peak


def gpu_table(rows: list) -> str:
    """The seed README's table: for each GPU size and video size, the fastest measured mode whose whole-generation peak
    (plus `HEADROOM_GIB`) fits the card (a card of N GB has N * 0.93 GiB), with its estimated 25-step time."""
    sizes = list(dict.fromkeys(x["size"] for x in rows if "size" in x and x.get("peak_gib") is not None))
    if not sizes: return ""
    out = ["\nWhich mode fits (✅ resident or model offload, 🧡 model offload + fp8 weights, 🟦 group offload, ⭕️ sequential "
           f"offload; fastest that fits; peak + {HEADROOM_GIB} GiB <= 0.93 x the card's GB), est. 25 steps + decode:",
           "| GPU memory | " + " | ".join(sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for gb in GPU_ROWS_GB:
        cells = []
        for size in sizes:
            fit = [x for x in rows if x.get("size") == size and x.get("peak_gib") is not None
                   and x["peak_gib"] + HEADROOM_GIB <= 0.93 * gb and x["mode"] in MODE_MARKS]
            best = min(fit, key=lambda x: x["est_25_steps_s"], default=None)
            cells.append("❌" if best is None else f"{MODE_MARKS[best['mode']]} {best['est_25_steps_s']:.0f} s")
        out.append(f"| {gb} GB | " + " | ".join(cells) + " |")
    return "\n".join(out)


def tables(r: dict) -> str:
    f = lambda v, p=3: "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
    e = lambda v: "-" if v is None else f"{v:.1e}"
    out, S = [], r["sections"]
    if "compile" in S:
        c = S["compile"]
        out += [f"\n### Transformer step at {c['size']} (CFG batch 2); attention per layer: "
                + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in c.get("attention_s_per_layer", {}).items()),
                "| variant | s/step | compile (s) | peak (GiB) | rel. err. vs eager bf16 |", "|---|---|---|---|---|"]
        out += [f"| {x['variant']} | {f(x['s_per_step'])} | {f(x.get('compile_s'), 1)} | {f(x.get('peak_gib'), 1)} | {e(x.get('rel_err'))} |"
                for x in c["rows"]]
    if "memory" in S:
        m = S["memory"]
        out += [f"\n### Whole generation at {m['size']} ({m['steps']} steps + VAE decode; text encoder excluded)",
                "| size, mode | peak (GiB) | denoise peak | decode peak | s/step | first step (s) | decode (s) | VAE tiles | setup (s) | est. 25 steps (s) |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {x.get('size', m['size'])} {x['mode']} | {f(x.get('peak_gib'), 2)} | {f(x.get('denoise_peak_gib'), 2)} | {f(x.get('decode_peak_gib'), 2)} | "
                f"{f(x.get('s_per_step'))} | {f(x.get('first_step_s'), 2)} | {f(x.get('decode_s'), 2)} | {x.get('vae_tiling') or '-'} | {f(x.get('setup_s'), 1)} | "
                f"{f(x.get('est_25_steps_s'), 1)} |" for x in m["rows"]]
        out.append(gpu_table(m["rows"]))
    if "fp8" in S:
        out += [f"\n### fp8 at {S['fp8']['size']}", "| variant | weights (GiB) | s/step | compile (s) | peak (GiB) | rel. err. vs bf16 |",
                "|---|---|---|---|---|---|"]
        out += [f"| {x['variant']} | {f(x.get('weights_gib'), 2)} | {f(x.get('s_per_step'))} | {f(x.get('compile_s'), 1)} | "
                f"{f(x.get('peak_gib'), 1)} | {e(x.get('rel_err'))} |" for x in S["fp8"]["rows"]]
    if "teacache" in S:
        t = S["teacache"]
        out += [f"\n### TeaCache (12B coefficients), {t['steps']} Flow steps at {t['size']}, random weights",
                "| threshold | steps computed | time (s) | speed-up | rel. err. of final latents | pattern |", "|---|---|---|---|---|---|"]
        out += [f"| {x['threshold']} | {x['computed']}/{x['steps']} | {f(x['seconds'], 2)} | {f(x.get('speedup'), 2)} | "
                f"{e(x.get('rel_err'))} | `{x['pattern']}` |" for x in t["rows"]]
    if r["skipped"]: out.append("\nskipped (time): " + "; ".join(r["skipped"]))
    if r["errors"]: out.append("errors: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items()))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny float32 model on CPU, seconds")
    ap.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--budget", type=float, default=235, help="seconds for the whole run (sections/rows that would not fit are skipped)")
    ap.add_argument("--cap", nargs="*", default=[], help="per-section caps in seconds, e.g. compile=80 memory=90")
    ap.add_argument("--size", default="384x672x49", help="HxWxF of the compile, memory and fp8 sections")
    ap.add_argument("--iters", type=int, default=3, help="timed steps per variant (after 1 warm-up)")
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune-no-cudagraphs)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--diffusers-compile", action="store_true", help="also time diffusers' regional compilation")
    ap.add_argument("--modes", nargs="*", default=["none", "group_offload", "diffusers_group_offload",
                    "model_cpu_offload_and_qfloat8", "model_cpu_offload", "sequential_cpu_offload"])
    ap.add_argument("--fp8-variants", nargs="*", default=["upcast", "layerwise", "scaled_mm", "scaled_mm_compiled",
                    "sage_compiled", "scaled_mm_sage_compiled"], help="rows of the fp8 section (sage: needs sageattention)")
    ap.add_argument("--mem-sizes", nargs="*", default=[], help="more HxWxF sizes for the memory section (the GPU table), "
                    "e.g. 384x672x25 576x1008x25 576x1008x49 768x1344x25 768x1344x49")
    ap.add_argument("--mem-steps", type=int, default=2, help="denoising steps per memory-mode run (sequential: 1)")
    ap.add_argument("--tc-size", default="384x672x13")
    ap.add_argument("--tc-steps", type=int, default=25)
    ap.add_argument("--tc-thresholds", type=float, nargs="*", default=[0.08, 0.15])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/bench_speed.json, else bench/results/bench_speed.json;"
                    " --smoke: a temporary file)")
    args = ap.parse_args(argv)
    if args.out is None:
        if os.environ.get("OUT"): args.out = os.path.join(os.environ["OUT"], "bench_speed.json")
        elif args.smoke: args.out = os.path.join(tempfile.gettempdir(), "bench_speed_smoke.json")
        else: args.out = str(Path(__file__).parent / "results" / "bench_speed.json")
    if args.smoke:
        args.iters, args.tc_steps, args.mem_steps, args.compile_backend = 2, 8, 2, "eager"
        args.size, args.tc_size = "32x48x5", "32x48x9"  # no inductor codegen on CPU
    elif not torch.cuda.is_available(): sys.exit("No CUDA device: run with --smoke on a CPU.")
    default_caps = dict(compile=85, memory=100, fp8=70, teacache=40)
    caps = {**default_caps, **{k: float(v) for k, v in (c.split("=") for c in args.cap)}}
    if not args.smoke: torch.backends.cuda.matmul.allow_tf32 = True

    B = Bench(args)
    import diffusers
    B.results["env"] = dict(device=torch.cuda.get_device_name() if B.device.type == "cuda" else "cpu", torch=torch.__version__,
                            diffusers=diffusers.__version__, cudnn=torch.backends.cudnn.version(), dtype=str(B.dtype),
                            config="smoke" if args.smoke else "V5.1 12B", date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    t0 = time.perf_counter(); B.gpu_model(); B.sync()
    B.results["env"].update(build_s=time.perf_counter() - t0, params=sum(p.numel() for p in B.model.parameters()))
    for name in args.sections:
        print(f"== {name} ({B.left():.0f} s left)", flush=True)
        t_sec = time.perf_counter()
        try: SECTIONS[name](B, t_sec + caps[name])
        except Exception as e:
            B.results["errors"][name] = repr(e); traceback.print_exc()
        B.results.setdefault("section_seconds", {})[name] = time.perf_counter() - t_sec
        B.save()
    B.results["total_s"] = time.perf_counter() - B.t_start
    B.save()
    print(f"\n{B.results['env']}\ntotal {B.results['total_s']:.1f} s, JSON: {args.out}")
    print(tables(B.results))
    return B.results


if __name__ == "__main__":
    main()
