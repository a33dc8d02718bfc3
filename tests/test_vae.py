"Tests of easyanimate.vae: parity with diffusers' AutoencoderKLMagvit, chunking, tiling, memory, loading, bad input."
import json, warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from easyanimate.core import FrameCountError, InputError, SizeError, WeightsError
from easyanimate.vae import (AutoencoderKLMagvit, CausalConv3d, ResnetBlock3D, TensorMemoryMeter, frame_group_norm,
                             reset_stream, stream_modules)

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLMagvit as DiffusersVAE

SMALL = dict(block_out_channels=[32, 32, 64, 64], norm_num_groups=8)
TINY = dict(block_out_channels=[16, 16, 32, 32], norm_num_groups=4, layers_per_block=1)


def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm()).item()


def video(frames, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h, w, generator=g) * 2 - 1


def randomise_norms(model, seed=0):
    "Random-init norms are the identity; perturb them so the norm weights are exercised."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n: p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def small_pair():
    torch.manual_seed(0)
    ref = randomise_norms(DiffusersVAE(**SMALL).eval())
    ours = AutoencoderKLMagvit(**SMALL).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


@pytest.mark.parametrize("frames,h,w", [(1, 32, 32), (5, 32, 48), (9, 48, 32), (17, 32, 32)])
def test_parity_with_diffusers(small_pair, frames, h, w):
    ours, ref = small_pair
    x = video(frames, h, w)
    with torch.no_grad():
        pr, po = ref.encode(x).latent_dist, ours.encode(x).latent_dist
        z = pr.mode()
        dr, do = ref.decode(z).sample, ours.decode(z).sample
    assert po.mean.shape == pr.mean.shape and do.shape == dr.shape == x.shape
    assert rel(po.mean, pr.mean) <= 1e-5 and rel(po.std, pr.std) <= 1e-5
    assert rel(do, dr) <= 1e-5


def test_default_structure_parity():
    "The default (V5.1) structure: strict load both ways, and equal outputs on a tiny input."
    torch.manual_seed(0)
    ref = DiffusersVAE().eval()
    sd = ref.state_dict()
    with torch.device("meta"): ours = AutoencoderKLMagvit()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    ours.load_state_dict(sd, strict=True, assign=True)
    ours.eval()
    ref.load_state_dict(ours.state_dict(), strict=True)        # and back
    for frames in (1, 5):
        x = video(frames, 32, 48, seed=frames)
        with torch.no_grad():
            pr, po = ref.encode(x).latent_dist, ours.encode(x).latent_dist
            dr, do = ref.decode(pr.mode()).sample, ours.decode(pr.mode()).sample
        assert rel(po.mean, pr.mean) <= 1e-5 and rel(po.std, pr.std) <= 1e-5 and rel(do, dr) <= 1e-5


def test_chunk_sizes_do_not_change_output():
    "Identical up to float32 rounding (measured <= 3e-6: different conv algorithms / summation orders)."
    torch.manual_seed(0)
    ours = randomise_norms(AutoencoderKLMagvit(**TINY).eval())
    x = video(17, 32, 32, seed=3)
    with torch.no_grad():
        means = []
        for chunk in (4, 8, 16):
            ours.set_chunking(encode_chunk=chunk)
            means.append(ours.encode(x).latent_dist.mean)
        z = means[0]
        outs = []
        for dc, sf, taps in [(1, 1, True), (2, 1, True), (5, 3, True), (16, 8, True), (2, 1, False)]:
            ours.set_chunking(decode_chunk=dc, stream_frames=sf)
            for m in ours.modules():
                if isinstance(m, CausalConv3d): m.split_taps = taps
            outs.append(ours.decode(z).sample)
    assert all(rel(m, means[0]) < 1e-5 for m in means[1:])
    assert all(rel(o, outs[0]) < 1e-5 for o in outs[1:])


def test_tiled_close_to_untiled_and_closer_than_diffusers():
    "Random weights exaggerate tiling differences (measured here: decode ours 0.277, diffusers 0.566; encode ours 0.093)."
    torch.manual_seed(0)
    ours = AutoencoderKLMagvit(**TINY).eval()
    ref = DiffusersVAE(**TINY).eval()
    ref.load_state_dict(ours.state_dict())
    x = F.avg_pool3d(video(5, 128, 192), (1, 9, 9), 1, (0, 4, 4))   # smooth, image-like
    with torch.no_grad():
        lat = ours.encode(x).latent_dist.mean
        untiled = ours.decode(lat).sample
        ours.enable_tiling(128, 128, 96, 96)
        tiled, tiled_lat = ours.decode(lat).sample, ours.encode(x).latent_dist.mean
        ref.enable_tiling(128, 128, tile_sample_stride_height=96, tile_sample_stride_width=96)
        ref_tiled = ref.decode(lat).sample
    err, err_lat, err_ref = rel(tiled, untiled), rel(tiled_lat, lat), rel(ref_tiled, untiled)
    assert err < 0.3 and err_lat < 0.12, (err, err_lat)
    assert err < 0.6 * err_ref, (err, err_ref)


def test_single_tile_equals_untiled():
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(**TINY).eval()
    z = torch.randn(1, 16, 2, 8, 8)
    with torch.no_grad():
        a = vae.decode(z).sample
        vae.enable_tiling(64, 64, 48, 48)
        b = vae.decode(z).sample
    assert torch.equal(a, b)


def test_memory_flat_in_frame_count():
    "The decoder's peak live tensor bytes minus the output video are the same for 9, 17 and 33 frames."
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(**TINY).eval()
    work = []
    for n in (9, 17, 33):
        z = torch.randn(1, 16, (n - 1) // 4 + 1, 4, 4)
        with torch.no_grad(), TensorMemoryMeter() as meter: out = vae.decode(z).sample
        out_bytes = out.numel() * out.element_size()
        assert meter.current == out_bytes        # nothing else left behind
        work.append(meter.peak - out_bytes)
    assert len(set(work)) == 1, work
    # and the caches are gone afterwards
    assert all(m.cache is None for m in vae.modules() if isinstance(m, CausalConv3d))


def test_meter_counts_what_it_should():
    with TensorMemoryMeter() as m:
        a = torch.zeros(1000)            # 4000 bytes
        b = a[:10]                       # a view: no new bytes
        c = a + 1                        # 4000 more
        del c
    assert m.peak == 8000 and m.current == 4000


def test_caches_cleared_after_an_error():
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(**TINY).eval()
    z = torch.randn(1, 16, 4, 4, 4)
    with torch.no_grad(): good = vae.decode(z).sample
    calls = {"n": 0}
    def boom(mod, inp):
        calls["n"] += 1
        if calls["n"] == 3: raise RuntimeError("boom")
    h = vae.decoder.up_blocks[2].register_forward_pre_hook(boom)
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"): vae.decode(z)
    h.remove()
    assert all(m.cache is None for m in vae.modules() if isinstance(m, CausalConv3d))
    with torch.no_grad(): again = vae.decode(z).sample
    assert torch.equal(good, again)


def test_grad_path_matches_and_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(**TINY)
    x = video(5, 16, 16)
    with torch.no_grad(): ref = vae(x).sample
    out = vae(x).sample                               # autograd on: the out-of-place path
    assert rel(out, ref) < 1e-5
    def grads():
        vae.zero_grad()
        z = vae.encode(x).latent_dist.mode()
        loss = vae.decode(z).sample.square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}
    l0, g0 = grads()
    vae.enable_gradient_checkpointing()
    l1, g1 = grads()
    vae.disable_gradient_checkpointing()
    assert torch.allclose(l0, l1) and g0.keys() == g1.keys() and len(g0) > 50
    assert max(rel(g1[k], g0[k]) for k in g0 if g0[k].norm() > 0) < 1e-5


def test_slicing_and_batch():
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(**TINY).eval()
    x = torch.cat([video(5, 16, 24, seed=1), video(5, 16, 24, seed=2)])
    with torch.no_grad():
        a, da = vae.encode(x).latent_dist.mean, None
        da = vae.decode(a).sample
        vae.enable_slicing()
        b, db = vae.encode(x).latent_dist.mean, vae.decode(a).sample
        vae.disable_slicing()
        single = vae.decode(a[1:]).sample
    assert rel(a, b) < 1e-5 and rel(db, da) < 1e-5 and da.shape == (2, 3, 5, 16, 24)
    assert rel(single, da[1:]) < 1e-5


def test_spatial_group_norm_off_runs():
    vae = AutoencoderKLMagvit(**TINY, spatial_group_norm=False).eval()
    with torch.no_grad(): out = vae(video(5, 16, 16)).sample
    assert out.shape == (1, 3, 5, 16, 16) and torch.isfinite(out).all()


def test_frame_group_norm_gpu_formula_matches_native():
    x = torch.randn(2, 16, 3, 8, 12) * 3 + 2
    w, b = torch.randn(16), torch.randn(16)
    ref = F.group_norm(x.permute(0, 2, 1, 3, 4).flatten(0, 1), 4, w, b, 1e-6).unflatten(0, (2, 3)).permute(0, 2, 1, 3, 4)
    for exact in (True, False):
        assert rel(frame_group_norm(x, 4, w, b, 1e-6, exact=exact), ref) < 1e-5


def test_diffusers_folder_loads_and_ours_loads_in_diffusers(small_pair, tmp_path):
    ours, ref = small_pair
    ref.save_pretrained(tmp_path / "d")
    loaded = AutoencoderKLMagvit.from_pretrained(tmp_path / "d")
    ours.save_pretrained(tmp_path / "o")
    back = DiffusersVAE.from_pretrained(tmp_path / "o")
    x = video(5, 16, 16)
    with torch.no_grad():
        z = ref.encode(x).latent_dist.mode()
        a, b, c = ref.decode(z).sample, loaded.decode(z).sample, back.decode(z).sample
    assert rel(b, a) <= 1e-5 and torch.equal(c, a)


def test_original_config(assets, tmp_path):
    cfg_path = assets / "configs" / "EasyAnimateV5.1-7b-zh-Control" / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert "mini_batch_encoder" in cfg and cfg["mid_block_use_attention"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # extra keys are dropped quietly
        with torch.device("meta"):
            ours = AutoencoderKLMagvit.from_config(AutoencoderKLMagvit.load_config(cfg_path.parent))
            ref = DiffusersVAE()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.config.scaling_factor == 0.7125 and ours.config.spatial_group_norm is True
    for key in ("in_channels", "latent_channels", "out_channels", "layers_per_block", "act_fn", "norm_num_groups"):
        assert ours.config[key] == ref.config[key]
    assert list(ours.config.block_out_channels) == list(ref.config.block_out_channels)
    # the same config with mid-block attention on is refused
    bad = tmp_path / "bad"; bad.mkdir()
    (bad / "config.json").write_text(json.dumps(dict(cfg, mid_block_use_attention=True)))
    with pytest.raises(WeightsError, match="mid_block_use_attention"):
        AutoencoderKLMagvit.from_config(AutoencoderKLMagvit.load_config(bad))


# bad input ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return AutoencoderKLMagvit(**TINY).eval()


@pytest.mark.parametrize("shape,err,msg", [
    ((1, 4, 5, 16, 16), InputError, "alpha"),                      # RGBA
    ((1, 5, 3, 16, 16), InputError, "permute(0, 2, 1, 3, 4)"),      # (B, F, C, H, W)
    ((1, 3, 16, 16), InputError, "unsqueeze(2)"),                   # an image without a frame axis
    ((1, 3, 6, 16, 16), FrameCountError, "5 or 9"),                 # not 4k+1
    ((1, 3, 5, 30, 16), SizeError, "multiples of 8"),               # height not divisible by 8
])
def test_bad_video(tiny, shape, err, msg):
    with pytest.raises(err, match=None) as e: tiny.encode(torch.zeros(shape))
    assert msg in str(e.value)


def test_bad_latents_and_settings(tiny):
    with pytest.raises(InputError, match="latent_dist.mode"): tiny.decode(torch.zeros(1, 32, 2, 2, 2))
    with pytest.raises(InputError, match="16"): tiny.decode(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(InputError, match="permute"): tiny.decode(torch.zeros(1, 2, 16, 2, 2))
    with pytest.raises(InputError, match="multiple of 4"): tiny.set_chunking(encode_chunk=6)
    with pytest.raises(InputError, match="positive integer"): tiny.set_chunking(decode_chunk=0)
    with pytest.raises(InputError, match="multiples of 8"): tiny.enable_tiling(100, 128)
    with pytest.raises(InputError, match="gaps"): tiny.enable_tiling(128, 128, 256, 256)
    tiny.disable_tiling()
    with pytest.raises(InputError, match="uint8"): tiny.encode(torch.zeros(1, 3, 1, 16, 16, dtype=torch.uint8))


def test_bad_weight_folders(tiny, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"): AutoencoderKLMagvit.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="config.json"): AutoencoderKLMagvit.from_pretrained(tmp_path / "empty")
    tiny.save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])              # truncated
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors") as e:
        AutoencoderKLMagvit.from_pretrained(tmp_path / "m")
    assert "truncated or corrupt" in str(e.value) and str(w) in str(e.value)
    w.unlink()
    with pytest.raises(WeightsError, match="no VAE weights") as e: AutoencoderKLMagvit.from_pretrained(tmp_path / "m")
    assert str(tmp_path / "m") in str(e.value) and "diffusion_pytorch_model.safetensors" in str(e.value)
    # subfolder layout: model/vae/
    tiny.save_pretrained(tmp_path / "model" / "vae")
    assert isinstance(AutoencoderKLMagvit.from_pretrained(tmp_path / "model", subfolder="vae"), AutoencoderKLMagvit)


def test_memory_estimate_and_auto_tiling():
    with torch.device("meta"): vae = AutoencoderKLMagvit()
    gib = lambda h, w, **k: vae.decode_memory_estimate(h, w, **k) / 2**30
    # calibrated on an H100 (bench/bench_vae.py): measured 2.80, 5.69, 9.75 GiB
    assert 2.6 < gib(384, 672) < 3.0 and 5.4 < gib(576, 1008) < 6.0 and 9.4 < gib(768, 1344) < 10.2
    assert vae.auto_tiling(384, 672, budget_gib=8) is None and not vae.use_tiling
    th, tw = vae.auto_tiling(768, 1344, budget_gib=8)
    assert vae.use_tiling and gib(768, 1344, tile=(th, tw)) <= 8 and th % 8 == 0 and tw % 8 == 0
