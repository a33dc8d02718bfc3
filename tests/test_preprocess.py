"""Data preprocessing (easyanimate.preprocess): split accuracy, motion ordering, filters, captions with a tiny Qwen2-VL,
resume after SIGKILL and after an exception, the exported dataset JSON, Ray vs process pool, and the example notebook.
Everything runs on small synthetic videos (96x64 at 10 fps) and tiny random models made here; nothing is downloaded."""
import json, os, signal, subprocess, sys, textwrap, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import easyanimate.preprocess as pp
from easyanimate.prompt import make_tiny_chat_lm, make_tiny_qwen2vl
from easyanimate.video_io import write_video

REPO = Path(__file__).resolve().parents[1]
FPS = 10
# (seconds, pan speed in px/frame): static, slow pan, a 2 s scene (dropped), fast pan, a 12 s slow pan (split in two),
# static, leftward pan. Cuts at the start of every scene after the first.
LONG_SCENES = [(4, 0), (5, 0.5), (2, 0), (3.5, 2), (12, 1), (4, 0), (6, -1.5)]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "A folder with the long synthetic video (and its true cuts) and a second short one."
    root = tmp_path_factory.mktemp("videos")
    cuts = pp.make_synthetic_video(root / "long.mp4", LONG_SCENES, fps=FPS, seed=1)
    pp.make_synthetic_video(root / "sub" / "short.mp4", [(3.5, 1), (4, 0.5)], fps=FPS, seed=2)
    return root, cuts


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return str(make_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl")))


def settings(tiny_vlm, **caption):
    filters = pp.FilterConfig(min_motion=1.0)  # the slow pans of the synthetic videos move 0.5 px/frame
    cap = pp.CaptionConfig(model_path=tiny_vlm, device="cpu", max_new_tokens=6, batch_size=2, **caption)
    return dict(filters=filters, caption=cap)


@pytest.fixture(scope="module")
def pool_run(data, tiny_vlm, tmp_path_factory):
    "The whole pipeline on a process pool of 2 workers (captions in this process)."
    work = tmp_path_factory.mktemp("pool_run")
    return pp.run_pipeline(data[0], work, executor="process", workers=2, progress=False, **settings(tiny_vlm))


# ---------------------------------------------------------------- split
@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_split_finds_every_cut_within_2_frames(data, detector):
    root, true_cuts = data
    found, info = pp.detect_scenes(root / "long.mp4", detector=detector)
    assert info.num_frames == sum(round(s * FPS) for s, _ in LONG_SCENES)
    assert len(found) == len(true_cuts), f"{detector}: found {found}, true {true_cuts}"  # so no false cut on the pans
    assert all(abs(f - t) <= 2 for f, t in zip(found, true_cuts)), (found, true_cuts)


def test_no_false_cuts_on_slow_pans(tmp_path):
    for speed in (0.5, 1.0, -1.0):
        path = tmp_path / f"pan{speed}.mp4"
        pp.make_synthetic_video(path, [(12, speed)], fps=FPS, seed=5)
        for detector in ("adaptive", "content"):
            assert pp.detect_scenes(path, detector=detector)[0] == [], (speed, detector)


def test_split_stage_clip_lengths_and_frames(data, tmp_path):
    root, cuts = data
    (row,) = pp.split_videos([{"video": "long.mp4"}], video_root=str(root), work_dir=str(tmp_path))
    clips = row["clips"]
    assert row["dropped_short"] == 1  # the 2-second scene
    secs = [c["num_frames"] / FPS for c in clips]
    assert all(3 <= s <= 10 for s in secs), secs
    assert len(clips) == len(LONG_SCENES) - 1 + 1  # one scene dropped, the 12 s scene split in two
    assert sum(c["scene"] == 4 for c in clips) == 2
    src = pp.read_frames_at(root / "long.mp4", range(row["num_frames"])).astype(np.float32)
    for c in clips:
        path = tmp_path / c["clip"]
        assert pp.count_frames(path) == c["num_frames"] == c["end_frame"] - c["start_frame"]
        if LONG_SCENES[c["scene"]][1] == 0: continue  # in a static scene neighbouring frames are identical
        first, last = pp.read_frames_at(path, [0, c["num_frames"] - 1]).astype(np.float32)
        for frame, planned in ((first, c["start_frame"]), (last, c["end_frame"] - 1)):
            # of the source frames around the planned one, the planned one matches best: the cut is frame-exact
            window = range(planned - 3, min(planned + 4, len(src)))
            assert window[int(np.argmin([np.abs(frame - src[k]).mean() for k in window]))] == planned, (c, planned)


# ---------------------------------------------------------------- filter
def test_motion_scores_order_static_slow_fast(tmp_path):
    scores = {}
    for name, speed in (("static", 0), ("slow", 0.5), ("fast", 3)):
        path = tmp_path / f"{name}.mp4"
        pp.make_synthetic_video(path, [(4, speed)], fps=FPS, seed=11)
        (row,) = pp.score_clips([{"clip": path.name}], work_dir=str(tmp_path))
        scores[name] = row["motion"]
    assert scores["static"] < scores["slow"] < scores["fast"], scores
    assert scores["static"] < 0.1 and scores["fast"] > 3 * scores["slow"]


def test_filters_remove_the_right_clips_and_report(tmp_path):
    good = tmp_path / "good.mp4"; pp.make_synthetic_video(good, [(4, 1)], fps=FPS, seed=3)
    frames = pp.read_frames_at(good, range(40))
    write_video(tmp_path / "dark.mp4", (frames * 0.05).astype(np.uint8), FPS)
    write_video(tmp_path / "blurred.mp4", np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in frames]), FPS)
    pp.make_synthetic_video(tmp_path / "static.mp4", [(4, 0)], fps=FPS, seed=4)
    pp.make_synthetic_video(tmp_path / "with_cut.mp4", [(2, 1), (2, 1)], fps=FPS, seed=6)
    pp.make_synthetic_video(tmp_path / "short.mp4", [(2, 1)], fps=FPS, seed=7)
    names = ["good", "dark", "blurred", "static", "with_cut", "short"]
    rows = pp.score_clips([{"clip": f"{n}.mp4"} for n in names], work_dir=str(tmp_path))
    decisions, report = pp.select_clips(rows, pp.FilterConfig(min_motion=1.0))
    reasons = {d["clip"][:-4]: d["reasons"] for d in decisions}
    assert reasons["good"] == []
    assert "brightness" in reasons["dark"]
    assert "blur" in reasons["blurred"]
    assert reasons["static"] == ["motion"]
    assert reasons["with_cut"] == ["transition"]
    assert reasons["short"] == ["duration"]
    assert report["kept"] == 1 and report["total"] == 6
    for check in ("brightness", "blur", "motion", "transition", "duration"):
        assert report["removed_by"][check] == sum(check in r for r in reasons.values())
    assert "no OCR model" in report["skipped"]["text"] and "no aesthetic model" in report["skipped"]["aesthetic"]
    # thresholds are re-applied without re-scoring: turning the motion check off keeps the static clip
    decisions, _ = pp.select_clips(rows, pp.FilterConfig(min_motion=None))
    assert {d["clip"] for d in decisions if d["keep"]} == {"good.mp4", "static.mp4"}


def _tiny_filter_models(folder: Path):
    "Random tiny DINOv2 (consistency), ViT regression (aesthetic) and PP-OCRv5 mobile text detector, saved offline."
    from transformers import (Dinov2Config, Dinov2Model, PPOCRV5MobileDetConfig, ViTConfig, ViTForImageClassification,
                              ViTImageProcessorPil)
    from transformers.models.pp_ocrv5_mobile_det.modeling_pp_ocrv5_mobile_det import PPOCRV5MobileDetForObjectDetection
    small = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**small)).save_pretrained(folder / "dino"); processor.save_pretrained(folder / "dino")
    ViTForImageClassification(ViTConfig(num_labels=1, problem_type="regression", **small)).save_pretrained(folder / "aes")
    processor.save_pretrained(folder / "aes")
    PPOCRV5MobileDetForObjectDetection(PPOCRV5MobileDetConfig()).save_pretrained(folder / "ocr")
    return {k: str(folder / k) for k in ("dino", "aes", "ocr")}


def test_filter_with_local_models(tmp_path, capsys):
    models = _tiny_filter_models(tmp_path / "models")
    pp.make_synthetic_video(tmp_path / "a.mp4", [(4, 1)], fps=FPS, seed=3)
    cfg = pp.FilterConfig(consistency_model=models["dino"], aesthetic_model=models["aes"], ocr_model=models["ocr"], device="cpu")
    (row,) = pp.score_clips([{"clip": "a.mp4"}], work_dir=str(tmp_path), config=cfg)
    assert row["consistency_backend"] == "model" and -1 <= row["consistency"] <= 1
    assert 0 <= row["text_area"] <= 1 and isinstance(row["aesthetic"], float)
    _, report = pp.select_clips([row], cfg)
    assert "text" not in report["skipped"] and "aesthetic" not in report["skipped"]
    with pytest.raises(pp.WeightsError, match="config.json"):
        pp.score_clips([{"clip": "a.mp4"}], work_dir=str(tmp_path), config=pp.FilterConfig(ocr_model=str(tmp_path)))


# ---------------------------------------------------------------- caption
def test_pack_matches_image_processor_on_still_frames(tiny_vlm):
    from transformers import AutoImageProcessor
    ip = AutoImageProcessor.from_pretrained(tiny_vlm)
    frame = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    packed, grid = pp.pack_qwen2vl_video(np.stack([frame] * 4), ip)
    single = np.asarray(ip(images=[frame], return_tensors="np")["pixel_values"])
    assert grid.tolist() == [2, 8, 12]
    np.testing.assert_array_equal(packed, np.concatenate([single, single]))


def test_pack_matches_qwen2vl_video_processor(tiny_vlm):
    pytest.importorskip("torchvision", reason="Qwen2VLVideoProcessor needs torchvision (not installed: the PyPI wheel for "
                                              "torch 2.13 is CUDA-linked and fails to import with the CPU build)")
    from transformers import AutoImageProcessor, Qwen2VLVideoProcessor
    ip = AutoImageProcessor.from_pretrained(tiny_vlm)
    vp = Qwen2VLVideoProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=32 * 48, max_pixels=32 * 48)
    video = np.random.default_rng(1).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)  # already the target size: no resampling
    ref = vp(videos=[video], return_tensors="np", do_sample_frames=False)
    packed, grid = pp.pack_qwen2vl_video(video, ip, {"shortest_edge": 32 * 48, "longest_edge": 32 * 48})
    np.testing.assert_allclose(packed, np.asarray(ref["pixel_values_videos"]), atol=0.02)  # at most a grey level apart
    assert grid.tolist() == np.asarray(ref["video_grid_thw"])[0].tolist()


def test_caption_stage_batched_end_to_end(tmp_path, tiny_vlm):
    pp.make_synthetic_video(tmp_path / "wide1.mp4", [(3.5, 1)], fps=FPS, seed=1)
    pp.make_synthetic_video(tmp_path / "wide2.mp4", [(3.5, 2)], fps=FPS, seed=2)
    pp.make_synthetic_video(tmp_path / "square.mp4", [(3.5, 0.5)], fps=FPS, size=(64, 64), seed=3)  # fewer vision tokens
    items = [{"clip": n} for n in ("square.mp4", "wide1.mp4", "wide2.mp4")]
    cfg = pp.CaptionConfig(model_path=tiny_vlm, device="cpu", max_new_tokens=8, batch_size=2, num_frames=6)
    captioner = pp._cached(pp.VideoCaptioner, cfg.model_path, cfg.device, cfg.dtype, cfg.min_pixels, cfg.max_pixels)
    batch_sizes, generate = [], captioner.model.generate
    def spy(**kw): batch_sizes.append(kw["input_ids"].shape[0]); return generate(**kw)
    captioner.model.generate = spy
    try:
        run = pp.run_stage(pp.caption_clips, items, tmp_path / "captions.jsonl", "clip", batch_size=cfg.batch_size,
                           progress=False, work_dir=str(tmp_path), config=cfg)
        one_by_one = [pp.caption_clips([it], str(tmp_path), cfg)[0]["caption"] for it in items]
    finally:
        captioner.model.generate = generate
    assert batch_sizes[:2] == [2, 1] and run.done == 3
    rows = pp.read_table(tmp_path / "captions.jsonl", key="clip")
    assert sorted(r["clip"] for r in rows) == sorted(it["clip"] for it in items)
    assert all(isinstance(r["caption"], str) and r["caption"] and r["frames"] == pp.sample_indices(35, 6) for r in rows)
    # left padding, the attention mask and the token types are right: a padded batch captions like single clips
    assert [r["caption"] for r in sorted(rows, key=lambda r: items.index({"clip": r["clip"]}))] == one_by_one


class _FakeChatServer(BaseHTTPRequestHandler):
    "An OpenAI-compatible stand-in on the loopback address: answers the rewrite prompt with the JSON it asks for."
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        raw = req["messages"][-1]["content"].rsplit("Description: ", 1)[-1]
        body = json.dumps({"choices": [{"message": {"content": json.dumps({"caption": f"Rewritten: {raw[:20]}"})}}]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass


def test_rewrite_stage_local_and_served(tmp_path):
    captions = [{"clip": f"c{i}.mp4", "caption": f"the video shows thing {i}"} for i in range(3)]
    local = pp.RewriteConfig(model_path=str(make_tiny_chat_lm(tmp_path / "lm")), device="cpu", max_new_tokens=6)
    rows = pp.rewrite_captions(captions, local)
    assert [r["text"] for r in rows] == [c["caption"] for c in captions] and not any(r["rewritten"] for r in rows)
    server = HTTPServer(("127.0.0.1", 0), _FakeChatServer); threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        served = pp.RewriteConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="any")
        rows = pp.rewrite_captions(captions, served)
    finally:
        server.shutdown(); server.server_close()
    assert all(r["rewritten"] and r["text"].startswith("Rewritten: the video shows") for r in rows)


# ---------------------------------------------------------------- resume
KILL_SCRIPT = """
import os, signal, sys
import easyanimate.preprocess as pp
work, videos, model, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
real, calls = pp.caption_clips, [0]
def caption_then_die(batch, **kw):
    if calls[0] == kill_after: os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a hard kill
    calls[0] += 1
    return real(batch, **kw)
pp.caption_clips = caption_then_die
if __name__ == "__main__":
    pp.run_pipeline(videos, work, executor="process", workers=2, progress=False,
                    filters=pp.FilterConfig(min_motion=1.0),
                    caption=pp.CaptionConfig(model_path=model, device="cpu", max_new_tokens=6, batch_size=1))
"""


def test_sigkill_midway_then_rerun_finishes_without_redoing(data, tiny_vlm, tmp_path, monkeypatch):
    work, script = tmp_path / "work", tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(work), str(data[0]), tiny_vlm, "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    before = (work / "captions.jsonl").read_text().splitlines()
    assert len(before) == 2  # two clips captioned, then killed
    clip_files = sorted((work / "clips").rglob("*.mp4"))
    mtimes = {p: p.stat().st_mtime_ns for p in clip_files}
    kept = [d["clip"] for d in pp.read_table(work / "selection.jsonl") if d["keep"]]
    assert len(kept) > 3

    calls = []
    real = pp.caption_clips
    monkeypatch.setattr(pp, "caption_clips", lambda batch, **kw: calls.extend(b["clip"] for b in batch) or real(batch, **kw))
    res = pp.run_pipeline(data[0], work, executor="process", workers=2, progress=False,
                          filters=pp.FilterConfig(min_motion=1.0),
                          caption=pp.CaptionConfig(model_path=tiny_vlm, device="cpu", max_new_tokens=6, batch_size=1))
    assert res.stages["split"].done == 0 and res.stages["score"].done == 0  # nothing redone upstream
    done_before = {json.loads(line)["clip"] for line in before}
    assert sorted(calls) == sorted(set(kept) - done_before)  # only the unfinished clips were captioned
    assert res.stages["caption"].skipped == 2 and res.stages["caption"].done == len(kept) - 2
    after = (work / "captions.jsonl").read_text().splitlines()
    assert after[:2] == before and len(after) == len(kept)  # finished rows untouched, no duplicates
    assert {p: p.stat().st_mtime_ns for p in clip_files} == mtimes  # no clip was cut again
    assert len(res.entries) == len(kept)


def test_exception_midway_then_rerun(data, tmp_path):
    root = data[0]
    (row,) = pp.split_videos([{"video": "long.mp4"}], video_root=str(root), work_dir=str(tmp_path))
    clips = pp.clip_table([row])
    calls = []
    def flaky(batch, **kw):
        if len(calls) == 3: raise RuntimeError("injected failure")
        calls.extend(b["clip"] for b in batch)
        return pp.score_clips(batch, **kw)
    with pytest.raises(pp.StageError, match="injected failure"):
        pp.run_stage(flaky, clips, tmp_path / "scores.jsonl", "clip", on_error="raise", progress=False, work_dir=str(tmp_path))
    assert len(pp.read_table(tmp_path / "scores.jsonl")) == 3
    first = list(calls); calls.clear()
    def counting(batch, **kw): calls.extend(b["clip"] for b in batch); return pp.score_clips(batch, **kw)
    run = pp.run_stage(counting, clips, tmp_path / "scores.jsonl", "clip", progress=False, work_dir=str(tmp_path))
    assert (run.skipped, run.done) == (3, len(clips) - 3)
    assert sorted(calls) == sorted(c["clip"] for c in clips if c["clip"] not in first)


# ---------------------------------------------------------------- export
def test_exported_json_matches_schema_and_clips(pool_run):
    import jsonschema
    data = json.loads(pool_run.dataset.read_text())
    jsonschema.validate(data, pp.DATASET_SCHEMA)
    assert data and all(e["type"] == "video" and e["text"] for e in data)
    clips = {c["clip"]: c for c in pp.clip_table(pp.read_table(pool_run.work_dir / "split.jsonl"))}
    kept = {d["clip"] for d in pp.read_table(pool_run.work_dir / "selection.jsonl") if d["keep"]}
    entries = pp.validate_dataset(pool_run.dataset)
    assert {e["file_path"] for e in entries} == kept
    for e in entries:  # every file opens as a video with the frame count the split table promises
        assert e["num_frames"] == clips[e["file_path"]]["num_frames"]
    assert pool_run.report["kept"] == len(kept) and pool_run.report["removed"] == len(clips) - len(kept) > 0



def test_trainer_runs_on_the_exported_json(pool_run, tmp_path):
    "The exporter's JSON is what the trainer reads: two LoRA steps of a tiny model on it, nothing skipped."
    from easyanimate.testing import make_tiny_model_folder
    from easyanimate.train import train
    model = make_tiny_model_folder(tmp_path / "model")
    r = train(dict(model_dir=str(model), dataset_json=str(pool_run.dataset), output_dir=str(tmp_path / "run"), num_frames=5,
                   stride=2, base_resolution=32, lora_rank=4, max_train_steps=2, checkpointing_steps=0,
                   max_sequence_length=64, device="cpu", report_to="none"), log=None)
    assert r["steps"] == 2 and r["skipped"] == 0 and all(l == l for l in r["losses"])
    assert r["data_summary"].startswith(f"{len(json.loads(pool_run.dataset.read_text()))} ")

# ---------------------------------------------------------------- Ray
def test_ray_gives_the_same_tables_as_the_process_pool(data, tiny_vlm, pool_run, tmp_path):
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        res = pp.run_pipeline(data[0], tmp_path, executor="ray", progress=False, **settings(tiny_vlm))
    finally:
        ray.shutdown()
    assert res.stages["caption"].done > 0
    for table, key in (("split.jsonl", "video"), ("scores.jsonl", "clip"), ("selection.jsonl", "clip"), ("captions.jsonl", "clip")):
        ray_rows = sorted(pp.read_table(tmp_path / table, key), key=lambda r: r[key])
        pool_rows = sorted(pp.read_table(pool_run.work_dir / table, key), key=lambda r: r[key])
        assert ray_rows == pool_rows, table
    assert json.loads((tmp_path / "dataset.json").read_text()) == json.loads(pool_run.dataset.read_text())


# ---------------------------------------------------------------- example notebook
def test_example_notebook_runs(tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "preprocess_out.ipynb"
    papermill.execute_notebook(str(REPO / "nbs/examples/preprocess.ipynb"), str(out), cwd=str(REPO / "nbs/examples"),
                               parameters=dict(work_dir=str(tmp_path / "work"), executor="serial"), progress_bar=False, language="python",
                               kernel_name="python3")
    data = json.loads((tmp_path / "work" / "dataset.json").read_text())
    assert data and all(set(e) == {"file_path", "text", "type"} for e in data)
