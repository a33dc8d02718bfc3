"""The trainer's Must-show checks (issue 7): overfitting two clips, exact resume after SIGKILL (in the middle of writing a
checkpoint), and bad data that is skipped and counted. Plus the `easyanimate train` command and a run on a dataset JSON
written by the preprocessing exporter (issue 9)."""
import json, os, shutil, signal, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from easyanimate.cli import main as cli_main
from easyanimate.data import encode_latents, make_toy_dataset
from easyanimate.video_io import read_video
from easyanimate.checkpoint import list_checkpoints
from easyanimate.pipeline import load_pipeline
from easyanimate.testing import make_tiny_components, make_tiny_model_folder, tiny_transformer_config, TINY_CAPTIONS
from easyanimate.transformer import EasyAnimateTransformer3DModel
from easyanimate.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("train-model") / "model")


def base_config(model, data, out, **kw):
    return dict(dict(model_dir=str(model), dataset_json=str(data), output_dir=str(out), num_frames=5, stride=1,
                     base_resolution=32, learning_rate=1e-3, lr_warmup_steps=0, max_grad_norm=1.0,
                     max_sequence_length=64, device="cpu", report_to="none"), **kw)


def test_overfit_two_clips(tmp_path):
    "Two clips, no text dropout: the loss falls to a fraction of its start, and each caption samples its own clip."
    components = make_tiny_components("t2v", tokenizer_path=tmp_path / "tok")
    torch.manual_seed(0)  # a 64-wide transformer (4 heads of 16): the 32-wide default learns two clips too slowly for a test
    components["transformer"] = EasyAnimateTransformer3DModel(**dict(tiny_transformer_config(16), num_attention_heads=4,
                                                                     time_embed_dim=64))
    data = make_toy_dataset(tmp_path / "data", n_videos=2, n_images=0, frames=9, size=(32, 32))
    clips = [read_video(data.parent / f"video_{i}.mp4", num_frames=5) for i in range(2)]
    vae = components["vae"]  # a real VAE's scaling factor gives unit-variance latents; set the random one's the same way
    vae.register_to_config(scaling_factor=1.0)
    vae.register_to_config(scaling_factor=float(1 / torch.cat([encode_latents(vae, c) for c in clips]).std()))
    model = make_tiny_model_folder(tmp_path / "model", components=components)
    entries = json.loads(data.read_text())  # captions the tiny tokenizer knows, unlike each other from the first word
    entries[0]["text"], entries[1]["text"] = TINY_CAPTIONS[0], TINY_CAPTIONS[1]
    data.write_text(json.dumps(entries))
    cfg = base_config(model, data, tmp_path / "run", learning_rate=3e-3, max_train_steps=400, checkpointing_steps=0,
                      text_drop_ratio=0.0, random_start=False, seed=0, adam_weight_decay=0.0)
    r = train(cfg, log=None)
    first, last = sum(r["losses"][:20]) / 20, sum(r["losses"][-20:]) / 20
    assert last < 0.4 * first, (first, last)
    # samples of the trained transformer vs the two clips, in the VAE's latent space
    pipe = load_pipeline(model, device="cpu", dtype=torch.float32)
    pipe.transformer = EasyAnimateTransformer3DModel.from_pretrained(r["output"]).eval()
    targets = [encode_latents(pipe.vae, c) for c in clips]  # read_video gives (1, C, F, H, W)
    dist = torch.zeros(2, 2)
    for i, e in enumerate(entries):
        z = pipe(prompt=e["text"], num_frames=5, height=32, width=32, num_inference_steps=20, guidance_scale=1.0, seed=1,
                 output_type="latent", progress=False, max_sequence_length=64).latents
        for j in range(2): dist[i, j] = (z - targets[j]).pow(2).mean()
    between = (targets[0] - targets[1]).pow(2).mean()  # the two clips from each other
    assert max(dist[0, 0], dist[1, 1]) < 0.4 * min(dist[0, 1], dist[1, 0], between), (dist, between)


KILLER = textwrap.dedent("""
    import os, signal, sys
    import accelerate
    kill_at = int(os.environ["KILL_AT_SAVE"])
    real_save_state, saves = accelerate.Accelerator.save_state, [0]
    def save_state(self, *a, **k):  # the accelerate state is on disk, the checkpoint's marker and rename are not
        out = real_save_state(self, *a, **k); saves[0] += 1
        if saves[0] == kill_at: os.kill(os.getpid(), signal.SIGKILL)
        return out
    accelerate.Accelerator.save_state = save_state
    from easyanimate.train import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_resume_after_sigkill_is_exact(model, tmp_path, lora_rank):
    "Straight 8 steps vs killed (SIGKILL while writing the step-6 checkpoint) and resumed from step 4: same losses."
    data = make_toy_dataset(tmp_path / "data", n_videos=3, n_images=2, frames=9, size=(32, 32),
                            sizes=[(32, 32), (32, 48), (32, 32), (32, 32), (48, 32)])
    common = base_config(model, data, tmp_path / "x", max_train_steps=8, checkpointing_steps=2, keep_last=2,
                         lora_rank=lora_rank, text_drop_ratio=0.5, random_start=True, batch_size=2,
                         image_base_resolution=32)
    straight = train(dict(common, output_dir=str(tmp_path / "straight")), log=None)
    cfg = tmp_path / "cfg.json"; cfg.write_text(json.dumps(dict(common, output_dir=str(tmp_path / "killed"))))
    env = dict(os.environ, KILL_AT_SAVE="3", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", KILLER, "--config", str(cfg)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    killed = tmp_path / "killed"
    assert [c.name for c in list_checkpoints(killed)] == ["checkpoint-2", "checkpoint-4"]  # the half-written 6 is not one
    assert any(killed.glob(".tmp-checkpoint-*")) or any(killed.glob("*tmp*"))  # it was left behind by the kill
    resumed = train(str(cfg), log=None, resume="latest")
    assert resumed["steps"] == 8 and len(resumed["losses"]) == 8
    assert resumed["losses"] == straight["losses"], (resumed["losses"], straight["losses"])
    assert [c.name for c in list_checkpoints(killed)] == ["checkpoint-6", "checkpoint-8"]
    assert not [p for p in killed.iterdir() if "tmp" in p.name]


def test_bad_data_is_skipped_and_counted(model, tmp_path, capsys):
    "A corrupt mp4, a missing file and a 3-frame video: the run finishes and reports 3 skipped files."
    data = make_toy_dataset(tmp_path / "data", n_videos=2, n_images=1, frames=9, size=(32, 32), bad=True)
    r = train(base_config(model, data, tmp_path / "run", max_train_steps=3, checkpointing_steps=0,
                          image_base_resolution=32), log=print)
    assert r["steps"] == 3 and r["skipped"] == 3
    assert sorted(Path(s[0]).name for s in r["skipped_files"]) == ["corrupt.mp4", "missing.mp4", "short.mp4"]
    assert "3 skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped"] == 3


def test_train_command(model, tmp_path, capsys):
    "`easyanimate train` takes a JSON config plus --field overrides and prints the summary line; bad input exits 2."
    data = make_toy_dataset(tmp_path / "data", n_videos=2, n_images=0, frames=9, size=(32, 32))
    cfg = tmp_path / "cfg.json"; cfg.write_text(json.dumps(base_config(model, data, tmp_path / "run")))
    assert cli_main(["train", "--config", str(cfg), "--max_train_steps", "2", "--lora_rank", "4", "--checkpointing_steps", "0"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 2 and out["output"].endswith("lora.safetensors") and Path(out["output"]).is_file()
    assert cli_main(["train", "--config", str(cfg), "--num_frames", "6"]) == 2
    assert "4k+1" in capsys.readouterr().err


def torchrun(cfg:Path, *args):
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "easyanimate.train", "--config", str(cfg), *args], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_two_processes_train_and_resume_exactly(model, tmp_path):
    "Two CPU processes (torchrun, gloo, DDP): each trains its own shard; resuming the step-2 checkpoint gives the same losses."
    data = make_toy_dataset(tmp_path / "data", n_videos=4, n_images=0, frames=9, size=(32, 32))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(base_config(model, data, tmp_path / "straight", max_train_steps=4, checkpointing_steps=2,
                                          keep_last=None, lora_rank=4, text_drop_ratio=0.5)))
    torchrun(cfg)
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    state = json.loads((tmp_path / "straight" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and len(state["sampler"]) == 2  # one data-order state per process
    assert (tmp_path / "straight" / "checkpoint-2" / "random_states_1.pkl").is_file()
    resumed = tmp_path / "resumed"; resumed.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", resumed / "checkpoint-2")
    torchrun(cfg, "--output_dir", str(resumed), "--resume", "latest")
    again = json.loads((resumed / "summary.json").read_text())
    assert again["steps"] == 4 and again["losses"] == straight["losses"], (again["losses"], straight["losses"])
