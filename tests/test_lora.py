"""LoRA round trips: train a LoRA with the trainer, save it, load it into a fresh pipeline at scale 1 and 0 (outputs
change and revert exactly), fuse / unfuse, read it with diffusers' own loader, and load an original-format (Kohya)
LoRA file built here from the key format."""
import json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file, save_file
from easyanimate.data import make_toy_dataset
from easyanimate.lora import LoraMixin, LoraManager, read_lora
from easyanimate.pipeline import EasyAnimatePipeline
from easyanimate.testing import make_tiny_model_folder
from easyanimate.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    model = make_tiny_model_folder(root / "model")
    data = make_toy_dataset(root / "data", n_videos=2, n_images=0, frames=5, size=(32, 32))
    cfg = TrainConfig(model_dir=str(model), dataset_json=str(data), output_dir=str(root / "run"), num_frames=5, stride=1,
                      base_resolution=32, lora_rank=4, learning_rate=2e-2, lr_warmup_steps=0, max_grad_norm=1.0,
                      max_train_steps=6, checkpointing_steps=0, max_sequence_length=64, device="cpu")
    r = train(cfg, log=None)
    return model, Path(r["output"]), r


def sample(pipe):
    return pipe(prompt="a moving square", num_frames=5, height=32, width=32, num_inference_steps=3, guidance_scale=3.0,
                seed=0, output_type="latent", progress=False, max_sequence_length=64).latents


def test_lora_file_format(trained):
    _, path, r = trained
    assert path.name == "lora.safetensors" and r["lora_rank"] == 4
    sd, meta = read_lora(path)
    assert all(k.startswith("transformer.transformer_blocks.") and (".lora_A." in k or ".lora_B." in k) for k in sd)
    cfg = json.loads(meta["lora_adapter_metadata"])
    assert cfg["transformer.r"] == 4 and cfg["transformer.lora_alpha"] == 4
    assert any(float(v.abs().max()) > 0 for k, v in sd.items() if ".lora_B." in k)  # it trained (B starts at 0)


def test_lora_round_trip_on_pipeline(trained):
    model, path, _ = trained
    pipe = EasyAnimatePipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.to("cpu")
    w0 = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    base = sample(pipe)
    name = pipe.load_lora(path, scale=1.0)
    with_lora = sample(pipe)
    assert (with_lora - base).abs().max() > 1e-4
    pipe.set_lora_scale(0.0)
    assert torch.equal(sample(pipe), base)  # scale 0: exactly the base model
    pipe.set_lora_scale(1.0)
    assert torch.equal(sample(pipe), with_lora)
    pipe.fuse_lora()
    torch.testing.assert_close(sample(pipe), with_lora, atol=1e-5, rtol=1e-5)
    pipe.unfuse_lora()
    pipe.unload_lora(name)
    assert torch.equal(sample(pipe), base)
    sd = pipe.transformer.state_dict()
    assert sd.keys() == w0.keys() and all(torch.equal(sd[k], w0[k]) for k in w0)  # bitwise the loaded weights
    # a fresh pipeline gives the same LoRA output
    fresh = EasyAnimatePipeline.from_pretrained(model, torch_dtype=torch.float32)
    fresh.load_lora(path, scale=1.0)
    assert torch.equal(sample(fresh), with_lora)


def test_lora_file_loads_in_diffusers(trained):
    "The saved file, read with plain peft from its keys and metadata into diffusers' transformer, gives the same output."
    from diffusers import EasyAnimateTransformer3DModel as DiffusersTransformer
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    model, path, _ = trained
    pipe = EasyAnimatePipeline.from_pretrained(model, torch_dtype=torch.float32)
    theirs = DiffusersTransformer.from_pretrained(model / "transformer").eval()  # diffusers 0.42: no PeftAdapterMixin here
    sd, meta = read_lora(path)
    cfg = {k.removeprefix("transformer."): v for k, v in json.loads(meta["lora_adapter_metadata"]).items()}
    cfg = {k: v for k, v in cfg.items() if k in ("r", "lora_alpha", "target_modules", "lora_dropout")}
    inject_adapter_in_model(LoraConfig(**cfg), theirs, adapter_name="ours")
    res = set_peft_model_state_dict(theirs, {k.removeprefix("transformer."): v for k, v in sd.items()}, adapter_name="ours")
    assert not [k for k in res.unexpected_keys if "lora" in k]
    pipe.load_lora(path)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 9, 32, generator=g)
    t = torch.tensor([700.0])
    with torch.no_grad():
        a = pipe.transformer(x, t, encoder_hidden_states=text, return_dict=False)[0]
        b = theirs(x, t, encoder_hidden_states=text, return_dict=False)[0]
        for m in theirs.modules():
            if isinstance(m, LoraLayer): m.set_scale("ours", 0.0)
        b0 = theirs(x, t, encoder_hidden_states=text, return_dict=False)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (a - b0).abs().max() > 1e-4  # the LoRA matters in diffusers too


def kohya_file(path, transformer, rank=2, alpha=1.0, seed=0):
    "An original-format LoRA: video q (attn1.to_q), text q (the original's attn2.to_q), an MLP linear and the patch conv."
    g = torch.Generator().manual_seed(seed)
    sd = transformer.state_dict()
    targets = {"transformer_blocks_0_attn1_to_q": sd["transformer_blocks.0.attn1.to_q.weight"],
               "transformer_blocks_0_attn2_to_q": sd["transformer_blocks.0.attn1.add_q_proj.weight"],
               "transformer_blocks_1_ff_net_2": sd["transformer_blocks.1.ff.net.2.weight"],
               "proj": sd["proj.weight"]}
    out = {}
    for name, w in targets.items():
        key = f"lora_unet__{name}"
        if w.ndim == 4:  # conv: down has the kernel, up is 1x1
            out[f"{key}.lora_down.weight"] = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.3
            out[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.3
        else:
            out[f"{key}.lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.3
            out[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.3
        out[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(out, str(path))
    return out


def test_original_kohya_lora(trained, tmp_path):
    model, _, _ = trained
    pipe = EasyAnimatePipeline.from_pretrained(model, torch_dtype=torch.float32)
    w0 = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    base = sample(pipe)
    k = kohya_file(tmp_path / "orig.safetensors", pipe.transformer)
    pipe.load_lora(tmp_path / "orig.safetensors", scale=0.55, adapter_name="orig")
    # merged as the original does: W + scale * alpha / rank * up @ down
    w = pipe.transformer.state_dict()["transformer_blocks.0.attn1.add_q_proj.weight"]
    up, down = k["lora_unet__transformer_blocks_0_attn2_to_q.lora_up.weight"], k["lora_unet__transformer_blocks_0_attn2_to_q.lora_down.weight"]
    torch.testing.assert_close(w, w0["transformer_blocks.0.attn1.add_q_proj.weight"] + 0.55 * 0.5 * up @ down)
    wp = pipe.transformer.state_dict()["proj.weight"]
    assert not torch.equal(wp, w0["proj.weight"])
    changed = sample(pipe)
    assert (changed - base).abs().max() > 1e-4
    pipe.set_lora_scale(0.0, "orig")
    assert torch.equal(sample(pipe), base)
    pipe.set_lora_scale(1.0, "orig")
    pipe.unload_lora("orig")
    sd = pipe.transformer.state_dict()
    assert all(torch.equal(sd[k], w0[k]) for k in w0)  # bitwise restored
    assert torch.equal(sample(pipe), base)
    assert not LoraManager.of(pipe.transformer).originals  # the CPU copies are released


def test_kohya_save_and_bad_files(trained, tmp_path):
    "Our LoRA saved in the original's format loads back to the same function; a LoRA for another model is refused."
    from easyanimate.lora import save_lora
    from easyanimate.core import WeightsError
    model, path, _ = trained
    a = EasyAnimatePipeline.from_pretrained(model, torch_dtype=torch.float32); a.load_lora(path)
    want = sample(a)
    kpath = save_lora(a.transformer, tmp_path / "kohya.safetensors", adapter_name=a.lora_adapters and next(iter(a.lora_adapters)), format="kohya")
    assert any(k.startswith("lora_unet__transformer_blocks_0_attn2_to_q") for k in load_file(kpath))
    b = EasyAnimatePipeline.from_pretrained(model, torch_dtype=torch.float32); b.load_lora(kpath)
    torch.testing.assert_close(sample(b), want, atol=1e-5, rtol=1e-5)
    save_file({"lora_unet__blocks_9_attn_qkv.lora_down.weight": torch.zeros(2, 4),
               "lora_unet__blocks_9_attn_qkv.lora_up.weight": torch.zeros(4, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="another model"): b.load_lora(tmp_path / "other.safetensors")


def test_every_pipeline_has_lora_methods():
    from easyanimate.pipeline import EasyAnimateInpaintPipeline
    from easyanimate.control_pipeline import EasyAnimateControlPipeline
    for cls in (EasyAnimatePipeline, EasyAnimateInpaintPipeline, EasyAnimateControlPipeline):
        assert issubclass(cls, LoraMixin) and callable(cls.load_lora), cls
