"""The studio's logic without a browser: checks, inputs per tab, generate + sidecar, the papermill command (run for
real once), LoRA calls, uploads, Stop and error display of the widget app. (tests/test_studio_browser.py clicks
through the real page.)"""
import datetime, json, shlex, subprocess, sys, threading, time
from pathlib import Path
import numpy as np, pytest
from easyanimate.core import InputError
from easyanimate.sampler import Interrupted
from easyanimate.studio import (CONTROL_SOURCES, PipelineCache, Studio, generate, list_results, notebook_parameters,
                                papermill_command, papermill_parameters, parse_points, pipeline_inputs, read_sidecar,
                                settings_problems)
from easyanimate.testing import make_tiny_model_folder
from easyanimate.video_io import read_frames, video_info, write_image, write_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio-models")
    return {v: make_tiny_model_folder(root / v, layout="original" if v == "inpaint" else "diffusers", variant=v)
            for v in ("t2v", "inpaint", "control", "control_camera")}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("studio-media")
    g = np.random.default_rng(0)
    image = np.kron(g.integers(0, 256, (4, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)  # 64x64
    write_image(d / "start.png", image)
    write_video(d / "input.mp4", np.stack([np.roll(image, 4 * i, axis=1) for i in range(9)]), fps=8)
    return d


@pytest.fixture(scope="module")
def cache(): return PipelineCache()


def base(models, **kw):
    return {**dict(model=str(models["t2v"]), prompt="a red ball", frames=5, height=64, width=64, steps=2, seed=3, device="cpu"), **kw}


def test_problems_name_each_bad_input(models, media):
    ok = base(models)
    assert settings_problems(ok) == []
    assert any("No start image" in p for p in settings_problems({**ok, "tab": "i2v", "model": str(models["inpaint"])}))
    assert any("needs a inpaint model" in p for p in settings_problems({**ok, "tab": "i2v", "image": str(media / "start.png")}))
    for frames in (0, 50, 53, -1): assert any("from 1 to 49" in p for p in settings_problems({**ok, "frames": frames}))
    assert any("4k+1" in p and "try 9" in p for p in settings_problems({**ok, "frames": 11}))
    assert any("height must be a positive multiple of 16" in p for p in settings_problems({**ok, "height": 72}))
    assert any("does not exist" in p for p in settings_problems({**ok, "tab": "i2v", "model": str(models["inpaint"]), "image": "/no/such.png"}))
    cam = {**ok, "tab": "control", "model": str(models["control"]), "control_source": "camera preset"}
    assert any("Control-Camera" in p for p in settings_problems(cam))
    assert settings_problems({**cam, "model": str(models["control_camera"])}) == []
    assert any("frame,x,y" in p for p in settings_problems({**cam, "control_source": "trajectory", "trajectory": "1,2"}))
    with pytest.raises(InputError, match="Frames must be"): generate({**ok, "frames": 60}, PipelineCache(loader=None))


def test_papermill_parameters_exist_in_the_examples(models):
    for tab, extra in [("t2v", {}), ("i2v", {"image": "a.png", "auto_size": True}), ("v2v", {"video": "a.mp4", "mask": "m.png"}),
                       *[("control", {"control_source": c, "trajectory": "0,1,2"}) for c in CONTROL_SOURCES]]:
        name, params = papermill_parameters({**base(models), "tab": tab, "memory_mode": "model_cpu_offload", "negative_prompt": "x", **extra}, "o.mp4")
        assert set(params) <= notebook_parameters(name), (tab, set(params) - notebook_parameters(name))
    name, params = papermill_parameters({**base(models), "tab": "i2v", "image": "a.png", "auto_size": True}, "o.mp4")
    assert (params["height"], params["width"]) == (None, None)


def test_generate_writes_video_and_sidecar_and_the_command_repeats_it(models, cache, tmp_path):
    steps = []
    rec = generate(base(models, seed=None), cache, tmp_path / "out", progress=lambda i, n: steps.append((i, n)), root=ROOT)
    assert steps == [(1, 2), (2, 2)]
    assert video_info(rec["path"])["frames"] == 5 and (rec["height"], rec["width"]) == (64, 64)
    side = read_sidecar(rec["path"])
    assert side["settings"]["seed"] == rec["seed"] is not None and side["settings"]["prompt"] == "a red ball"
    assert side["video"] == Path(rec["path"]).name and list_results(tmp_path / "out")[0]["path"] == rec["path"]
    # the papermill command, run as printed (from the repository root), makes the same video
    cmd = side["papermill"].replace(str(Path(rec["path"]).resolve()), str(tmp_path / "again.mp4"))
    cmd = cmd.replace("out.ipynb", shlex.quote(str(tmp_path / "run.ipynb")))
    assert cmd.startswith("papermill nbs/examples/t2v.ipynb")
    subprocess.run(shlex.split(cmd) + ["--kernel", "python3", "--no-progress-bar"], cwd=ROOT, check=True, capture_output=True)
    a, b = read_frames(rec["path"]), read_frames(tmp_path / "again.mp4")
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


def test_image_video_and_control_tabs(models, media, cache, tmp_path):
    inp = dict(model=str(models["inpaint"]))
    rec = generate(base(models, tab="i2v", image=str(media / "start.png"), end_image=str(media / "start.png"), **inp), cache, tmp_path)
    assert rec["frames"] == 5
    steps = []
    rec = generate(base(models, tab="v2v", video=str(media / "input.mp4"), mask=str(media / "start.png"), strength=0.5, steps=4, **inp),
                   cache, tmp_path, progress=lambda i, n: steps.append((i, n)))
    assert steps[-1] == (2, 2) and "-p strength 0.5" in rec["papermill"]
    traj = base(models, tab="control", model=str(models["control"]), control_source="trajectory", trajectory="0,10,10; 4,50,50")
    assert pipeline_inputs(traj)["control_video"].shape == (1, 3, 5, 64, 64)
    assert generate(traj, cache, tmp_path)["frames"] == 5
    canny = {**traj, "control_source": "canny", "control_video": str(media / "input.mp4")}
    assert pipeline_inputs(canny)["control_video"].shape == (1, 3, 5, 64, 64)
    cam = base(models, tab="control", model=str(models["control_camera"]), control_source="camera preset", camera_preset="Zoom In")
    rec = generate(cam, cache, tmp_path)
    assert rec["frames"] == 5 and "-p camera_preset 'Zoom In'" in rec["papermill"]
    assert len(list_results(tmp_path)) == 4


class FakePipe:
    "A pipeline stand-in that records LoRA calls."
    def __init__(self): self.calls = []
    def load_lora(self, path, scale): self.calls.append(("load", Path(path).name, scale))
    def unload_lora(self): self.calls.append(("unload",))


def test_lora_is_merged_once_and_swapped(tmp_path):
    c = PipelineCache(loader=lambda d, **kw: FakePipe())
    pipe = c.pipeline(str(tmp_path))
    c.apply_lora(str(tmp_path / "a.safetensors"), 0.5); c.apply_lora(str(tmp_path / "a.safetensors"), 0.5)
    c.apply_lora(str(tmp_path / "b.safetensors"), 0.8); c.apply_lora(None)
    assert pipe.calls == [("load", "a.safetensors", 0.5), ("unload",), ("load", "b.safetensors", 0.8), ("unload",)]
    assert c.pipeline(str(tmp_path)) is pipe  # cached
    plain = PipelineCache(loader=lambda d, **kw: object()); plain.pipeline(str(tmp_path))
    plain.apply_lora(None)
    with pytest.raises(InputError, match="LoRA loading is not available"): plain.apply_lora(str(tmp_path / "a.safetensors"))


def test_studio_form_upload_stop_and_errors(models, media, tmp_path, monkeypatch):
    monkeypatch.setenv("EASYANIMATE_STUDIO_MODELS", f"tiny={models['t2v']}")
    s = Studio(root=tmp_path, output_dir=tmp_path / "out", device="cpu")
    assert s.model.value == str(models["t2v"]) and s.lora.value == ""
    # an upload is saved under <output>/inputs and its path put in the box
    s.image_up.value = ({"name": "start.png", "type": "image/png", "size": 3, "content": memoryview((media / "start.png").read_bytes()),
                         "last_modified": datetime.datetime(2026, 1, 1)},)
    assert Path(s.image.value).is_file() and Path(s.image.value).parent == tmp_path / "out" / "inputs"
    # the settings round trip through the form
    want = {**base(models), "tab": "v2v", "video": str(media / "input.mp4"), "strength": 0.4, "negative_prompt": "blur",
            "control_source": "trajectory", "trajectory": "0,1,2"}
    s.set_settings(want)
    got = s.settings()
    assert all(got[k] == v for k, v in want.items()), {k: (got[k], v) for k, v in want.items() if got[k] != v}
    # Stop during a run: the progress callback sees the stop flag, nothing is saved
    s.set_settings({**base(models), "steps": 6})
    started = threading.Event()
    step = s._on_step
    def slow_step(i, n): started.set(); time.sleep(0.3); step(i, n)
    s._on_step = slow_step
    s.start(); assert started.wait(120); s.stop(); s.wait(60)
    assert "Stopped after" in s.status.value and list_results(tmp_path / "out") == []
    assert not s.generate_btn.disabled and s.stop_btn.disabled
    # an unexpected error: a short message and the traceback in the collapsed details box
    s._on_step = step
    s.cache = PipelineCache(loader=lambda d, **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    s.start(wait=True)
    assert "Unexpected error: RuntimeError: boom" in s.status.value and s.details_box.layout.display == ""
    assert "Traceback" in "".join(o.get("text", "") for o in s.details.outputs)
