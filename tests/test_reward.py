"""Reward-backpropagation LoRA (issue 8): the reward of samples rises, the LoRA loads at inference like any other,
resume is exact, InP models and weight-based (CLIP) rewards run."""
import json, shutil
from pathlib import Path
import pytest, torch
from easyanimate.pipeline import load_pipeline
from easyanimate.reward import make_tiny_clip_folder, mean_reward, train_reward_lora
from easyanimate.testing import make_tiny_model_folder

KW = dict(num_frames=5, height=32, width=32, num_inference_steps=4, guidance_scale=3.0, max_sequence_length=64)
PROMPTS = ["a cat plays the guitar", "a panda in a bamboo forest"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("reward") / "model")


def run(model, out, **kw):
    return train_reward_lora(dict(dict(model_dir=str(model), output_dir=str(out), reward="brightness", prompts=PROMPTS,
                                       backprop_steps=2, learning_rate=5e-2, lora_rank=4, checkpointing_steps=0,
                                       device="cpu", report_to="none", **KW), **kw), log=None)


def test_reward_rises_and_lora_loads(model, tmp_path):
    r = run(model, tmp_path / "run", max_train_steps=30)
    first, last = sum(r["rewards"][:5]) / 5, sum(r["rewards"][-5:]) / 5
    assert last > first + 0.01, r["rewards"]
    pipe = load_pipeline(model, device="cpu")
    seeds = [100, 101, 102]
    before = mean_reward(pipe, "brightness", PROMPTS[:1], seeds, **KW)
    name = pipe.load_lora(r["output"])
    after = mean_reward(pipe, "brightness", PROMPTS[:1], seeds, **KW)
    assert after > before + 0.015, (before, after)
    pipe.set_lora_scale(0.0, name)  # scale 0: exactly the base model again
    assert mean_reward(pipe, "brightness", PROMPTS[:1], seeds, **KW) == pytest.approx(before, abs=1e-6)


def test_resume_is_exact(model, tmp_path):
    straight = run(model, tmp_path / "straight", max_train_steps=4, checkpointing_steps=2, keep_last=None)
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run(model, tmp_path / "resumed", max_train_steps=4, checkpointing_steps=2, resume="latest")
    assert resumed["rewards"] == straight["rewards"]


def test_inpaint_model_and_clip_reward(tmp_path):
    inp = make_tiny_model_folder(tmp_path / "inp", variant="inpaint")
    clip = make_tiny_clip_folder(tmp_path / "clip")
    r = run(inp, tmp_path / "run", reward=f"pickscore:{clip}", max_train_steps=2, sampled_frames=2)
    assert r["steps"] == 2 and all(v == v for v in r["rewards"]) and Path(r["output"]).is_file()
