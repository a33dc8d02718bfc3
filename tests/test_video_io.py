"Video I/O on the original project's real inputs, and failure cases."
import numpy as np, pytest, torch
from easyanimate.core import MediaReadError, InputError
from easyanimate.video_io import read_video, read_image, read_frames, video_info, write_video, save_media, resize_center_crop


def test_real_video_stride_resize_crop(assets):
    full = read_frames(assets / "1.mp4")
    assert full.shape == (49, 576, 1008, 3)
    v = read_video(assets / "1.mp4", num_frames=5, stride=3, start=1, height=320, width=320)
    assert v.shape == (1, 3, 5, 320, 320) and v.dtype == torch.float32
    # frame k of the result is source frame 1 + 3k, resized to cover 320 (576 -> 320, 1008 -> 560) and centre-cropped
    src = torch.from_numpy(full[1 + 3 * 4]).permute(2, 0, 1)[None].float() / 127.5 - 1
    ref = resize_center_crop(src, 320, 320)
    assert (v[0, :, 4] - ref[0]).abs().max() < 1e-5


def test_real_image(assets):
    im = read_image(assets / "1.png")
    assert im.shape == (1, 3, 1, 382, 600)
    assert read_image(assets / "2.png", height=384, width=672).shape == (1, 3, 1, 384, 672)


def test_roundtrip_mp4_keeps_fps_size_frames(tmp_path, assets):
    v = read_video(assets / "1.mp4", num_frames=17, height=256, width=448)
    out = write_video(tmp_path / "o.mp4", v, fps=12)
    info = video_info(out)
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (17, 12.0, 448, 256)
    back = read_video(out)
    psnr = 10 * torch.log10(4 / ((back - v) ** 2).mean())
    assert psnr > 30, f"H.264 at crf 18 should keep the video (PSNR {psnr:.1f} dB)"


def test_unreadable_files_name_the_file(tmp_path, assets):
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes((assets / "1.mp4").read_bytes()[:50_000])
    with pytest.raises(MediaReadError, match="truncated.mp4"): read_video(bad)
    with pytest.raises(MediaReadError, match="nothere.png"): read_image(tmp_path / "nothere.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(MediaReadError, match="text.jpg"): read_image(tmp_path / "text.jpg")
    with pytest.raises(InputError, match="only 49"): read_video(assets / "1.mp4", num_frames=50)


def test_failed_write_leaves_nothing(tmp_path):
    class Boom(Exception): pass
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    import easyanimate.video_io as vio
    orig = vio.av.VideoFrame.from_ndarray
    calls = {"n": 0}
    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2: raise Boom()
        return orig(*a, **k)
    vio.av.VideoFrame.from_ndarray = failing
    try:
        with pytest.raises(Boom): write_video(tmp_path / "x.mp4", frames)
    finally:
        vio.av.VideoFrame.from_ndarray = orig
    assert list(tmp_path.iterdir()) == []
    assert save_media(tmp_path / "odd.mp4", np.zeros((5, 15, 17, 3), np.uint8)).exists()  # odd sizes are padded
