#!/usr/bin/env python
"""How far apart the demo VAE puts the six palette colours, and whether a linear change of latent coordinates could
pull them apart (issue 10: the held-out colour misses are the pairs closest in latent space).

    python tools/latent_colour_separation.py            # the shipped demo VAE, 24 random objects, ~70 s on 2 cores

Each random object (shape, size, motion, background) is rendered in all six colours and encoded (posterior mean times
the scaling factor, 9 frames at 128x128). For every colour pair it prints the mean L2 distance between the two latents
of the same object. A linear map M of the 16 latent channels (z -> M z) could be folded exactly into the VAE's
`quant_conv` / `post_quant_conv`; the script rescales each candidate M so that the latents' total variance is unchanged
(the transformer sees unit-variance latents either way) and prints the distances again: full whitening, and amplifying
the k directions that carry most of the colour differences (plain or relative to the total variance) by a factor a.
"""
import argparse, itertools, random
import torch
from easyanimate.core import frames_to_tensor
from easyanimate.shapes import BACKGROUNDS, COLOURS, ClipSpec, ShapeSpec, demo_model_dir, random_object, render_clip
from easyanimate.vae import AutoencoderKLMagvit


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default=str(demo_model_dir() / "vae"))
    ap.add_argument("--objects", type=int, default=24)
    a = ap.parse_args()
    vae = AutoencoderKLMagvit.from_pretrained(a.vae).eval()
    sf = vae.config.scaling_factor
    enc = lambda frames: vae.encode(frames_to_tensor(frames)).latent_dist.mode()[0] * sf
    colours, rng = list(COLOURS), random.Random(0)
    diffs, latents = {pair: [] for pair in itertools.combinations(colours, 2)}, []
    for _ in range(a.objects):
        o, bg = random_object(rng, allow_held_out=True), rng.choice(list(BACKGROUNDS))
        z = {c: enc(render_clip(ClipSpec([ShapeSpec(**{**o.__dict__, "colour": c})], bg, num_frames=9))) for c in colours}
        latents.append(z[colours[0]].flatten(1))
        for x, y in diffs: diffs[x, y].append(z[x] - z[y])
    total = torch.cov(torch.cat(latents, 1))  # 16 x 16 channel covariance over all latent positions
    D = torch.cat([d.flatten(1) for v in diffs.values() for d in v], 1)
    colour = D @ D.T / D.shape[1]  # second moment of the colour differences
    print("eigenvalues of the channel covariance:", [round(v, 3) for v in torch.linalg.eigvalsh(total).tolist()])

    def distances(M):
        s = (total.trace() / (M @ total @ M.T).trace()).sqrt()  # same total variance as before
        return {f"{x}-{y}": float(torch.stack([(s * M @ d.flatten(1)).norm() for d in v]).mean()) for (x, y), v in diffs.items()}

    def show(name, M):
        d = distances(M); close = sorted(d.items(), key=lambda kv: kv[1])[:4]
        print(f"{name:38s} closest pairs: " + ", ".join(f"{k} {v:.1f}" for k, v in close) + f"; median {sorted(d.values())[7]:.1f}")

    show("as shipped", torch.eye(16))
    L = torch.linalg.cholesky(total + 1e-6 * torch.eye(16)); Li = torch.linalg.inv(L)
    show("whitened", Li)
    _, V = torch.linalg.eigh(colour)
    _, U = torch.linalg.eigh(Li @ colour @ Li.T)
    for k in (1, 2, 4):
        for amp in (3, 5):
            Vk = V[:, -k:]; show(f"top {k} colour directions x{amp}", torch.eye(16) + (amp - 1) * Vk @ Vk.T)
            Wk = Li.T @ U[:, -k:]; show(f"top {k} colour/total directions x{amp}", torch.eye(16) + (amp - 1) * Wk @ Wk.T @ total)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
