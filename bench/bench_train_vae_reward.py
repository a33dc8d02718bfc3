#!/usr/bin/env python
"""One VAE training step and one reward-backpropagation step on a GPU, with peak memory (issue 8).

    python bench/bench_train_vae_reward.py            # GPU: real V5.1 VAE size; 12B transformer; ~2 minutes
    python bench/bench_train_vae_reward.py --smoke    # CPU, tiny models: proves the script runs (seconds)

Rows (random weights, bf16 autocast, median of --steps after --warmup):
- `VAE step, L1+KL`: the V5.1 VAE config (244 M params), 17 frames at 256x256, batch 1, encode + posterior sample + decode,
  L1 + KL, backward, AdamW (float32 master weights), gradient checkpointing on.
- `VAE step, + discriminator`: the same plus the 3D patch discriminator's generator loss with the adaptive weight and
  the discriminator's own step (the phase after `disc_start`).
- `reward step`: the 12B transformer with a rank-32 LoRA, CFG, `--reward-steps` sampling steps of which the last
  `--backprop` carry gradients (gradient checkpointing), a differentiable decode of the first latent frame with the real
  VAE, the built-in brightness reward, backward, AdamW on the LoRA. Size `--reward-size` (default 384x672x49).
"""
from __future__ import annotations
import argparse, datetime, gc, json, os, statistics, sys, time, traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from easyanimate.lora import add_lora
from easyanimate.pipeline import EasyAnimatePipeline
from easyanimate.reward import brightness_reward, sample_with_grad
from easyanimate.testing import make_tiny_scheduler, make_tiny_text_encoder, make_tiny_tokenizer, tiny_transformer_config, TINY_VAE_CONFIG
from easyanimate.train_vae import PatchDiscriminator3D, adaptive_weight, hinge_d_loss
from easyanimate.transformer import V51_12B_CONFIG, empty_model, random_weights_
from easyanimate.vae import AutoencoderKLMagvit


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def measure(step, device, warmup, steps):
    for _ in range(warmup): step()
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device); t = time.perf_counter(); step(); sync(device); times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return dict(step_s=statistics.median(times), peak_gib=peak)


def vae_rows(args, device, rows):
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(**(TINY_VAE_CONFIG if args.smoke else {})).to(device).train()
    vae.enable_gradient_checkpointing()
    disc = PatchDiscriminator3D(channels=8 if args.smoke else 64).to(device).train()
    opt, d_opt = torch.optim.AdamW(vae.parameters(), lr=1e-5), torch.optim.AdamW(disc.parameters(), lr=1e-5, betas=(0.5, 0.9))
    f, h, w = (5, 32, 32) if args.smoke else (17, 256, 256)
    x = torch.rand(1, 3, f, h, w, device=device) * 2 - 1
    ac = torch.autocast(device.type, dtype=torch.bfloat16)
    def step(with_disc):
        with ac:
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
        nll = (rec.float() - x).abs().mean()
        kl = 0.5 * (post.mean.float() ** 2 + post.var.float() - 1 - post.logvar.float()).mean()
        loss = nll + 1e-6 * kl
        if with_disc:
            with ac: g_loss = -disc(rec).float().mean()
            loss = loss + 0.5 * adaptive_weight(nll, g_loss, vae.decoder.conv_out.weight) * g_loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if with_disc:
            d_opt.zero_grad(set_to_none=True)
            with ac: d_loss = hinge_d_loss(disc(x).float(), disc(rec.detach()).float())
            d_loss.backward(); d_opt.step(); d_opt.zero_grad(set_to_none=True)
    params = sum(p.numel() for p in vae.parameters())
    for name, with_disc in (("VAE step, L1+KL", False), ("VAE step, + discriminator", True)):
        row = dict(row=name, size=f"{h}x{w}x{f}", params_m=params / 1e6)
        try: row.update(measure(lambda: step(with_disc), device, args.warmup, args.steps))
        except Exception as e: row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"; traceback.print_exc()
        rows.append(row); print(json.dumps(row), flush=True)
    del vae, disc, opt, d_opt; gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()


def reward_row(args, device, rows):
    config = dict(tiny_transformer_config(16), num_attention_heads=4) if args.smoke else dict(V51_12B_CONFIG)
    tr = random_weights_(empty_model(config, torch.bfloat16), device, seed=0)
    add_lora(tr, rank=32)
    for p in tr.parameters():
        if p.requires_grad: p.data = p.data.float()
    tr.enable_gradient_checkpointing(); tr.train()
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(**(TINY_VAE_CONFIG if args.smoke else {})).to(device, torch.bfloat16).requires_grad_(False)
    vae.enable_gradient_checkpointing()
    tok = make_tiny_tokenizer()
    pipe = EasyAnimatePipeline(vae, make_tiny_text_encoder(len(tok)), tok, tr, make_tiny_scheduler())
    pipe.set_progress_bar_config(disable=True)
    h, w, f = (32, 48, 5) if args.smoke else (int(v) for v in args.reward_size.split("x"))
    text = torch.randn(2, 8 if args.smoke else 256, config["text_embed_dim"], device=device, dtype=torch.bfloat16)
    params = [p for p in tr.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            frames = sample_with_grad(pipe, text, f, h, w, args.reward_steps, 6.0, g, args.backprop, 1, dtype=torch.bfloat16)
            loss = -brightness_reward(frames).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    row = dict(row=f"reward step ({args.backprop} of {args.reward_steps} steps with gradients)", size=f"{h}x{w}x{f}",
               params_m=sum(p.numel() for p in tr.parameters()) / 1e6, trainable_m=sum(p.numel() for p in params) / 1e6)
    try: row.update(measure(step, device, args.warmup, args.steps))
    except Exception as e: row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"; traceback.print_exc()
    rows.append(row); print(json.dumps(row), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true"); ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3); ap.add_argument("--reward-size", default="384x672x49")
    ap.add_argument("--reward-steps", type=int, default=10); ap.add_argument("--backprop", type=int, default=5)
    ap.add_argument("--sections", nargs="*", default=["vae", "reward"]); ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available(): sys.exit("No CUDA device: run with --smoke on a CPU.")
    device = torch.device("cpu" if args.smoke else "cuda")
    rows, t0 = [], time.perf_counter()
    if "vae" in args.sections: vae_rows(args, device, rows)
    if "reward" in args.sections: reward_row(args, device, rows)
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                total_s=time.perf_counter() - t0, results=rows)
    out = Path(args.out or (Path(os.environ["OUT"]) / "bench_train_vae_reward.json" if os.environ.get("OUT") else
                            Path(__file__).parent / "results" / f"train_vae_reward{'_smoke' if args.smoke else ''}.json"))
    out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(info, indent=1))
    print("\n| row | size | step (s) | peak (GiB) | note |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['size']} | {r.get('step_s', float('nan')):.3f} | "
              f"{'-' if r.get('peak_gib') is None else round(r['peak_gib'], 1)} | {r.get('error', '')} |")


if __name__ == "__main__":
    main()
