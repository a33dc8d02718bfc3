"""Why does the demo model miss colours? Three CPU checks behind `bench/RESULTS.md` (issue 10, 2026-12-08).

  settings  colour / motion accuracy per generation setting on a development set the evaluation never uses
            (`--n-seen` seen combinations drawn with `--dev-seed`, noise seeds `--seeds`)
  decoder   encode rendered objects, add Gaussian latent noise, decode: does the colour survive?
  drift     the colour of the first and of the last five frames against the whole clip (the evaluation's prompts)

  python tools/demo_colour_diagnostics.py settings '{"guidance_scale": 3}' '{"shift": 3}' '{"num_inference_steps": 50}'
  python tools/demo_colour_diagnostics.py decoder
  python tools/demo_colour_diagnostics.py drift
"""
import argparse, collections, json, random, time
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from easyanimate.core import frames_to_tensor, tensor_to_frames
from easyanimate.shapes import (BACKGROUNDS, COLOURS, DEMO_GENERATION, ClipSpec, demo_model_dir, evaluate,
                                evaluation_prompts, random_object, render_clip, score_video, summarise)


def settings(pipe, args):
    prompts = [p for p in evaluation_prompts(n_seen=args.n_seen, seed=args.dev_seed) if p["split"] == "seen"]
    base = pipe.scheduler.config
    for spec in args.specs or ["{}"]:
        kw = json.loads(spec)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(base, shift=kw.pop("shift", base["shift"]))
        t0 = time.time()
        rows = evaluate(pipe, prompts, seeds=tuple(args.seeds), progress=False, **kw)
        misses = collections.Counter(f'{r["colour"]} -> {r["got_colour"]}' for r in rows if not r["colour_ok"])
        acc = {s["lang"]: (round(s["colour_acc"], 3), round(s["motion_acc"], 3)) for s in summarise(rows)}
        print(f"{spec}: (colour, motion) {acc}; misses {dict(misses.most_common())} ({time.time() - t0:.0f} s)", flush=True)


@torch.no_grad()
def decoder(pipe, args):
    vae, sf = pipe.vae, pipe.vae.config.scaling_factor
    rng, colours = random.Random(3), list(COLOURS)
    clips = [(colours[i % 6], ClipSpec([random_object(rng, allow_held_out=True, colour=colours[i % 6])],
                                       rng.choice(list(BACKGROUNDS)), 128, 128, 17, i)) for i in range(24)]
    latents = [(c, vae.encode(frames_to_tensor(render_clip(spec))).latent_dist.mode() * sf) for c, spec in clips]
    for sigma in (0.0, 0.05, 0.1, 0.2, 0.3):
        g = torch.Generator().manual_seed(0)
        ok = sum(score_video(tensor_to_frames(vae.decode((z + sigma * torch.randn(z.shape, generator=g)) / sf).sample))["colour"] == c
                 for c, z in latents)
        print(f"latent noise {sigma} std: colour right in {ok} / {len(latents)}", flush=True)


def drift(pipe, args):
    for split in ("held-out", "seen"):
        tally = collections.Counter()
        for p in [p for p in evaluation_prompts() if p["split"] == split]:
            for s in args.eval_seeds:
                v = pipe(p["prompt"], seed=s, progress=False, **DEMO_GENERATION).frames
                for part, frames in (("first 5", v[:5]), ("last 5", v[-5:]), ("whole", v)):
                    tally[part] += score_video(frames)["colour"] == p["colour"]
                tally["videos"] += 1
        print(split, dict(tally), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("check", choices=["settings", "decoder", "drift"])
    p.add_argument("specs", nargs="*", help="settings: generation overrides as JSON (plus 'shift'); none: the defaults")
    p.add_argument("--n-seen", type=int, default=36)
    p.add_argument("--dev-seed", type=int, default=7, help="draws the development combinations (the evaluation uses 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 11], help="noise seeds of the development set")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1], help="drift: the evaluation's noise seeds")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from easyanimate.pipeline import load_pipeline
    pipe = load_pipeline(demo_model_dir(), device="cpu")
    {"settings": settings, "decoder": decoder, "drift": drift}[args.check](pipe, args)


if __name__ == "__main__":
    main()
