#!/usr/bin/env python
"""Training step time and peak GPU memory of the V5.1 12B transformer: LoRA (rank 64, attention + FFN linears of both
streams, 340 M trainable) and full SFT, ours vs diffusers' transformer + peft, with our memory / speed levers as rows.

    python bench/bench_train.py                 # GPU (H100/H200): 12B, batch 1, 49 frames at 384x672 and 512x512
    python bench/bench_train.py --smoke         # CPU, tiny model: proves the script runs (seconds)
    python bench/bench_train.py --compile       # also a row with torch.compile'd blocks (adds compile time)

Setup (the issue's): random bf16 weights built on the meta device and materialised on the GPU
(`easyanimate.transformer.empty_model` / `random_weights_`), gradient checkpointing, batch 1, cached latents and text
embeddings (random tensors: 16 x 13 x 48 x 84 / 16 x 13 x 64 x 64 latents, 256 text tokens of width 3584), one
training step = forward under bf16 autocast + flow-matching MSE + backward + AdamW step (LoRA weights in float32).
diffusers' model shares our base tensors (`load_state_dict(assign=True)`), so both fit at once and compute the same
function. Rows:

- `diffusers+peft LoRA`: diffusers' EasyAnimateTransformer3DModel, peft LoRA r64 on the same linears (the anchor).
- `ours LoRA`: our transformer, `easyanimate.lora.add_lora` (peft) r64.
- `ours LoRA, fp8 base`: the frozen base linears of the blocks stored as float8 e4m3 with a per-tensor scale and
  upcast to bf16 per layer in forward (the LoRA weights stay float32) -- halves the weight memory.
- `ours LoRA, fp8 base, compiled blocks` (`--compile`): `torch.compile` on each block.
- `ours SFT`: all weights trained. AdamW with float32 states needs 16 bytes/param (>190 GB for 12B), so with
  bitsandbytes importable: 8-bit AdamW and bf16 weights at the full 48 layers; otherwise the same recipe as the
  trainer (float32 master weights, AdamW, bf16 autocast) at a reduced depth (`--sft-layers`, default 12 of 48) --
  the table says which.

Each row runs `--warmup` steps then `--steps` timed steps (median reported); peak = torch.cuda.max_memory_allocated
over the timed steps. Prints a markdown table; writes bench/results/train_<date>.json (or --out).
"""
from __future__ import annotations
import argparse, datetime, gc, json, os, statistics, sys, time, traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import easyanimate from the repo root
import torch
import torch.nn.functional as F
from torch import nn
from easyanimate.transformer import V51_12B_CONFIG, empty_model, random_weights_
from easyanimate.lora import LORA_TARGETS, add_lora

SIZES = {"384x672x49": (13, 48, 84), "512x512x49": (13, 64, 64)}
SMOKE_CONFIG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, patch_size=2,
                    num_layers=2, mmdit_layers=2, time_embed_dim=32, text_embed_dim=48, add_norm_text_encoder=True)
SMOKE_SIZES = {"32x48x9": (3, 4, 6), "32x32x9": (3, 4, 4)}


class FP8Linear(nn.Linear):
    "A frozen Linear stored as float8 e4m3 with a per-tensor scale; upcast to the compute dtype in forward."
    def __init__(self, lin: nn.Linear, compute_dtype=torch.bfloat16):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.compute_dtype = lin.in_features, lin.out_features, compute_dtype
        w = lin.weight.detach()
        scale = (w.abs().amax().float() / 448.0).clamp(min=1e-12)
        self.weight = nn.Parameter((w.float() / scale).to(torch.float8_e4m3fn), requires_grad=False)
        self.register_buffer("scale", scale.to(compute_dtype))
        self.bias = lin.bias
        if self.bias is not None: self.bias.requires_grad_(False)

    def forward(self, x):
        w = self.weight.to(self.compute_dtype) * self.scale  # a temporary bf16 copy, freed after the layer (or recomputed)
        return F.linear(x.to(self.compute_dtype), w, None if self.bias is None else self.bias.to(self.compute_dtype))


def fp8_base_weights_(model: nn.Module, compute_dtype=torch.bfloat16) -> int:
    "Replace every frozen Linear inside the blocks (LoRA base layers included, LoRA A/B excluded) by `FP8Linear`."
    n = 0
    for name, m in list(model.named_modules()):
        if "transformer_blocks" not in name or "lora_" in name: continue
        for cname, child in list(m.named_children()):
            if type(child) is nn.Linear and not child.weight.requires_grad:
                setattr(m, cname, FP8Linear(child, compute_dtype)); n += 1
    return n


def diffusers_twin(ours: nn.Module, config: dict):
    "diffusers' model built on meta and given our very base tensors (no extra memory)."
    from diffusers import EasyAnimateTransformer3DModel as DiffusersModel
    known = set(DiffusersModel.extract_init_dict(dict(config))[0])
    with torch.device("meta"): ref = DiffusersModel(**{k: v for k, v in config.items() if k in known})
    ref.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return ref


def peft_lora(model: nn.Module, rank: int) -> list:
    "peft LoRA (rank = alpha) on the attention and FFN linears of both streams; LoRA weights in float32."
    from peft import LoraConfig, inject_adapter_in_model
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS)), model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params: p.data = p.data.float(); p.requires_grad_(True)
    return params


def make_inputs(config, size, text_tokens, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    f, h, w = size
    x0 = torch.randn(1, config["in_channels"], f, h, w, generator=g, device=device, dtype=dtype)
    noise = torch.randn(x0.shape, generator=g, device=device, dtype=dtype)
    text = torch.randn(1, text_tokens, config["text_embed_dim"], generator=g, device=device, dtype=dtype)
    sigma = torch.tensor([0.6], device=device)
    return dict(x_t=((1 - sigma) * x0.float() + sigma * noise.float()).to(dtype), t=sigma * 1000, text=text,
                target=(noise.float() - x0.float()))


def measure(model, params, inputs, device, warmup, steps, optimizer="adamw", autocast=True):
    "Median seconds per training step and peak GiB over the timed steps."
    if optimizer == "adamw8bit":
        import bitsandbytes as bnb
        opt = bnb.optim.AdamW8bit(params, lr=1e-5, weight_decay=5e-2, eps=1e-10)
    else: opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=5e-2, eps=1e-10)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            pred = model(inputs["x_t"], inputs["t"], encoder_hidden_states=inputs["text"], return_dict=False)[0]
        loss = F.mse_loss(pred.float(), inputs["target"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.05)
        opt.step(); opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(warmup): step()
    if device.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter(); loss = step()
        if device.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    finite = bool(torch.isfinite(loss))
    del opt
    return dict(step_s=statistics.median(times), times_s=times, peak_gib=peak, finite=finite)


def free(device):
    gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--sizes", nargs="*", help="subset of the sizes")
    ap.add_argument("--compile", action="store_true", help="add the compiled-blocks row")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--no-sft", action="store_true")
    ap.add_argument("--sft-layers", type=int, default=12, help="depth of the SFT row when bitsandbytes is missing")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/train_<date>.json)")
    args = ap.parse_args(argv)
    if args.smoke:
        device, config, sizes = torch.device("cpu"), SMOKE_CONFIG, SMOKE_SIZES
        args.text_tokens = min(args.text_tokens, 16)
    else:
        if not torch.cuda.is_available(): sys.exit("No CUDA device: run with --smoke on a CPU.")
        device, config, sizes = torch.device("cuda"), dict(V51_12B_CONFIG), SIZES
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.sizes: sizes = {k: v for k, v in sizes.items() if k in args.sizes}
    dtype = torch.bfloat16
    rows, t_start = [], time.perf_counter()

    def run(name, model, params, extra=None, **kw):
        for size, shape in sizes.items():
            row = dict(row=name, size=size, trainable=sum(p.numel() for p in params), **(extra or {}))
            try:
                inputs = make_inputs(config, shape, args.text_tokens, device, dtype)
                row.update(measure(model, params, inputs, device, args.warmup, args.steps, **kw))
            except Exception as e:  # an OOM or an unsupported lever: record it, keep going
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                traceback.print_exc()
            finally:
                inputs = None; free(device)
                for p in params: p.grad = None
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)

    # 1. Base weights once, bf16, straight on the device
    t0 = time.perf_counter()
    ours = random_weights_(empty_model(config, dtype), device, seed=0)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in ours.parameters())
    ours.enable_gradient_checkpointing()
    # 2. diffusers + peft (the anchor), sharing our base tensors
    why_not_diffusers = None
    if not args.no_diffusers:
        try:
            ref = diffusers_twin(ours, dict(ours.config)); ref.enable_gradient_checkpointing()
            run("diffusers+peft LoRA", ref, peft_lora(ref, args.rank))
            del ref
        except Exception as e:
            why_not_diffusers = f"{type(e).__name__}: {e}"; traceback.print_exc()
        free(device)
    # 3. ours + LoRA
    params = add_lora(ours, rank=args.rank)
    params = [ours.get_parameter(n) for n in params]
    for p in params: p.data = p.data.float()
    run("ours LoRA", ours, params)
    # 4. ours + LoRA, fp8-stored frozen base linears
    n_fp8 = fp8_base_weights_(ours)
    free(device)
    weights_fp8_gib = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None
    run("ours LoRA, fp8 base", ours, params, extra=dict(fp8_linears=n_fp8))
    # 5. compiled blocks (optional: compile time is not in the step time but adds to the run)
    if args.compile:
        try:
            for b in ours.transformer_blocks: b.compile()
            run("ours LoRA, fp8 base, compiled blocks", ours, params)
        except Exception as e: rows.append(dict(row="ours LoRA, fp8 base, compiled blocks", error=str(e)[:200]))
    del ours, params; free(device)
    # 6. Full SFT
    if not args.no_sft:
        try:
            import bitsandbytes  # noqa: F401
            have_bnb = device.type == "cuda"
        except ImportError: have_bnb = False
        if have_bnb:
            cfg, how = dict(config), "bf16 weights, 8-bit AdamW (bitsandbytes), all layers"
            m = random_weights_(empty_model(cfg, dtype), device, seed=0)
            kw = dict(optimizer="adamw8bit")
        else:
            layers = min(args.sft_layers, config["num_layers"])
            cfg = dict(config, num_layers=layers, mmdit_layers=min(config["mmdit_layers"], layers))
            how = (f"{layers} of {config['num_layers']} layers (no bitsandbytes: AdamW float32 states for 12B need >190 GB); "
                   "float32 master weights + AdamW + bf16 autocast, as the trainer")
            m = random_weights_(empty_model(cfg, torch.float32), device, seed=0)
            kw = {}
        m.enable_gradient_checkpointing(); m.requires_grad_(True)
        run("ours SFT", m, list(m.parameters()), extra=dict(sft=how, sft_params=sum(p.numel() for p in m.parameters())), **kw)
        del m; free(device)

    info = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                config="smoke" if args.smoke else "V5.1 12B", params=n_params, build_s=build_s, rank=args.rank,
                lora_targets=LORA_TARGETS, text_tokens=args.text_tokens, batch=1, gradient_checkpointing=True,
                warmup=args.warmup, steps=args.steps, weights_fp8_gib=weights_fp8_gib,
                diffusers=why_not_diffusers or "same base tensors (shared), peft LoRA", total_s=time.perf_counter() - t_start,
                results=rows)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / (
        f"train_{datetime.date.today().isoformat()}{'_smoke' if args.smoke else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp"); tmp.write_text(json.dumps(info, indent=2)); os.replace(tmp, out)

    print(f"\n{info['config']} transformer ({n_params / 1e9:.2f} B params), {info['device']}, torch {torch.__version__}; "
          f"batch 1, {args.text_tokens} text tokens, gradient checkpointing, bf16 autocast; median of {args.steps} steps "
          f"after {args.warmup} warm-up; LoRA rank {args.rank} on {', '.join(LORA_TARGETS)}")
    print("\n| row | size | trainable (M) | step (s) | peak (GiB) | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        note = r.get("error") or r.get("sft") or ""
        step = f"{r['step_s']:.3f}" if "step_s" in r else "-"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        print(f"| {r['row']} | {r.get('size', '-')} | {r.get('trainable', 0) / 1e6:.1f} | {step} | {peak} | {note} |")
    print(f"\nwrote {out} ({info['total_s']:.0f} s)")
    return info


if __name__ == "__main__":
    main()
