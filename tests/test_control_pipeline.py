"Control pipeline: parity with diffusers' EasyAnimateControlPipeline, load_pipeline dispatch, bad input, the control example notebook."
from pathlib import Path
import numpy as np, pytest, torch
import diffusers
from diffusers import EasyAnimateControlPipeline as DiffusersControl
from easyanimate.core import InputError, MediaReadError, frames_to_tensor, make_generator
from easyanimate.control import camera_control_video, camera_preset, trajectory_control_video, write_pose_file
from easyanimate.control_pipeline import EasyAnimateControlPipeline
from easyanimate.pipeline import load_pipeline
from easyanimate.testing import (make_tiny_model_folder, make_tiny_scheduler, make_tiny_text_encoder, make_tiny_tokenizer,
                                 make_tiny_transformer, make_tiny_vae, model_classes)
from easyanimate.video_io import video_info, write_video

RUN = dict(num_frames=9, height=64, width=64, num_inference_steps=3, guidance_scale=6.0)
PROMPT, NEG = "A panda plays a guitar in a bamboo forest.", "ugly"
EXAMPLE = Path(__file__).resolve().parents[1] / "nbs" / "examples" / "control.ipynb"


def rel_err(a, b): return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@torch.no_grad()
def run_diffusers(ref, **kwargs):
    """diffusers' final latents and, decoded with its own VAE, the videos (N, F, H, W, 3) in [0, 1].
    (Its control pipeline cannot decode itself: output_type='np' calls a decode_latents it does not have.)"""
    latents = ref(output_type="latent", **kwargs).frames
    video = ref.vae.decode(latents / ref.vae.config.scaling_factor, return_dict=False)[0]
    return latents, (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()


@pytest.fixture(scope="module")
def text_parts(tmp_path_factory):
    tok = make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    return tok, make_tiny_text_encoder(len(tok))


def pair(in_channels, text_parts):
    "Our control pipeline and diffusers' with identical weights."
    tok, te = text_parts
    d_vae = make_tiny_vae(cls=diffusers.AutoencoderKLMagvit)
    d_tr = make_tiny_transformer(in_channels, cls=diffusers.EasyAnimateTransformer3DModel)
    vae_cls, tr_cls = model_classes()
    vae = make_tiny_vae(seed=1, cls=vae_cls); vae.load_state_dict(d_vae.state_dict())
    tr = make_tiny_transformer(in_channels, seed=1, cls=tr_cls); tr.load_state_dict(d_tr.state_dict())
    ref = DiffusersControl(vae=d_vae, text_encoder=te, tokenizer=tok, transformer=d_tr, scheduler=make_tiny_scheduler())
    ref.set_progress_bar_config(disable=True)
    # diffusers 0.42's control pipeline passes text_encoder_index= to its own encode_prompt, which does not take it: drop it
    encode = ref.encode_prompt
    ref.encode_prompt = lambda *args, text_encoder_index=0, **kwargs: encode(*args, **kwargs)
    return EasyAnimateControlPipeline(vae=vae, text_encoder=te, tokenizer=tok, transformer=tr, scheduler=make_tiny_scheduler()), ref


@pytest.fixture(scope="module")
def control_pair(text_parts): return pair(48, text_parts)

@pytest.fixture(scope="module")
def camera_pair(text_parts): return pair(38, text_parts)


def moving_video(n=9, h=64, w=64, seed=0):
    g = np.random.default_rng(seed)
    base = np.kron(g.integers(0, 256, (h // 16, w // 16, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    return np.stack([np.roll(base, 3 * i, axis=1) for i in range(n)])


# ---------------------------------------------------------------------------------------------------------------- parity
# negative_prompt is passed explicitly: diffusers' port fails on None, ours uses the original's default negative prompt.
@pytest.mark.parametrize("with_ref", [False, True])
def test_control_video_parity_with_diffusers(control_pair, with_ref):
    ours, ref = control_pair
    video = frames_to_tensor(moving_video())  # (1, 3, 9, 64, 64) in [-1, 1]
    image = frames_to_tensor(moving_video(1, seed=3)) if with_ref else None  # (1, 3, 1, 64, 64)
    zb, b = run_diffusers(ref, prompt=PROMPT, negative_prompt=NEG, control_video=video, ref_image=image, generator=make_generator(5), **RUN)
    out = ours(PROMPT, negative_prompt=NEG, control_video=video, ref_image=image, generator=make_generator(5), progress=False, **RUN)
    assert out.videos.shape == b.shape == (1, 9, 64, 64, 3)
    err, zerr = rel_err(out.videos, b), rel_err(out.latents, zb)
    print(f"control video{' + reference' if with_ref else ''}: rel err video {err:.2e}, latents {zerr:.2e}")
    assert err <= 1e-4 and zerr <= 1e-4


def test_camera_parity_with_diffusers(camera_pair):
    ours, ref = camera_pair
    cam = camera_control_video(camera_preset("Pan Left+Zoom In", 9), 9, 64, 64)  # (1, 6, 9, 64, 64) pixel Plücker
    zb, b = run_diffusers(ref, prompt=PROMPT, negative_prompt=NEG, control_camera_video=cam, generator=make_generator(5), **RUN)
    out = ours(PROMPT, negative_prompt=NEG, camera=cam, generator=make_generator(5), progress=False, **RUN)
    err, zerr = rel_err(out.videos, b), rel_err(out.latents, zb)
    print(f"camera: rel err video {err:.2e}, latents {zerr:.2e}")
    assert out.videos.shape == b.shape and err <= 1e-4 and zerr <= 1e-4


# ------------------------------------------------------------------------------------------------------- inputs / outputs
def test_inputs_change_the_output_and_every_sampler_runs(control_pair, tmp_path):
    ours, _ = control_pair
    kw = dict(negative_prompt=NEG, num_frames=5, height=32, width=32, num_inference_steps=2, seed=1, progress=False)
    traj = trajectory_control_video([[(0, 4, 4), (4, 28, 28)]], 5, 32, 32)
    a = ours(PROMPT, control_video=traj, **kw).videos
    assert not np.allclose(a, ours(PROMPT, **kw).videos)  # no control video: zero control latents
    write_video(tmp_path / "c.mp4", moving_video(6, 32, 32), fps=8)  # a file, fewer than 49 frames, resized
    assert ours(PROMPT, control_video=tmp_path / "c.mp4", **kw).videos.shape == (1, 5, 32, 32, 3)
    for s in ("Euler", "Euler A", "DPM++", "DDIM"):
        assert np.isfinite(ours(PROMPT, control_video=traj, sampler=s, **kw).videos).all()
    out = ours(PROMPT, control_video=traj, **kw)
    saved = out.save(tmp_path / "out.mp4")
    info = video_info(saved); assert (info["frames"], info["width"], info["height"]) == (5, 32, 32)


def test_camera_inputs_agree(camera_pair, tmp_path):
    ours, _ = camera_pair
    kw = dict(negative_prompt=NEG, num_frames=5, height=32, width=32, num_inference_steps=2, seed=1, progress=False)
    path = camera_preset("Pan Up", 5)
    write_pose_file(tmp_path / "pan.txt", path)
    a = ours(PROMPT, camera=path, **kw).videos
    np.testing.assert_allclose(ours(PROMPT, camera=tmp_path / "pan.txt", camera_fps=24, **kw).videos, a, atol=1e-5)  # a file: 24 fps poses
    np.testing.assert_allclose(ours(PROMPT, camera=camera_control_video(path, 5, 32, 32), **kw).videos, a, atol=1e-5)


def test_load_pipeline_picks_the_control_pipeline(tmp_path):
    for variant, n, name in (("control", 48, "Control"), ("control_camera", 38, "Control-Camera")):
        pipe = load_pipeline(make_tiny_model_folder(tmp_path / variant, "original", variant), device="cpu")
        assert isinstance(pipe, EasyAnimateControlPipeline) and pipe.transformer.config.in_channels == n and pipe.variant == name


# ---------------------------------------------------------------------------------------------------------------- bad input
def test_bad_input(control_pair, camera_pair, tmp_path):
    ours, _ = control_pair; cam_pipe, _ = camera_pair
    kw = dict(negative_prompt=NEG, num_frames=9, height=32, width=32, num_inference_steps=1, progress=False)
    with pytest.raises(InputError, match="5 frames but 9"):
        ours(PROMPT, control_video=trajectory_control_video([[(0, 4, 4)]], 5, 32, 32), **kw)
    write_video(tmp_path / "short.mp4", moving_video(5, 32, 32), fps=8)
    with pytest.raises(InputError): ours(PROMPT, control_video=tmp_path / "short.mp4", **kw)
    with pytest.raises(MediaReadError, match="no such file"): ours(PROMPT, ref_image=tmp_path / "missing.png", **kw)
    with pytest.raises(InputError, match=r"Control model \(in_channels 48\).*Control-Camera model \(in_channels 38\)"):
        ours(PROMPT, camera=camera_preset("Pan Left", 9), **kw)
    with pytest.raises(InputError, match=r"Control-Camera model \(in_channels 38\).*not a control video"):
        cam_pipe(PROMPT, control_video=trajectory_control_video([[(0, 4, 4)]], 9, 32, 32), **kw)
    with pytest.raises(InputError, match="not no camera input"): cam_pipe(PROMPT, **kw)
    with pytest.raises(InputError, match=r"\(1, 6, F, H, W\)"): cam_pipe(PROMPT, camera=torch.zeros(1, 3, 9, 32, 32), **kw)
    with pytest.raises(InputError, match="in_channels in \\(48, 38\\)"):
        EasyAnimateControlPipeline(vae=ours.vae, text_encoder=ours.text_encoder, tokenizer=ours.tokenizer,
                                   transformer=make_tiny_transformer(33), scheduler=make_tiny_scheduler())


# ---------------------------------------------------------------------------------------------------------------- example
@pytest.fixture(scope="module")
def example_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-models")
    return {v: str(make_tiny_model_folder(root / v, "diffusers", v)) for v in ("control", "control_camera")}


@pytest.mark.parametrize("mode", ["canny", "trajectory", "camera"])
def test_control_notebook(example_models, tmp_path, mode):
    import papermill as pm
    write_video(tmp_path / "in.mp4", moving_video(12, 64, 96), fps=8)
    out = tmp_path / f"{mode}.mp4"
    params = dict(model_dir=example_models["control_camera" if mode == "camera" else "control"], mode=mode,
                  control_video=str(tmp_path / "in.mp4"), trajectory_points=[[[0, 5, 5], [4, 40, 30]]], camera_preset="Zoom In",
                  prompt="A cat plays the guitar.", frames=5, height=48, width=64, steps=2, guidance=6.0, seed=0, device="cpu",
                  output_path=str(out))
    pm.execute_notebook(str(EXAMPLE), str(tmp_path / "run.ipynb"), kernel_name="python3", language="python",
                        parameters=params, progress_bar=False, cwd=str(tmp_path))
    info = video_info(out)
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (5, 64, 48, 8.0)
