"The shared denoising loop: parity with diffusers' EasyAnimate loop, every sampler, seeds, strength, interruption."
import pytest, torch
from diffusers import EasyAnimatePipeline as DiffusersT2V
from easyanimate.core import make_generator
from easyanimate.sampler import SAMPLERS, Interrupted, denoise, make_scheduler, noise_latents, retrieve_timesteps
from easyanimate.text import encode_prompts
from easyanimate.testing import make_tiny_components


@pytest.fixture(scope="module")
def parts():
    from diffusers import AutoencoderKLMagvit, EasyAnimateTransformer3DModel
    from easyanimate.testing import make_tiny_transformer, make_tiny_vae
    c = make_tiny_components("t2v")
    c["transformer"] = make_tiny_transformer(16, cls=EasyAnimateTransformer3DModel)
    c["vae"] = make_tiny_vae(cls=AutoencoderKLMagvit)
    return c


@pytest.mark.parametrize("sampler", ["Flow", "Euler A", "DDIM"])
def test_loop_matches_diffusers_pipeline_loop(parts, sampler):
    "Our loop around the same transformer gives the latents diffusers' EasyAnimatePipeline gives (output_type='latent')."
    sched = make_scheduler(sampler, parts["scheduler"].config)
    pipe = DiffusersT2V(**{**parts, "scheduler": sched}).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_frames=9, height=64, width=64, num_inference_steps=4, guidance_scale=6.0)
    ref = pipe("A panda plays a guitar.", negative_prompt="ugly", generator=make_generator(3), output_type="latent", **kw).frames

    pe = encode_prompts(parts["text_encoder"], parts["tokenizer"], "A panda plays a guitar.", negative_prompt="ugly")
    text = torch.cat([pe.negative_prompt_embeds, pe.prompt_embeds])
    sch = make_scheduler(sampler, parts["scheduler"].config)
    ts, _ = retrieve_timesteps(sch, 4)
    gen = make_generator(3)
    lat = torch.randn(1, 16, 3, 8, 8, generator=gen) * getattr(sch, "init_noise_sigma", 1.0)
    model_fn = lambda x, t: parts["transformer"](x, t, encoder_hidden_states=text, return_dict=False)[0]
    with torch.no_grad(): ours = denoise(model_fn, lat, sch, ts, guidance_scale=6.0, generator=gen, progress=False)
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_and_is_seeded(sampler):
    def run(seed):
        sch = make_scheduler(sampler)
        ts, n = retrieve_timesteps(sch, 6)
        lat = torch.randn(1, 4, 2, 4, 4, generator=make_generator(0)) * getattr(sch, "init_noise_sigma", 1.0)
        return denoise(lambda x, t: 0.1 * x + 0.01 * t.view(-1, 1, 1, 1, 1) / 1000, lat, sch, ts, guidance_scale=3.0,
                       generator=make_generator(seed), progress=False)
    a, b = run(1), run(1)
    assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("strength,steps,expected", [(1.0, 10, 10), (0.7, 10, 7), (0.5, 25, 12), (0.05, 25, 1)])
def test_strength_skips_the_first_steps(strength, steps, expected):
    full = make_scheduler("Flow"); retrieve_timesteps(full, steps)
    sch = make_scheduler("Flow")
    ts, n = retrieve_timesteps(sch, steps, strength=strength)
    assert n == expected == len(ts)
    assert torch.equal(ts, full.timesteps[steps - expected:])


@pytest.mark.parametrize("shift,strength", [(1.0, 1.0), (3.0, 0.7), (2.0, 0.3)])
def test_flow_with_ideal_velocity_recovers_the_data(shift, strength):
    "Straight paths: with the exact velocity toward x0, Euler reaches x0 from any start level, in any number of steps."
    x0 = torch.randn(1, 16, 3, 4, 4, generator=make_generator(1))
    sch = make_scheduler("Flow", {"shift": shift})
    ts, _ = retrieve_timesteps(sch, 8, strength=strength)
    start = noise_latents(sch, x0, torch.randn(x0.shape, generator=make_generator(2)), ts[:1]) if strength < 1 else torch.randn(x0.shape)
    out = denoise(lambda x, t: (x - x0) / (t.view(-1, 1, 1, 1, 1) / 1000), start, sch, ts, guidance_scale=1.0, progress=False)
    assert (out - x0).abs().max() < 1e-4


def test_stop_flag_between_steps():
    state = {"steps": 0, "stop": False}
    def cb(i, t, lat):
        state["steps"] += 1
        if i == 1: state["stop"] = True  # e.g. a Stop button pressed during step 2
    sch = make_scheduler("Flow"); ts, _ = retrieve_timesteps(sch, 10)
    with pytest.raises(Interrupted) as e:
        denoise(lambda x, t: torch.zeros_like(x), torch.randn(1, 4, 1, 2, 2), sch, ts, guidance_scale=1.0,
                callback=cb, should_stop=lambda: state["stop"], progress=False)
    assert e.value.step == 2 and state["steps"] == 2 and e.value.latents.shape == (1, 4, 1, 2, 2)
