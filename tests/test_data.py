"Training data: dataset JSON, frame sampling, buckets, sampler order and resume, bad data, inpaint masks, latent cache."
import json, logging
from pathlib import Path
import pytest
import torch
from easyanimate.core import InputError, round_frames
from easyanimate.data import (load_dataset_json, make_toy_dataset, frame_plan, VideoDataset, AspectBucketBatchSampler,
                              collate_samples, make_dataloader, make_mask, random_mask, DEFAULT_MASK_WEIGHTS,
                              SPATIAL_MASK_TYPES, build_latent_cache, CachedLatentDataset, encode_latents, SkippedSample,
                              bucket_tokens, text_dropped, set_loader_epoch, toy_video)
from easyanimate.video_io import read_frames, video_info, write_video
from easyanimate.core import frames_to_tensor


@pytest.fixture(scope="module")
def toy_bad(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("bad"), bad=True)


@pytest.fixture(scope="module")
def toy_mixed(tmp_path_factory):
    "4 videos in two aspect ratios and 3 images, 13 frames each video."
    sizes = [(64, 64), (64, 64), (64, 128), (64, 128), (64, 64), (64, 64), (128, 64)]
    return make_toy_dataset(tmp_path_factory.mktemp("mixed"), n_videos=4, n_images=3, frames=13, sizes=sizes)


# -- dataset JSON -----------------------------------------------------------------------------------------------
def test_json_relative_absolute_and_root(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "d.json"
    p.write_text(json.dumps([{"file_path": "v/a.mp4", "text": "a", "type": "video"},
                             {"file_path": str(tmp_path / "b.png"), "text": "b", "type": "image",
                              "control_file_path": "c.png"}]))
    es = load_dataset_json(p)
    assert es[0]["file_path"] == str(p.parent.resolve() / "v" / "a.mp4")
    assert es[1]["file_path"] == str(tmp_path / "b.png")
    assert es[1]["control_file_path"] == str(p.parent.resolve() / "c.png")
    assert load_dataset_json(p, root=tmp_path)[0]["file_path"] == str(tmp_path / "v" / "a.mp4")
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(e) for e in json.loads(p.read_text())))
    assert [e["type"] for e in load_dataset_json(jl)] == ["video", "image"]


@pytest.mark.parametrize("entry, words", [
    ({"text": "x", "type": "video"}, "file_path"),
    ({"file_path": "a.mp4", "type": "video"}, "text"),
    ({"file_path": "a.mp4", "text": "x", "type": "audio"}, "type"),
    ({"file_path": "a.xyz", "text": "x"}, "no type"),
    ("a.mp4", "expected an object"),
])
def test_json_malformed_entry_names_index(tmp_path, entry, words):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"file_path": "ok.mp4", "text": "fine", "type": "video"}, entry]))
    with pytest.raises(InputError, match="entry 1") as e: load_dataset_json(p)
    assert words in str(e.value)


def test_json_not_a_list(tmp_path):
    p = tmp_path / "d.json"; p.write_text('{"a": 1}')
    with pytest.raises(InputError, match="list"): load_dataset_json(p)
    p.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"): load_dataset_json(p)


# -- frame sampling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("available, want, stride, policy, expect", [
    (145, 49, 3, "fewer_frames", (49, 3)), (144, 49, 3, "fewer_frames", (45, 3)), (40, 49, 3, "fewer_frames", (13, 3)),
    (9, 49, 3, "fewer_frames", (5, 2)), (40, 49, 3, "smaller_stride", (37, 1)), (100, 25, 4, "smaller_stride", (25, 4)),
    (4, 49, 1, "fewer_frames", None), (1000, 50, 2, "fewer_frames", (49, 2))])
def test_frame_plan(available, want, stride, policy, expect):
    got = frame_plan(available, want, stride, min_frames=5, short_policy=policy)
    assert got == expect
    if got: n, s = got; assert (n - 1) % 4 == 0 and (n - 1) * s + 1 <= available


def test_sampled_frames_follow_the_stride(tmp_path):
    j = make_toy_dataset(tmp_path, n_videos=1, n_images=0, frames=21)
    ds = VideoDataset(j, num_frames=5, stride=3, base_resolution=64, text_drop_ratio=0)
    src = frames_to_tensor(read_frames(j.parent / "video_0.mp4"))[0]   # (3, 21, 64, 64), already bucket-sized
    assert ds.bucket_keys == [(5, 64, 64)]
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        x = ds[0]["pixel_values"]
        start = min(range(21 - 12), key=lambda s: (src[:, s:s + 13:3] - x).abs().max().item())
        torch.testing.assert_close(x, src[:, start:start + 13:3], atol=1e-6, rtol=0)
        starts.add(start)
    assert len(starts) > 1  # the clip start is random per epoch


# -- buckets and sampler ----------------------------------------------------------------------------------------
def test_buckets_one_size_per_batch_mixed(toy_mixed):
    ds = VideoDataset(toy_mixed, num_frames=9, stride=1, base_resolution=64, image_base_resolution=128)
    keys = ds.bucket_keys
    assert set(keys) == {(9, 64, 64), (9, 32, 80), (1, 128, 128), (1, 176, 80)}
    batches = [collate_samples([ds[i] for i in b]) for b in AspectBucketBatchSampler(ds, 2, drop_last=False)]
    assert sum(b["size"] for b in batches) == len(ds) == 7
    for b in batches:
        F, H, W = b["pixel_values"].shape[2:]
        assert all(ds.bucket_keys[i] == (F, H, W) for i in b["index"].tolist())
        assert len(set(b["type"])) == 1


def test_token_batching():
    keys = [(9, 64, 64)] * 6 + [(1, 64, 64)] * 12
    s = AspectBucketBatchSampler(keys, batch_size=1, max_tokens=bucket_tokens(1, 64, 64) * 4)
    sizes = {keys[b[0]]: len(b) for b in s}
    assert sizes == {(9, 64, 64): 1, (1, 64, 64): 4}  # 9 frames: 3 latent frames x 16 = 48 tokens; 1 frame: 16


def test_sampler_deterministic_and_epoch_dependent():
    keys = [(5, 64, 64)] * 7 + [(1, 64, 64)] * 9
    a, b = AspectBucketBatchSampler(keys, 2, seed=1), AspectBucketBatchSampler(keys, 2, seed=1)
    assert list(a) == list(b)
    assert list(a) != list(AspectBucketBatchSampler(keys, 2, seed=2))
    a.set_epoch(1); assert list(a) != list(b)
    for e in range(3):
        a.set_epoch(e); assert len(list(a)) == len(a) == 3 + 4


@pytest.mark.parametrize("stop", [0, 1, 4, 7])
def test_sampler_exact_resume(stop):
    keys = [(5, 64, 64)] * 7 + [(1, 64, 64)] * 9 + [(5, 48, 96)] * 3
    ref = AspectBucketBatchSampler(keys, 2, seed=5, max_tokens=None)
    ref.set_epoch(3); full3 = list(ref); ref.set_epoch(4); full4 = list(ref)
    s = AspectBucketBatchSampler(keys, 2, seed=5); s.set_epoch(3)
    it = iter(s); head = [next(it) for _ in range(stop)]
    state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint file
    r = AspectBucketBatchSampler(keys, 2, seed=5); r.load_state_dict(state)
    assert head + list(r) == full3
    r.set_epoch(4); assert list(r) == full4
    # a trainer passing its own count (workers prefetch ahead of the loop)
    assert s.state_dict(batches_done=2)["batches_done"] == 2


def test_sampler_resume_after_full_epoch_goes_to_next():
    keys = [(5, 64, 64)] * 4
    s = AspectBucketBatchSampler(keys, 1, seed=0); s.set_epoch(0); list(s)
    r = AspectBucketBatchSampler(keys, 1, seed=0); r.load_state_dict(s.state_dict())
    assert r.epoch == 1 and len(list(r)) == 4


def test_sampler_replicas_partition():
    keys = [(5, 64, 64)] * 9 + [(1, 64, 64)] * 8
    full = AspectBucketBatchSampler(keys, 2, seed=0).batches(0)
    parts = [AspectBucketBatchSampler(keys, 2, seed=0, num_replicas=2, rank=r).batches(0) for r in range(2)]
    assert len(parts[0]) == len(parts[1])
    flat = sorted(i for p in parts for b in p for i in b)
    assert len(flat) == len(set(flat)) and set(flat) <= {i for b in full for i in b}


def test_text_dropout_deterministic(toy_mixed):
    ds = VideoDataset(toy_mixed, num_frames=5, stride=1, base_resolution=64, text_drop_ratio=0.5, seed=3)
    for e in range(2):
        ds.set_epoch(e)
        got = [ds[i]["text"] == "" for i in range(len(ds))]
        assert got == [text_dropped(3, e, i, 0.5) for i in range(len(ds))]
    assert not any(VideoDataset(toy_mixed, num_frames=5, base_resolution=64, text_drop_ratio=0)[i]["text"] == ""
                   for i in range(3))


# -- bad data ---------------------------------------------------------------------------------------------------
def test_bad_data_scan_counts_three(toy_bad, caplog):
    with caplog.at_level(logging.WARNING, logger="easyanimate.data"):
        ds = VideoDataset(toy_bad, num_frames=49, stride=3, base_resolution=64)
    assert len(ds) == 3 and len(ds.skipped) == 3
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert reasons["missing.mp4"] == "missing"
    assert reasons["corrupt.mp4"].startswith("unreadable")
    assert reasons["short.mp4"].startswith("too short")
    logged = [r.getMessage() for r in caplog.records]
    for name in reasons: assert sum(name in m for m in logged) == 1  # logged once, with its path
    assert "3 skipped" in ds.summary() and "short.mp4" in ds.summary()


def test_min_frames_parameter(toy_bad):
    ds = VideoDataset(toy_bad, num_frames=49, stride=3, base_resolution=64, min_frames=1)
    assert len(ds) == 4 and len(ds.skipped) == 2  # the 3-frame video now gives a 1-frame clip


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_data_dataloader_only_good(toy_bad, tmp_path, workers):
    # the three bad files of the toy dataset, plus a file that breaks after the scan, so it fails inside a worker
    j = make_toy_dataset(tmp_path, n_videos=2, n_images=0, bad=True)
    ds = VideoDataset(j, num_frames=5, stride=1, base_resolution=64)
    assert len(ds.skipped) == 3 and len(ds) == 2
    (j.parent / "video_1.mp4").write_bytes(b"\x00" * 512)
    seen, skipped = [], []
    loader = make_dataloader(ds, batch_size=1, num_workers=workers)
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        for batch in loader:
            ds.note_skipped(batch["skipped"]); skipped += batch["skipped"]
            if batch["size"]:
                assert batch["pixel_values"].shape[0] == batch["size"]
                seen += [Path(p).name for p in batch["file_path"]]
    assert set(seen) == {"video_0.mp4"}
    assert len(ds.skipped) == 4  # 3 from the scan + 1 at load time, counted once over two epochs
    assert {Path(p).name for p, _ in skipped} == {"video_1.mp4"}


def test_persistent_workers_follow_the_sampler_epoch(tmp_path):
    j = make_toy_dataset(tmp_path, n_videos=2, n_images=0, frames=13)
    ds = VideoDataset(j, num_frames=5, stride=2, base_resolution=64, text_drop_ratio=0.5, train_mode="inpaint")
    loader = make_dataloader(ds, batch_size=1, num_workers=1, persistent_workers=True)
    for epoch in range(3):
        loader.batch_sampler.set_epoch(epoch)  # the dataset's own epoch stays 0 (and is stale in the worker anyway)
        for batch in loader:
            i = int(batch["index"][0])
            x = ds.get(i, epoch=epoch)
            torch.testing.assert_close(batch["pixel_values"][0], x["pixel_values"])
            torch.testing.assert_close(batch["mask"][0], x["mask"])
            assert batch["text"][0] == x["text"]


def test_scan_cache(tmp_path, monkeypatch):
    import easyanimate.data as data
    j = make_toy_dataset(tmp_path, bad=True)
    a = VideoDataset(j, base_resolution=64, scan_cache=tmp_path / "scan.json")
    calls = []
    real = data._probe
    monkeypatch.setattr(data, "_probe", lambda e, d=False: calls.append(e["file_path"]) or real(e, d))
    b = VideoDataset(j, base_resolution=64, scan_cache=tmp_path / "scan.json")
    assert [Path(p).name for p in calls] == ["missing.mp4"]  # only the missing file is looked at again (a stat)
    assert b.bucket_keys == a.bucket_keys and b.skipped == a.skipped
    calls.clear()
    write_video(j.parent / "video_0.mp4", toy_video(13, (64, 64)))  # changed: probed again
    c = VideoDataset(j, base_resolution=64, scan_cache=tmp_path / "scan.json")
    assert [Path(p).name for p in calls] == ["video_0.mp4", "missing.mp4"] and c.samples[0]["available"] == 13


# -- inpaint masks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(DEFAULT_MASK_WEIGHTS))
def test_mask_types(kind):
    g = torch.Generator().manual_seed(1)
    for F in (1, 9):
        m = make_mask(kind, F, 32, 48, g)
        assert m.shape == (1, F, 32, 48) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
    m = make_mask(kind, 9, 32, 48, g)
    if kind == "i2v": assert not m[:, 0].any() and m[:, 1:].all()
    if kind == "first_last": assert not m[:, [0, -1]].any() and m[:, 1:-1].all()
    if kind == "t2v": assert m.all()
    if kind in ("box", "ellipse"):
        assert m.any() and not m.all()
        assert (m == m[:, :1]).all()  # the same region in every frame


def test_random_mask_images_spatial_only():
    for s in range(40):
        m, kind = random_mask(1, 16, 16, torch.Generator().manual_seed(s))
        assert kind in SPATIAL_MASK_TYPES and m.shape == (1, 1, 16, 16)


def test_dataset_inpaint_and_control(tmp_path):
    j = make_toy_dataset(tmp_path, n_videos=1, n_images=1, frames=9, control=True)
    ds = VideoDataset(j, num_frames=9, stride=1, base_resolution=64, train_mode="inpaint", seed=0)
    types = set()
    for e in range(12):
        ds.set_epoch(e); x = ds[0]
        assert x["mask"].shape == (1, 9, 64, 64); types.add(x["mask_type"])
        ds.set_epoch(e); torch.testing.assert_close(ds[0]["mask"], x["mask"])  # deterministic given the epoch
    assert len(types) > 1
    assert ds[1]["mask"].shape == (1, 1, 64, 64)
    dc = VideoDataset(j, num_frames=9, stride=1, base_resolution=64, train_mode="control")
    x = dc[0]
    assert x["control_pixel_values"].shape == x["pixel_values"].shape == (3, 9, 64, 64)
    assert (x["control_pixel_values"] + x["pixel_values"]).abs().mean() < 0.05  # the inverted clip, same frames
    with pytest.raises(InputError, match="control_file_path"):
        VideoDataset(make_toy_dataset(tmp_path / "nc"), train_mode="control")


# -- latent cache -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory):
    from easyanimate.testing import make_tiny_vae, make_tiny_tokenizer, make_tiny_text_encoder
    tok = make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    return make_tiny_vae(), make_tiny_text_encoder(len(tok)), tok


@pytest.mark.parametrize("mode, variants", [("t2v", 2), ("inpaint", 1), ("control", 1)])
def test_latent_cache_round_trip(tmp_path, tiny_encoders, mode, variants):
    from easyanimate.text import encode_text
    vae, te, tok = tiny_encoders
    j = make_toy_dataset(tmp_path / "d", n_videos=1, n_images=1, frames=9, control=True)
    ds = VideoDataset(j, num_frames=5, stride=2, base_resolution=64, train_mode=mode, text_drop_ratio=0)
    build_latent_cache(ds, vae, (te, tok), tmp_path / "c", variants=variants, progress=False)
    cds = CachedLatentDataset(tmp_path / "c", text_drop_ratio=0)
    assert len(cds) == 2 and cds.bucket_keys == ds.bucket_keys
    for epoch in range(variants):
        cds.set_epoch(epoch); ds.set_epoch(epoch)
        for i in range(2):
            c, x = cds[i], ds[i]
            if i == 0 or mode == "t2v":  # (the VAE is slow on a busy CPU: encode again only what is needed)
                torch.testing.assert_close(c["latents"], encode_latents(vae, x["pixel_values"][None])[0], atol=1e-5, rtol=1e-4)
            e, m = encode_text(te, tok, [x["text"]])
            torch.testing.assert_close(c["prompt_embeds"], e[0], atol=1e-5, rtol=1e-4)
            assert torch.equal(c["prompt_attention_mask"], m[0]) and c["text"] == x["text"]
            f, h, w = c["latents"].shape[1:]
            if mode == "inpaint":
                assert c["inpaint_latents"].shape == (17, f, h, w) and c["mask"].shape == (1, f, h, w)
            if mode == "control" and i == 0:
                torch.testing.assert_close(c["control_latents"], encode_latents(vae, x["control_pixel_values"][None])[0],
                                           atol=1e-5, rtol=1e-4)
                assert c["ref_latents"].shape == (16, f, h, w) and not c["ref_latents"][:, 1:].any()
    # a second build is a no-op (resumable), other settings are refused
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("0*.safetensors")}
    build_latent_cache(ds, vae, (te, tok), tmp_path / "c", variants=variants, progress=False)
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("0*.safetensors")}
    with pytest.raises(InputError, match="other settings"):
        build_latent_cache(ds, vae, (te, tok), tmp_path / "c", variants=variants + 1, progress=False)
    # text dropout at load time: the same decisions as the raw dataset, the empty prompt's embedding
    cdrop = CachedLatentDataset(tmp_path / "c", text_drop_ratio=0.5, seed=7)
    rdrop = VideoDataset(j, num_frames=5, stride=2, base_resolution=64, train_mode=mode, text_drop_ratio=0.5, seed=7)
    e0 = encode_text(te, tok, [""])[0][0]
    for epoch in range(4):
        cdrop.set_epoch(epoch); rdrop.set_epoch(epoch)
        for i in range(2):
            assert cdrop[i]["text"] == rdrop[i]["text"]
            if cdrop[i]["text"] == "": torch.testing.assert_close(cdrop[i]["prompt_embeds"], e0, atol=1e-5, rtol=1e-4)
    batch = collate_samples([cds[0]])
    assert batch["latents"].shape[0] == 1


def test_cache_with_a_function_and_bf16(tmp_path, tiny_encoders):
    vae = tiny_encoders[0]
    j = make_toy_dataset(tmp_path / "d", n_videos=1, n_images=0, frames=5)
    ds = VideoDataset(j, num_frames=5, stride=1, base_resolution=64)
    fn = lambda texts: (torch.ones(len(texts), 8, 4) * len(texts[0]), torch.ones(len(texts), 8, dtype=torch.long))
    build_latent_cache(ds, vae, fn, tmp_path / "c", dtype=torch.bfloat16, store_std=True, progress=False)
    c = CachedLatentDataset(tmp_path / "c", text_drop_ratio=0, sample_posterior=True)[0]
    assert c["latents"].dtype == torch.float32 and c["prompt_embeds"].shape == (8, 4)
    assert c["prompt_embeds"][0, 0] == len(ds.samples[0]["text"])


def test_cache_missing_index(tmp_path):
    with pytest.raises(InputError, match="index.json"): CachedLatentDataset(tmp_path)


# -- a real video -----------------------------------------------------------------------------------------------
def test_real_mp4(assets, tmp_path):
    info = video_info(assets / "1.mp4")
    (tmp_path / "d.json").write_text(json.dumps([{"file_path": str(assets / "1.mp4"), "text": "real", "type": "video"}]))
    ds = VideoDataset(tmp_path / "d.json", num_frames=9, stride=2, base_resolution=256, text_drop_ratio=0)
    assert len(ds) == 1 and not ds.skipped
    F, H, W = ds.bucket_keys[0]
    assert F == 9 and abs(H / W - info["height"] / info["width"]) < 0.15
    x = ds[0]["pixel_values"]
    assert x.shape == (3, F, H, W) and -1 <= x.min() < x.max() <= 1
