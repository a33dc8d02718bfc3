"Tests of easyanimate.transformer: parity with diffusers, the shared-weight rule, both checkpoint layouts, loading memory, faults."
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from diffusers import EasyAnimateTransformer3DModel as DiffusersModel

from easyanimate.core import InputError, SizeError, WeightsError
from easyanimate.transformer import (EasyAnimateTransformer3DModel as Model, V51_12B_CONFIG, WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
                                     EasyAnimateTransformerBlock, apply_rope, attention, attention_backend, empty_model,
                                     random_weights_, rope_3d, to_original_key, checkpoint_layout)

REPO = Path(__file__).resolve().parents[1]

def rel_err(a, b): return ((a - b).norm() / b.norm()).item()

def diffusers_model(seed=0, noise=0.05, **cfg):
    "A diffusers model with default init plus noise on every weight, so no norm or bias stays at its identity value."
    torch.manual_seed(seed)
    m = DiffusersModel(**cfg).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * noise)
    return m

def ours_like(ref, **cfg):
    m = Model(**cfg).eval()
    m.load_state_dict(ref.state_dict(), strict=True)
    return m

def tiny(**kw):
    return dict(dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, patch_size=2,
                     num_layers=2, mmdit_layers=2, time_embed_dim=24, text_embed_dim=20, add_norm_text_encoder=True), **kw)

# ---------------------------------------------------------------- parity with diffusers (all-MMDiT configs)
VARIANT_CONFIGS = {
    "t2v": tiny(num_layers=3, mmdit_layers=3),
    "inp": tiny(in_channels=33, num_attention_heads=2, attention_head_dim=32, add_norm_text_encoder=False, text_embed_dim=24),
    "control": tiny(in_channels=48, num_attention_heads=4, attention_head_dim=16, time_embed_dim=32),
}
EXTRA = {"t2v": None, "inp": ("inpaint_latents", 17), "control": ("control_latents", 32)}

@pytest.mark.parametrize("variant", list(VARIANT_CONFIGS))
def test_parity_with_diffusers(variant):
    cfg = VARIANT_CONFIGS[variant]
    ref = diffusers_model(**cfg); ours = ours_like(ref, **cfg)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for frames in (1, 2, 4):
        for H, W in ((6, 10), (8, 4)):
            for padded in (False, True):
                B, Lt = 2, 9
                lat = torch.randn(B, 16, frames, H, W, generator=g)
                txt = torch.randn(B, Lt, cfg["text_embed_dim"], generator=g)
                if padded:  # right padding as the text encoder makes it: zeros after each prompt's end (mask ignored)
                    txt[0, 6:] = 0; txt[1, 4:] = 0
                t = torch.tensor([250.0, 875.5])
                kw = {}
                if EXTRA[variant]:
                    name, ch = EXTRA[variant]
                    kw[name] = torch.randn(B, ch, frames, H, W, generator=g)
                with torch.no_grad():
                    want = ref(lat, t, encoder_hidden_states=txt, **kw).sample
                    got = ours(lat, t, encoder_hidden_states=txt, **kw).sample
                    # the caller may also hand us the channels already concatenated
                    got_cat = ours(torch.cat([lat, *kw.values()], 1), t, encoder_hidden_states=txt).sample
                assert got.shape == want.shape == (B, 16, frames, H, W)
                assert torch.equal(got, got_cat)
                worst = max(worst, rel_err(got, want))
    print(f"{variant}: worst relative error {worst:.2e}")
    assert worst <= 1e-5

def test_rope_matches_diffusers_grid():
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from easyanimate.transformer import rope_crop_region
    for frames, h, w, d in ((1, 24, 42, 64), (13, 36, 63, 64), (3, 45, 30, 32), (2, 30, 45, 16), (4, 7, 5, 64)):
        region = rope_crop_region((h, w), (30, 45))
        ref = get_3d_rotary_pos_embed(d, region, (h, w), frames, use_real=True)
        cos, sin = rope_3d(frames, h, w, d)
        torch.testing.assert_close(cos, ref[0], rtol=0, atol=1e-6); torch.testing.assert_close(sin, ref[1], rtol=0, atol=1e-6)

def test_padded_text_takes_part():
    "V5.1 ignores the text mask: padding tokens change the output (reproduced on purpose)."
    m = Model(**tiny()).eval()
    lat, txt = torch.randn(1, 16, 2, 4, 6), torch.randn(1, 5, 20)
    with torch.no_grad():
        a = m(lat, 500.0, encoder_hidden_states=txt).sample
        b = m(lat, 500.0, encoder_hidden_states=torch.cat([txt, torch.zeros(1, 3, 20)], 1),
              text_embedding_mask=torch.tensor([[1] * 5 + [0] * 3])).sample
    assert rel_err(a, b) > 1e-4

# ---------------------------------------------------------------- shared-weight blocks follow the original
def _block_by_hand(blk, x, c, temb, cos, sin):
    "A shared-weight block computed from its weights with plain ops, as the original does it."
    B, Lt, D = c.shape
    heads, hd = blk.attn1.heads, D // blk.attn1.heads
    lin = lambda t, l: t @ l.weight.T + l.bias
    ln = lambda t, n: F.layer_norm(t.float(), (t.shape[-1],), n.weight, n.bias, n.eps)
    def modulate(norm, x, c):
        s = lin(F.silu(temb), norm.linear)[:, None].chunk(6, -1)
        return ln(x, norm.norm) * (1 + s[1]) + s[0], ln(c, norm.norm) * (1 + s[4]) + s[3], s[2], s[5]
    nx, nc, g, gc = modulate(blk.norm1, x, c)
    a = blk.attn1
    seq = torch.cat([nc, nx], 1)
    split = lambda t: t.reshape(B, -1, heads, hd).transpose(1, 2)
    q, k, v = split(lin(seq, a.to_q)), split(lin(seq, a.to_k)), split(lin(seq, a.to_v))
    q, k = ln(q, a.norm_q), ln(k, a.norm_k)
    q = torch.cat([q[:, :, :Lt], apply_rope(q[:, :, Lt:], cos, sin)], 2)
    k = torch.cat([k[:, :, :Lt], apply_rope(k[:, :, Lt:], cos, sin)], 2)
    o = (torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, -1) @ v).transpose(1, 2).reshape(B, -1, D)
    o = lin(o, a.to_out[0])                       # the rule: text AND video through the shared to_out
    x, c = x + g * o[:, Lt:], c + gc * o[:, :Lt]
    nx, nc, g, gc = modulate(blk.norm2, x, c)
    ff = lambda t: lin(F.gelu(lin(t, blk.ff.net[0].proj), approximate="tanh"), blk.ff.net[2])
    return x + g * ff(nx), c + gc * ff(nc)

def test_shared_block_by_hand():
    torch.manual_seed(0)
    blk = EasyAnimateTransformerBlock(64, 4, 16, 24, is_mmdit_block=False).eval()
    assert blk.attn1.to_add_out is None and blk.txt_ff is None
    with torch.no_grad():
        for p in blk.parameters(): p.add_(torch.randn_like(p) * 0.05)
        x, c, temb = torch.randn(2, 2 * 3 * 4, 64), torch.randn(2, 7, 64), torch.randn(2, 24)
        cos, sin = rope_3d(2, 3, 4, 16)
        got = blk(x, c, temb, (cos, sin)); want = _block_by_hand(blk, x, c, temb, cos, sin)
    for a, b in zip(got, want): assert rel_err(a, b) < 1e-5

def test_shared_blocks_differ_from_diffusers_only_by_the_text_projection():
    cfg = tiny(num_layers=3, mmdit_layers=1, num_attention_heads=2, attention_head_dim=16)
    ref = diffusers_model(**cfg); ours = ours_like(ref, **cfg)
    g = torch.Generator().manual_seed(0)
    lat, txt, t = torch.randn(2, 16, 2, 4, 6, generator=g), torch.randn(2, 6, 20, generator=g), torch.tensor([100.0, 900.0])
    # one shared block: identical video output, different text output (diffusers skips to_out for text)
    D = 32
    x, c, temb = torch.randn(2, 12, D, generator=g), torch.randn(2, 6, D, generator=g), torch.randn(2, 24, generator=g)
    rope = rope_3d(2, 2, 3, 16)
    with torch.no_grad():
        ox, oc = ours.transformer_blocks[1](x, c, temb, rope)
        dx, dc = ref.transformer_blocks[1](x, c, temb, rope)
        assert rel_err(ox, dx) < 1e-5 and rel_err(oc, dc) > 1e-3
        whole_before = rel_err(ours(lat, t, encoder_hidden_states=txt).sample, ref(lat, t, encoder_hidden_states=txt).sample)
        # make the shared blocks' to_out the identity: then the missing projection is a no-op and everything agrees
        for i in (1, 2):
            for m in (ours, ref):
                lin = m.transformer_blocks[i].attn1.to_out[0]
                lin.weight.copy_(torch.eye(D)); lin.bias.zero_()
        ox, oc = ours.transformer_blocks[1](x, c, temb, rope); dx, dc = ref.transformer_blocks[1](x, c, temb, rope)
        assert rel_err(ox, dx) < 1e-5 and rel_err(oc, dc) < 1e-5
        whole_after = rel_err(ours(lat, t, encoder_hidden_states=txt).sample, ref(lat, t, encoder_hidden_states=txt).sample)
    assert whole_before > 1e-5 and whole_after <= 1e-5, (whole_before, whole_after)

# ---------------------------------------------------------------- real configs on the meta device
def test_12b_keys_and_shapes_equal_diffusers():
    ours = empty_model(V51_12B_CONFIG)
    with torch.device("meta"): ref = DiffusersModel(**V51_12B_CONFIG)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert a == b
    n = sum(p.numel() for p in ours.parameters())
    print(f"12B parameters: {n:,}")
    assert abs(n - 11.8e9) < 0.05e9

def test_7b_control_config_builds(assets):
    cfg = json.loads((assets / "configs/EasyAnimateV5.1-7b-zh-Control/transformer/config.json").read_text())
    m = empty_model(cfg)
    n = sum(p.numel() for p in m.parameters())
    print(f"7B Control parameters: {n:,}")
    assert abs(n - 6.8e9) < 0.05e9
    assert m.config.in_channels == 48 and sum(b.txt_ff is not None for b in m.transformer_blocks) == 18
    assert m.config.swa_layers is None and m.config.add_ref_latent_in_control_model is True

@pytest.mark.parametrize("key,value,match", [("swa_layers", [1, 2], "swa_layers"), ("clip_channels", 768, "clip_channels"),
                                             ("ref_channels", 16, "ref_channels"), ("attention_head_dim", 24, "multiple of 16"),
                                             ("time_position_encoding_type", "2d_rope", "3d_rope"), ("in_channels", None, "in_channels")])
def test_unsupported_config_options_raise(key, value, match):
    with pytest.raises(InputError, match=match): Model(**tiny(**{key: value}))

# ---------------------------------------------------------------- checkpoint layouts and loading
@pytest.fixture(scope="module")
def small_pair():
    cfg = tiny(num_layers=3, mmdit_layers=2, in_channels=33)
    return cfg, ours_like(diffusers_model(seed=3, **cfg), **cfg)

def _write_original(model, folder, shards=1):
    "Write the model's tensors under the original layout's key names (optionally sharded with an index)."
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dict(model.config)))
    sd = {to_original_key(k): v.contiguous() for k, v in model.state_dict().items()}
    assert checkpoint_layout(sd) == "original" and any(".attn2.to_out.0." in k for k in sd)
    if shards == 1: save_file(sd, folder / WEIGHTS_NAME); return
    keys, weight_map = sorted(sd), {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::shards]}
        save_file(part, folder / name); weight_map.update({k: name for k in part})
    (folder / WEIGHTS_INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

def _inputs(B=1, frames=2, H=4, W=6, text_dim=20):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(B, 16, frames, H, W, generator=g), torch.tensor([420.0] * B),
            torch.randn(B, 5, text_dim, generator=g), torch.randn(B, 17, frames, H, W, generator=g))

@pytest.mark.parametrize("shards", [1, 3])
def test_original_layout_loads_and_matches(small_pair, tmp_path, shards):
    cfg, model = small_pair
    model.save_pretrained(tmp_path / "diffusers", max_shard_size="50KB" if shards > 1 else "10GB")
    _write_original(model, tmp_path / "original", shards)
    a = Model.from_pretrained(tmp_path / "diffusers")
    b = Model.from_pretrained(tmp_path, subfolder="original")
    lat, t, txt, inp = _inputs()
    with torch.no_grad():
        ya = a(lat, t, encoder_hidden_states=txt, inpaint_latents=inp).sample
        yb = b(lat, t, encoder_hidden_states=txt, inpaint_latents=inp).sample
        y0 = model(lat, t, encoder_hidden_states=txt, inpaint_latents=inp).sample
    assert torch.equal(ya, y0) and torch.equal(yb, y0)
    assert not a.training and a.dtype == torch.float32

def test_saved_folder_loads_in_diffusers(small_pair, tmp_path):
    cfg, model = small_pair
    model.save_pretrained(tmp_path)
    ref = DiffusersModel.from_pretrained(tmp_path).eval()
    lat, t, txt, inp = _inputs()
    with torch.no_grad():
        assert rel_err(model(lat, t, encoder_hidden_states=txt, inpaint_latents=inp).sample,
                       ref(lat, t, encoder_hidden_states=txt, inpaint_latents=inp).sample) <= 1e-5

def test_load_dtype_and_device_map(small_pair, tmp_path):
    cfg, model = small_pair
    model.to(torch.bfloat16).save_pretrained(tmp_path); model.float()
    m = Model.from_pretrained(tmp_path, torch_dtype="float32", device_map={"": "cpu"})
    assert m.dtype == torch.float32 and m.device.type == "cpu"
    for k, v in model.state_dict().items(): assert torch.equal(m.state_dict()[k], v.bfloat16().float())
    with pytest.raises(InputError, match="single target device"): Model.from_pretrained(tmp_path, device_map="auto")
    with pytest.raises(InputError, match="does not support"): Model.from_pretrained(tmp_path, variant="fp16")

RSS_SCRIPT = textwrap.dedent("""
    import json, os, sys, resource, torch
    from easyanimate.transformer import EasyAnimateTransformer3DModel
    def status(key): return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) * 1024
    before = status('VmRSS:')
    try: open('/proc/self/clear_refs', 'w').write('5')   # reset the peak-RSS mark to the current RSS
    except OSError: pass
    m = EasyAnimateTransformer3DModel.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)
    peak = max(status('VmHWM:'), 0)
    weights = sum(p.numel() * p.element_size() for p in m.parameters())
    print(json.dumps(dict(before=before, peak=peak, weights=weights, dtype=str(m.dtype))))
""")

def test_sharded_load_peak_ram(tmp_path):
    "Peak host-RAM growth of loading a sharded ~300 MB bf16 checkpoint stays near the weights' size."
    cfg = dict(num_attention_heads=16, attention_head_dim=64, in_channels=16, out_channels=16, patch_size=2, num_layers=5,
               mmdit_layers=5, time_embed_dim=512, text_embed_dim=1024, add_norm_text_encoder=True)
    m = random_weights_(empty_model(cfg, torch.bfloat16), "cpu")
    m.save_pretrained(tmp_path, max_shard_size="64MB"); del m
    assert (tmp_path / WEIGHTS_INDEX_NAME).exists() and len(list(tmp_path.glob("*.safetensors"))) >= 4
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = (r["peak"] - r["before"]) / r["weights"]
    print(f"weights {r['weights'] / 2**20:.0f} MiB bf16, peak RSS growth {(r['peak'] - r['before']) / 2**20:.0f} MiB, ratio {ratio:.2f}")
    assert r["dtype"] == "torch.bfloat16" and 250 * 2**20 < r["weights"] < 400 * 2**20
    assert ratio <= 1.5

# ---------------------------------------------------------------- faults
def test_wrong_channels_name_expected_got_and_variant():
    m = Model(**tiny(in_channels=48)).eval()
    lat, txt = torch.randn(1, 16, 1, 4, 4), torch.randn(1, 3, 20)
    with pytest.raises(InputError, match=r"Control model \(in_channels=48\) expects 48 .* got 33 \(hidden_states 16 \+ inpaint_latents 17"):
        m(lat, 1.0, encoder_hidden_states=txt, inpaint_latents=torch.randn(1, 17, 1, 4, 4))
    with pytest.raises(InputError, match="must match hidden_states"):
        m(lat, 1.0, encoder_hidden_states=txt, control_latents=torch.randn(1, 32, 2, 4, 4))

def test_latent_size_not_divisible_by_patch():
    m = Model(**tiny()).eval()
    with pytest.raises(SizeError, match="multiples of the patch size 2; got 5x6"):
        m(torch.randn(1, 16, 1, 5, 6), 1.0, encoder_hidden_states=torch.randn(1, 3, 20))

def test_no_weights_in_folder(tmp_path):
    Model(**tiny()).save_config(tmp_path)
    with pytest.raises(WeightsError, match=f"No transformer weights found in {tmp_path}: expected {WEIGHTS_NAME}"):
        Model.from_pretrained(tmp_path)
    torch.save({}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsError, match="Only safetensors"): Model.from_pretrained(tmp_path)
    with pytest.raises(WeightsError, match="is not a folder"): Model.from_pretrained(tmp_path / "nope")

def test_truncated_file(small_pair, tmp_path):
    cfg, model = small_pair
    model.save_pretrained(tmp_path)
    f = tmp_path / WEIGHTS_NAME
    data = f.read_bytes(); f.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsError, match=f"Cannot read {f}.*truncated or corrupt"): Model.from_pretrained(tmp_path)

def test_missing_shard(small_pair, tmp_path):
    cfg, model = small_pair
    model.save_pretrained(tmp_path, max_shard_size="50KB")
    victim = sorted(tmp_path.glob("*-of-*.safetensors"))[1]; victim.unlink()
    with pytest.raises(WeightsError, match=f"missing from {tmp_path}.*{victim.name}"): Model.from_pretrained(tmp_path)

def test_missing_and_unexpected_keys_are_listed(small_pair, tmp_path):
    cfg, model = small_pair
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    del sd["transformer_blocks.1.attn1.to_k.bias"], sd["proj_out.weight"]
    sd["transformer_blocks.0.attn1.extra.weight"] = torch.zeros(2)
    tmp_path.mkdir(exist_ok=True); model.save_config(tmp_path); save_file(sd, tmp_path / WEIGHTS_NAME)
    with pytest.raises(WeightsError) as e: Model.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing (2): proj_out.weight, transformer_blocks.1.attn1.to_k.bias" in msg
    assert "unexpected (1): transformer_blocks.0.attn1.extra.weight" in msg

def test_config_does_not_fit_weights(small_pair, tmp_path):
    cfg, model = small_pair   # InP weights (33 channels) with a T2V config
    model.save_pretrained(tmp_path)
    c = json.loads((tmp_path / "config.json").read_text()); c["in_channels"] = 16
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(WeightsError, match=r"shape mismatch .*proj.weight \(32, 33, 2, 2\) vs \(32, 16, 2, 2\)"):
        Model.from_pretrained(tmp_path)

# ---------------------------------------------------------------- training and speed hooks
def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    m = Model(**tiny(num_layers=3, mmdit_layers=2)).train()
    lat, txt = torch.randn(2, 16, 2, 4, 6), torch.randn(2, 5, 20)
    def grads():
        m.zero_grad(); m(lat, torch.tensor([10.0, 990.0]), encoder_hidden_states=txt).sample.pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    g0 = grads(); m.enable_gradient_checkpointing(); g1 = grads()
    assert m.gradient_checkpointing and g0.keys() == g1.keys() and len(g0) > 50
    for n in g0: torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7)

def test_attention_backends_agree():
    q, k, v = torch.randn(3, 2, 3, 17, 16).unbind(0)
    ref = attention(q, k, v)
    for b in ("math", "flash"):  # the kernels PyTorch has on CPU
        with attention_backend(b): torch.testing.assert_close(attention(q, k, v), ref, rtol=1e-5, atol=1e-5)

def test_regional_compile_traces_blocks_without_graph_breaks():
    m = Model(**tiny(num_layers=2, mmdit_layers=1)).eval()
    lat, txt = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 3, 20)
    with torch.no_grad(): want = m(lat, 5.0, encoder_hidden_states=txt).sample
    m.compile_repeated_blocks(backend="eager", fullgraph=True)
    with torch.no_grad(): got = m(lat, 5.0, encoder_hidden_states=txt).sample
    torch.testing.assert_close(got, want)

def test_peft_lora_adapter():
    from peft import LoraConfig
    m = Model(**tiny()).eval()
    lat, txt = torch.randn(1, 16, 1, 4, 4), torch.randn(1, 3, 20)
    with torch.no_grad(): base = m(lat, 5.0, encoder_hidden_states=txt).sample
    m.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "add_q_proj"], init_lora_weights=False))
    with torch.no_grad(): lora = m(lat, 5.0, encoder_hidden_states=txt).sample
    assert rel_err(lora, base) > 1e-4

def test_rope_cache_made_in_inference_mode_works_with_autograd():
    m = Model(**tiny()).train()
    lat, txt = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 3, 20)
    with torch.inference_mode(): m(lat, 5.0, encoder_hidden_states=txt)   # fills the RoPE cache inside inference mode
    m(lat, 5.0, encoder_hidden_states=txt).sample.sum().backward()          # then trains with the cached tensors
    assert m.proj.weight.grad is not None and len(m._rope_cache) == 1
