"""The example notebooks, run by papermill with tiny model folders: each writes an mp4 of the asked frames, size and fps.

Each notebook runs against one layout, alternating so both layouts go through papermill (t2v and v2v: diffusers; i2v and
long video: original); a papermill run costs 10-20 s of kernel start and imports on a 2-core CI machine. Set
EASYANIMATE_ALL_LAYOUTS=1 to run every notebook in both layouts. (tests/test_pipeline.py checks that the two layouts
load to identical outputs for T2V and InP models.)"""
import os
from pathlib import Path
import numpy as np, pytest
import papermill as pm
from easyanimate.pipeline import closest_bucket
from easyanimate.testing import make_tiny_model_folder
from easyanimate.video_io import video_info, write_image, write_video

EXAMPLES = Path(__file__).resolve().parents[1] / "nbs" / "examples"
ALL = os.environ.get("EASYANIMATE_ALL_LAYOUTS") == "1"
def layouts(default):
    other = "original" if default == "diffusers" else "diffusers"
    return [default, pytest.param(other, marks=pytest.mark.skipif(not ALL, reason="set EASYANIMATE_ALL_LAYOUTS=1"))]

TINY = dict(prompt="A cat plays the guitar on a swing.", steps=2, guidance=6.0, seed=0, device="cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("example-models")
    return {(layout, variant): str(make_tiny_model_folder(root / f"{layout}-{variant}", layout, variant))
            for layout in ("diffusers", "original") for variant in ("t2v", "inpaint")}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    g = np.random.default_rng(0)
    image = np.kron(g.integers(0, 256, (6, 10, 3)), np.ones((16, 16, 1))).astype(np.uint8)  # 96x160
    write_image(d / "start.png", image)
    write_video(d / "input.mp4", np.stack([np.roll(image, 4 * i, axis=1) for i in range(12)]), fps=8)
    return d


def run(name, out_dir, **params):
    out = Path(out_dir) / f"{name}.mp4"
    pm.execute_notebook(str(EXAMPLES / f"{name}.ipynb"), str(Path(out_dir) / f"{name}-run.ipynb"), kernel_name="python3", language="python",
                        parameters={**TINY, **params, "output_path": str(out)}, progress_bar=False, cwd=str(out_dir))
    info = video_info(out)
    return info["frames"], info["width"], info["height"], info["fps"]


@pytest.mark.parametrize("layout", layouts("diffusers"))
def test_t2v_notebook(models, tmp_path, layout):
    assert run("t2v", tmp_path, model_dir=models[(layout, "t2v")], frames=9, height=64, width=48) == (9, 48, 64, 8.0)


@pytest.mark.parametrize("layout", layouts("original"))
def test_i2v_notebook(models, media, tmp_path, layout):
    h, w = closest_bucket(96, 160, 128)  # height/width None: the bucket closest to the 96x160 start image
    got = run("i2v", tmp_path, model_dir=models[(layout, "inpaint")], image=str(media / "start.png"),
              end_image=str(media / "start.png"), frames=5, height=None, width=None, base_resolution=128)
    assert got == (5, w, h, 8.0)


@pytest.mark.parametrize("layout", layouts("diffusers"))
def test_v2v_notebook(models, media, tmp_path, layout):
    assert run("v2v", tmp_path, model_dir=models[(layout, "inpaint")], video=str(media / "input.mp4"),
               mask=str(media / "start.png"), strength=0.7, frames=9, height=64, width=64) == (9, 64, 64, 8.0)


@pytest.mark.parametrize("layout", layouts("original"))
def test_long_video_notebook(models, tmp_path, layout):
    assert run("long_video", tmp_path, model_dir=models[(layout, "inpaint")], frames=23, window=9, overlap=2,
               height=32, width=48) == (23, 48, 32, 8.0)


TRAIN = dict(num_frames=5, stride=1, base_resolution=32, image_base_resolution=32, max_train_steps=2, lr_warmup_steps=0,
             mixed_precision="no", gradient_checkpointing=True, checkpointing_steps=1, max_sequence_length=64,
             sample_prompt="A cat plays the guitar on a swing.", sample_frames=5, sample_height=32, sample_width=32,
             sample_steps=2, device="cpu")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from easyanimate.data import make_toy_dataset
    return str(make_toy_dataset(tmp_path_factory.mktemp("toy"), n_videos=2, n_images=1, frames=9, size=(32, 32)))


@pytest.mark.parametrize("name", ["train_lora", "train_sft"])
def test_training_notebooks(models, toy_data, tmp_path, name):
    "Each trains a tiny model for two steps (one checkpoint a step), then samples with the result."
    out = tmp_path / "run"
    params = dict(TRAIN, model_dir=models[("diffusers", "t2v")], dataset_json=toy_data, output_dir=str(out),
                  sample_path=str(tmp_path / "sample.mp4"), **({"lora_rank": 4} if name == "train_lora" else {}))
    pm.execute_notebook(str(EXAMPLES / f"{name}.ipynb"), str(tmp_path / f"{name}-run.ipynb"), kernel_name="python3",
                        language="python", parameters=params, progress_bar=False, cwd=str(tmp_path))
    summary = json_load(out / "summary.json")
    assert summary["steps"] == 2 and summary["skipped"] == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    final = out / ("lora.safetensors" if name == "train_lora" else "transformer")
    assert final.exists() and summary["output"] == str(final)
    info = video_info(tmp_path / "sample.mp4")
    assert (info["frames"], info["width"], info["height"]) == (5, 32, 32)


def json_load(path):
    import json
    return json.loads(Path(path).read_text())


def test_train_vae_notebook(toy_data, tmp_path):
    from easyanimate.testing import make_tiny_vae
    make_tiny_vae().save_pretrained(tmp_path / "vae0")
    params = dict(vae_dir=str(tmp_path / "vae0"), dataset_json=toy_data, eval_holdout=1, eval_steps=1, output_dir=str(tmp_path / "run"),
                  num_frames=5, base_resolution=32, learning_rate=1e-3, max_train_steps=2, disc_start=1, mixed_precision="no",
                  gradient_checkpointing=True, checkpointing_steps=1, device="cpu")
    pm.execute_notebook(str(EXAMPLES / "train_vae.ipynb"), str(tmp_path / "train_vae-run.ipynb"), kernel_name="python3",
                        language="python", parameters=params, progress_bar=False, cwd=str(tmp_path))
    summary = json_load(tmp_path / "run" / "summary.json")
    assert summary["steps"] == 2 and [e["step"] for e in summary["evals"]] == [0, 1, 2]
    assert (tmp_path / "run" / "vae" / "config.json").is_file()


def test_demo_model_notebooks(tmp_path):
    """The runs that train the demo model, with tiny settings, then the evaluation notebook on their result. Run 1 goes
    through tools/run_notebook.py (the in-process runner used on the GPU machine, where papermill is not installed),
    run 2 and the evaluation through papermill."""
    import subprocess, sys
    root = EXAMPLES.parents[1]
    data, model = tmp_path / "data", tmp_path / "model"
    run1 = dict(data_dir=data, num_clips=24, render_workers=2, vae_run_dir=tmp_path / "vae_run", model_dir=model,
                max_train_steps=3, batch_size=2, eval_holdout=4, eval_steps=2, num_workers=0, mixed_precision="no", device="cpu")
    cmd = [sys.executable, str(root / "tools" / "run_notebook.py"), str(EXAMPLES / "train_demo_vae.ipynb"), str(tmp_path / "vae-run.ipynb")]
    for k, v in run1.items(): cmd += ["-p", k, str(v)]
    subprocess.run(cmd, check=True, cwd=tmp_path, env={**os.environ, "MPLBACKEND": "Agg"})
    assert json_load(tmp_path / "vae_run" / "summary.json")["steps"] == 3
    assert json_load(model / "vae" / "config.json")["scaling_factor"] > 0
    recorded = json_load(tmp_path / "vae-run.ipynb")
    images = [o for c in recorded["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # dataset samples, the loss curve, a reconstruction

    run2 = dict(model_dir=str(model), data_dir=str(data), cache_dir=str(tmp_path / "cache"), run_dir=str(tmp_path / "dit_run"),
                max_train_steps=3, batch_size=4, num_workers=0, eval_seen=0, eval_limit=2, eval_steps=2, mixed_precision="no", device="cpu")
    pm.execute_notebook(str(EXAMPLES / "train_demo_transformer.ipynb"), str(tmp_path / "dit-run.ipynb"), kernel_name="python3",
                        language="python", parameters=run2, progress_bar=False, cwd=str(tmp_path))
    trained = tmp_path / "dit_run" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert (model / "transformer" / trained.name).read_bytes() == trained.read_bytes()  # installed in the model folder

    out = pm.execute_notebook(str(EXAMPLES / "evaluate.ipynb"), str(tmp_path / "evaluate-run.ipynb"), kernel_name="python3",
                              language="python", parameters=dict(model_dir=str(model), seeds=[0], max_prompts=2, steps=2, device="cpu"),
                              progress_bar=False, cwd=str(tmp_path))
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "| held-out | en | 1 |" in text and "| held-out | zh | 1 |" in text
