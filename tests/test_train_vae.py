"""VAE trainer (issue 8): held-out PSNR rises, the discriminator starts at the configured step, resume is exact,
decoder-only leaves the encoder untouched."""
import json, shutil
from pathlib import Path
import pytest, torch
from easyanimate.data import make_toy_dataset
from easyanimate.shapes import write_dataset
from easyanimate.testing import make_tiny_vae
from easyanimate.train_vae import train_vae
from easyanimate.vae import AutoencoderKLMagvit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-train")
    data = make_toy_dataset(root / "data", n_videos=5, n_images=1, frames=9, size=(32, 32), bad=True)
    make_tiny_vae().save_pretrained(root / "vae0")
    return root, data


def cfg(root, data, out, **kw):
    return dict(dict(vae_dir=str(root / "vae0"), dataset_json=str(data), output_dir=str(out), num_frames=5, base_resolution=32,
                     image_base_resolution=32, learning_rate=2e-3, disc_channels=8, disc_layers=2, checkpointing_steps=0,
                     eval_steps=0, device="cpu", report_to="none"), **kw)


def log_lines(out):
    return [json.loads(l) for l in (Path(out) / "logs" / "train_log.jsonl").read_text().splitlines()]


def test_psnr_rises_and_discriminator_starts_on_time(setup, tmp_path):
    "A tiny VAE on 16 synthetic shape clips: PSNR and SSIM on 2 held-out clips rise; the discriminator joins after step 60."
    root, _ = setup
    data = write_dataset(tmp_path / "shapes", num_clips=16, num_frames=9, height=32, width=32)
    held = write_dataset(tmp_path / "held", num_clips=2, seed=7, num_frames=9, height=32, width=32)
    r = train_vae(cfg(root, data, tmp_path / "run", eval_json=str(held), eval_steps=25, max_train_steps=100, disc_start=60,
                      learning_rate=3e-3, lr_scheduler="cosine", batch_size=2), log=None)
    assert [e["step"] for e in r["evals"]] == [0, 25, 50, 75, 100]
    first, last = r["evals"][0], r["evals"][-1]
    assert last["psnr"] > first["psnr"] + 8 and last["ssim"] > first["ssim"] + 0.3, r["evals"]
    steps = [l for l in log_lines(tmp_path / "run") if "loss" in l]
    assert len(steps) == 100
    assert all(l["d_loss"] is None and l["g_loss"] is None for l in steps[:60])
    assert all(l["d_loss"] is not None and l["d_weight"] is not None for l in steps[60:])
    assert AutoencoderKLMagvit.from_pretrained(r["output"]).config.latent_channels == 16


def test_bad_files_are_skipped_and_counted(setup, tmp_path):
    root, data = setup
    r = train_vae(cfg(root, data, tmp_path / "run", max_train_steps=2, disc_start=10), log=None)
    assert r["steps"] == 2 and r["skipped"] == 3  # corrupt, missing, too short


def test_resume_is_exact(setup, tmp_path):
    root, data = setup
    common = cfg(root, data, tmp_path / "x", max_train_steps=8, checkpointing_steps=2, keep_last=None, disc_start=3,
                 batch_size=2)
    straight = train_vae(dict(common, output_dir=str(tmp_path / "straight")), log=None)
    resumed_dir = tmp_path / "resumed"; resumed_dir.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", resumed_dir / "checkpoint-4")  # as if killed after step 5
    resumed = train_vae(dict(common, output_dir=str(resumed_dir), resume="latest"), log=None)
    assert resumed["losses"] == straight["losses"], (resumed["losses"], straight["losses"])
    a, b = (AutoencoderKLMagvit.from_pretrained(p).state_dict() for p in (straight["output"], resumed["output"]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_only_keeps_the_encoder(setup, tmp_path):
    root, data = setup
    r = train_vae(cfg(root, data, tmp_path / "run", max_train_steps=3, decoder_only=True, disc_start=1), log=None)
    before, after = (AutoencoderKLMagvit.from_pretrained(p).state_dict() for p in (root / "vae0", r["output"]))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
