"Memory modes, fp8 weights and TeaCache on the CPU (tiny random models); speed and GPU memory are in bench/bench_speed.py."
import pytest
import torch
import torch.nn as nn

from easyanimate.core import InputError
from easyanimate.offload import (MEMORY_MODES, Float8Linear, check_memory_mode, enable_memory_mode, quantize_fp8_,
                                 quantize_rowwise, weight_bytes)
from easyanimate.pipeline import EasyAnimatePipeline, MEMORY_MODES as PIPELINE_MODES, load_pipeline
from easyanimate.teacache import (TEACACHE_COEFFICIENTS, disable_teacache, enable_teacache, rescale,
                                  sample_with_transformer, teacache_of)
from easyanimate.testing import (make_tiny_components, make_tiny_model_folder, make_tiny_scheduler, make_tiny_text_encoder,
                                 make_tiny_transformer, make_tiny_vae)


def rel(a, b): return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def components():
    return make_tiny_components()


def tiny_pipe(components):
    # a fresh transformer and VAE per pipeline (modes change them in place); the tokenizer is shared
    return EasyAnimatePipeline(vae=make_tiny_vae(), text_encoder=make_tiny_text_encoder(len(components["tokenizer"])),
                               tokenizer=components["tokenizer"], transformer=make_tiny_transformer(),
                               scheduler=make_tiny_scheduler())


def run(pipe, steps=3, **kw):
    return pipe("a cat", num_frames=5, height=32, width=32, num_inference_steps=steps, seed=1, output_type="latent",
                progress=False, **kw).latents


# -- memory modes ---------------------------------------------------------------------------------------------------
def test_modes_validated():
    assert MEMORY_MODES[0] == "none" and len(MEMORY_MODES) == 5
    assert check_memory_mode(None) == "none"
    for m in MEMORY_MODES: assert check_memory_mode(m) == m
    with pytest.raises(InputError, match="memory_mode must be one of"): check_memory_mode("lowvram")
    assert PIPELINE_MODES[0] is None and set(PIPELINE_MODES[1:]) == set(MEMORY_MODES[1:])


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_every_mode_runs_on_cpu(components, mode):
    "On a CPU device every mode is accepted; offloading is a no-op, so outputs equal mode 'none' (qfloat8: close)."
    ref = run(tiny_pipe(components))
    pipe = tiny_pipe(components).enable_memory_mode(mode, device="cpu")
    assert pipe._memory_mode == mode
    out = run(pipe)
    is_fp8 = isinstance(pipe.transformer.transformer_blocks[0].attn1.to_q, Float8Linear)
    assert is_fp8 == (mode == "model_cpu_offload_and_qfloat8")
    if is_fp8: assert 0 < rel(out, ref) < 0.05
    else: assert torch.equal(out, ref)


def test_decode_budget_tiles_vae(components):
    "Low-memory modes tile the VAE decode to their budget; a tiny budget forces tiles."
    need = make_tiny_vae().decode_memory_estimate(192, 192, 5, torch.float32) / 2**30
    pipe = tiny_pipe(components).enable_memory_mode("group_offload", device="cpu", vae_budget_gib=0.8 * need)
    out = pipe("a cat", num_frames=5, height=192, width=192, num_inference_steps=1, seed=1, progress=False)
    assert pipe.vae.use_tiling and out.videos.shape[1:] == (5, 192, 192, 3)
    pipe = tiny_pipe(components).enable_memory_mode("none", device="cpu")
    pipe("a cat", num_frames=5, height=64, width=64, num_inference_steps=1, seed=1, progress=False)
    assert not pipe.vae.use_tiling


def test_load_pipeline_memory_mode(tmp_path):
    folder = make_tiny_model_folder(tmp_path / "m", layout="diffusers", variant="t2v")
    pipe = load_pipeline(folder, device="cpu", memory_mode="model_cpu_offload_and_qfloat8")
    assert isinstance(pipe.transformer.transformer_blocks[0].ff.net[2], Float8Linear)
    assert pipe.transformer.dtype == torch.float32  # compute dtype, read by the pipeline, is unchanged
    with pytest.raises(InputError, match="memory_mode must be one of"):
        load_pipeline(folder, device="cpu", memory_mode="fp8")


# -- fp8 ------------------------------------------------------------------------------------------------------------
def test_fp8_storage_round_trip():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48).to(torch.bfloat16)
    f8 = Float8Linear.from_linear(lin)
    assert f8.weight.dtype == torch.float8_e4m3fn and f8.weight_scale.dtype == torch.float32
    assert rel(f8.dequantize(torch.float32), lin.weight) < 0.05
    x = torch.randn(3, 7, 64, dtype=torch.bfloat16)
    assert rel(f8(x), lin(x)) < 0.05
    # state dict round trip and dtype casts keep the storage
    g = Float8Linear(64, 48)
    g.load_state_dict(f8.state_dict())
    assert torch.equal(g(x), f8(x))
    g.to(torch.float32)
    assert g.weight.dtype == torch.float8_e4m3fn and g.weight_scale.dtype == torch.float32


def test_rowwise_scale_beats_plain_cast():
    w = torch.randn(16, 128) * 0.01  # trained-weight magnitudes: a plain e4m3 cast lands near its subnormals
    q, s = quantize_rowwise(w)
    assert rel(q.float() * s[:, None], w) < 0.5 * rel(w.to(torch.float8_e4m3fn).float(), w)


def test_fp8_compute_close():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32).to(torch.bfloat16)
    x = torch.randn(2, 9, 64, dtype=torch.bfloat16)
    out = Float8Linear.from_linear(lin, "scaled_mm")(x)
    assert out.shape == (2, 9, 32) and out.dtype == torch.bfloat16 and rel(out, lin(x)) < 0.08
    with pytest.raises(InputError): Float8Linear(4, 4, compute="int4")


def test_quantize_transformer():
    model = make_tiny_transformer().to(torch.bfloat16)
    lat, txt = torch.randn(2, 16, 2, 8, 8, dtype=torch.bfloat16), torch.randn(2, 6, 32, dtype=torch.bfloat16)
    ref = model(lat, 500.0, encoder_hidden_states=txt, return_dict=False)[0]
    before = weight_bytes(model)
    n = quantize_fp8_(model)
    assert n == 2 * 14  # per MMDiT block: 6 q/k/v + 2 out + 4 MLP + 2 adaLN
    assert weight_bytes(model) < 0.75 * before and model.dtype == torch.bfloat16
    out = model(lat, 500.0, encoder_hidden_states=txt, return_dict=False)[0]
    assert 0 < rel(out, ref) < 0.05
    assert type(model.proj_out) is nn.Linear and type(model.transformer_blocks[0].norm1.norm).__name__ == "FP32LayerNorm"


# -- TeaCache -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampling():
    torch.manual_seed(0)
    model = make_tiny_transformer(num_layers=4)
    lat, text = torch.randn(1, 16, 3, 16, 16), torch.randn(2, 8, 32)
    return model, lat, text, sample_with_transformer(model, lat, text, num_steps=20)


def test_teacache_threshold_zero_is_exact(sampling):
    model, lat, text, exact = sampling
    cache = enable_teacache(model, 0.0)
    try: out = sample_with_transformer(model, lat, text, num_steps=20)
    finally: disable_teacache(model)
    assert torch.equal(out, exact) and all(cache.history[-1]) and len(cache.history[-1]) == 20


def test_teacache_skips_and_stays_close(sampling):
    model, lat, text, exact = sampling
    cache = enable_teacache(model, 0.3)
    try:
        out = sample_with_transformer(model, lat, text, num_steps=20)
        out2 = sample_with_transformer(model, lat, text, num_steps=20)  # a second run starts fresh
    finally: disable_teacache(model)
    run = cache.history[-1]
    assert len(cache.history) == 2 and cache.history[0] == run and torch.equal(out, out2)
    assert run[0] and run[-1], "first and last step are always computed"
    assert sum(run) < len(run), "a large threshold must skip steps"
    assert 0 < rel(out, exact) < 0.2
    assert teacache_of(model) is None and torch.equal(sample_with_transformer(model, lat, text, num_steps=20), exact)


def test_teacache_num_steps_without_scheduler(sampling):
    "Used on a bare transformer with `num_steps`: the last step is computed, and runs are counted."
    model, lat, text, _ = sampling
    cache = enable_teacache(model, 10.0, "7b", num_steps=6)  # a huge threshold: only first and last run
    try:
        with torch.no_grad():
            for _ in range(2):
                for t in torch.linspace(999, 10, 6):
                    model(torch.cat([lat] * 2), t.expand(2), encoder_hidden_states=text)
    finally: disable_teacache(model)
    assert cache.history == [[True, False, False, False, False, True]] * 2


def test_teacache_pipeline(components):
    "On a pipeline the cache learns the run's length from the scheduler; threshold 0 equals the uncached run."
    pipe = tiny_pipe(components)
    ref = run(pipe, steps=8)
    cache = pipe.enable_teacache(0.0)
    assert torch.equal(run(pipe, steps=8), ref)
    cache = pipe.enable_teacache(10.0)
    out = run(pipe, steps=8)
    assert cache.history[-1] == [True] + [False] * 6 + [True]
    assert torch.isfinite(out).all()
    disable_teacache(pipe)
    assert torch.equal(run(pipe, steps=8), ref)


def test_teacache_inputs():
    assert rescale(0.0, TEACACHE_COEFFICIENTS["12b"]) == pytest.approx(0.0136149)
    with pytest.raises(InputError): enable_teacache(make_tiny_transformer(), 0.1, "3b")
    with pytest.raises(InputError): enable_teacache(make_tiny_transformer(), -1.0)
    with pytest.raises(InputError): enable_teacache(nn.Linear(2, 2))
