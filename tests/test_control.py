"Control signals: camera pose files and Plücker rays against hand-computed cases, presets against the original's files, canny, trajectories, detectors."
import math, sys, types, warnings
import numpy as np, pytest, torch
from easyanimate.core import InputError, FrameCountError, MediaReadError, WeightsError, frames_to_tensor
from easyanimate.control import (
    load_frames, load_control_video, canny_edges, canny_control_video, load_detector, detector_control_video,
    MissingDependencyError, gaussian_blob, blob_radius, interpolate_track, trajectory_frames, trajectory_control_video,
    CameraPath, parse_pose_file, parse_pose_lines, camera_preset, camera_preset_lines, write_pose_file, CAMERA_PRESETS,
    DEFAULT_CAMERA_INTRINSICS, camera_intrinsics_px, plucker_embedding, camera_control_video, resize_to_latent_grid,
    camera_latents)

GOOD = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"


def pinhole_rays(k, height, width):
    "Unit rays K^-1 (u + 0.5, v + 0.5, 1), by explicit loops: the hand-computed reference."
    fx, fy, cx, cy = k
    out = np.zeros((height, width, 3))
    for v in range(height):
        for u in range(width):
            r = np.array([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1.0])
            out[v, u] = r / np.linalg.norm(r)
    return out


def rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


# ---------------------------------------------------------------- camera pose files

@pytest.mark.parametrize("name,frames", [("Pan_Up", 49), ("Pan_Down", 49), ("Pan_Left", 49), ("Pan_Right", 49),
                                         ("0a3b5fb184936a83", 174)])
def test_parser_reads_original_files(assets, name, frames):
    cam = parse_pose_file(assets / f"{name}.txt")
    assert len(cam) == frames and cam.w2c.shape == (frames, 4, 4) and cam.intrinsics.shape == (frames, 4)
    fx, fy, cx, cy = cam.intrinsics.T
    assert ((0.1 < fx) & (fx < 2) & (0.1 < fy) & (fy < 2)).all() and np.allclose(cx, 0.5) and np.allclose(cy, 0.5)
    assert np.allclose(fx * 1280, fy * 720, rtol=1e-3)  # square pixels on the 1280x720 frame the poses were made for
    rot = cam.w2c[:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-4)  # proper rotations
    assert (cam.w2c[:, 3] == [0, 0, 0, 1]).all()


def test_parser_skips_url_line_and_keeps_headerless_first_pose(assets):
    text = (assets / "0a3b5fb184936a83.txt").read_text().splitlines()
    assert text[0].startswith("https://")
    cam = parse_pose_lines(text)
    assert cam.frame_ids[0] == float(text[1].split()[0])
    assert len(parse_pose_lines(text[1:])) == len(cam)  # no header: the first line is a pose, kept


@pytest.mark.parametrize("bad,message", [
    (GOOD.rsplit(" ", 2)[0], "expected 19 numbers"),                      # too few numbers
    (GOOD + " 0", "found 20"),                                            # too many
    (GOOD.replace("0.9", "0,9"), "column 3 ('0,9') is not a number"),     # non-numeric
    (GOOD.replace(" 1 0 0 0", " x 0 0 0", 1), "column 8 ('x') is not a number"),
    (GOOD.replace("0.9", "nan"), "column 3 is 'nan'"),                    # non-finite
    (GOOD.replace("0.9", "inf"), "column 3 is 'inf'"),
    (GOOD.replace("0.9", "-0.9"), "focal lengths"),
    (GOOD.replace(" 1 0 0 0 0 1", " 0 0 0 0 0 1"), "singular"),
])
def test_parser_rejects_malformed_lines_with_line_number(tmp_path, bad, message):
    path = tmp_path / "cam.txt"
    path.write_text("\n".join(["https://example.invalid/clip", GOOD, bad, GOOD]) + "\n")
    with pytest.raises(InputError, match=r"cam\.txt:3: ") as e:  # the file name and the line number (1-based)
        parse_pose_file(path)
    assert message in str(e.value)
    assert GOOD.rsplit(" ", 2)[0] != bad or "found 17" in str(e.value)


def test_parser_other_failures(tmp_path):
    (tmp_path / "empty.txt").write_text("https://example.invalid\n\n")
    with pytest.raises(InputError, match="no pose lines"): parse_pose_file(tmp_path / "empty.txt")
    with pytest.raises(MediaReadError, match="missing.txt"): parse_pose_file(tmp_path / "missing.txt")
    assert len(parse_pose_lines(["# a comment", GOOD, "", "# another", GOOD])) == 2


# ---------------------------------------------------------------- Plücker rays, by hand

K = np.array([17.0, 21.0, 11.5, 6.0])
H, W = 12, 22


def test_plucker_identity_is_pinhole_rays_and_zero_moment():
    emb = plucker_embedding(K[None], np.eye(4)[None], H, W)
    assert emb.shape == (1, 6, H, W) and emb.dtype == torch.float32
    np.testing.assert_allclose(emb[0, 3:].permute(1, 2, 0).numpy(), pinhole_rays(K, H, W), atol=1e-6)
    assert emb[0, :3].abs().max() == 0


def test_plucker_pure_pan_rotates_directions_and_keeps_zero_moment():
    c2w = np.eye(4); c2w[:3, :3] = rot_y(0.4)  # camera at the origin, turned about its y axis
    emb = plucker_embedding(K[None], c2w[None], H, W)
    expected = pinhole_rays(K, H, W) @ rot_y(0.4).T
    np.testing.assert_allclose(emb[0, 3:].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert emb[0, :3].abs().max() == 0
    # turning right (positive yaw about y, which points down) swings the central ray towards +x
    assert emb[0, 3, H // 2, W // 2] > pinhole_rays(K, H, W)[H // 2, W // 2, 0] + 0.3


def test_plucker_translation_changes_only_the_moment():
    t = np.array([0.7, -0.3, 2.0])
    c2w = np.eye(4); c2w[:3, 3] = t
    emb = plucker_embedding(K[None], c2w[None], H, W)
    rays = pinhole_rays(K, H, W)
    np.testing.assert_allclose(emb[0, 3:].permute(1, 2, 0).numpy(), rays, atol=1e-6)
    np.testing.assert_allclose(emb[0, :3].permute(1, 2, 0).numpy(), np.cross(t, rays), atol=1e-5)


def test_plucker_general_pose_by_loops():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3))); q *= np.sign(np.linalg.det(q))
    c2w = np.eye(4); c2w[:3, :3] = q; c2w[:3, 3] = rng.normal(size=3)
    emb = plucker_embedding(K[None], c2w[None], H, W)[0].permute(1, 2, 0).numpy()
    d = pinhole_rays(K, H, W) @ q.T
    np.testing.assert_allclose(emb[..., 3:], d, atol=1e-5)
    np.testing.assert_allclose(emb[..., :3], np.cross(c2w[:3, 3], d), atol=1e-5)


def test_intrinsics_fit_the_pose_aspect_ratio():
    k = np.array([[0.5, 0.9, 0.5, 0.5]])
    # 384x672 (1.75) is narrower than 1280x720 (1.78): fx is rescaled so the pose frame covers the generation frame
    np.testing.assert_allclose(camera_intrinsics_px(k, 384, 672)[0], [0.5 * 384 * 1280 / 720, 0.9 * 384, 336, 192])
    # 256x768 (3.0) is wider: fy is rescaled instead
    np.testing.assert_allclose(camera_intrinsics_px(k, 256, 768)[0], [0.5 * 768, 0.9 * 768 * 720 / 1280, 384, 128])


def test_camera_video_is_relative_to_first_camera_and_subsampled(assets):
    cam = parse_pose_file(assets / "0a3b5fb184936a83.txt")
    video = camera_control_video(cam, 9, 16, 32)  # 24 fps file, 8 fps video: poses 0, 3, ..., 24
    assert video.shape == (1, 6, 9, 16, 32)
    kept = cam[::3][:9]
    ref = plucker_embedding(camera_intrinsics_px(kept.intrinsics, 16, 32), kept.w2c[0] @ np.linalg.inv(kept.w2c), 16, 32)
    torch.testing.assert_close(video[0].permute(1, 0, 2, 3), ref, atol=1e-5, rtol=0)
    # the first frame is the identity camera: pinhole rays, zero moment
    assert video[0, :3, 0].abs().max() < 1e-6
    # moving the whole world rigidly changes nothing: only poses relative to the first camera count
    g = np.eye(4); g[:3, :3] = rot_y(1.0); g[:3, 3] = [5, -2, 3]
    moved = CameraPath(cam.intrinsics, cam.w2c @ np.linalg.inv(g), cam.frame_ids, cam.fps, "moved")
    torch.testing.assert_close(camera_control_video(moved, 9, 16, 32), video, atol=2e-4, rtol=0)
    assert camera_control_video(cam, 9, 16, 32, fps=24).shape == (1, 6, 9, 16, 32)
    with pytest.raises(InputError, match="stride"): camera_control_video(cam, 9, 16, 32, fps=30)
    with pytest.raises(FrameCountError): camera_control_video(cam, 8, 16, 32)


def test_camera_latents_resize_first_frame_alone_and_scale():
    video = torch.full((1, 6, 9, 32, 48), 2.0); video[:, :, 0] = -1.0
    lat = camera_latents(video, 9)
    assert lat.shape == (1, 6, 3, 4, 6)
    assert (lat[:, :, 0] == -6).all() and (lat[:, :, 1:] == 12).all()  # the first frame does not leak into the rest
    assert resize_to_latent_grid(video, 1, 4, 6).shape == (1, 6, 1, 4, 6)


# ---------------------------------------------------------------- presets

def test_pan_left_preset_moves_camera_left():
    n = 9
    cam = camera_preset("Pan Left", n)
    centres = cam.relative_c2w()[:, :3, 3]
    assert (np.diff(centres[:, 0]) < 0).all() and np.allclose(centres[:, 1:], 0)  # to -x: left
    video = camera_control_video(cam, n, 16, 32)[0]
    # a translation: the ray directions stay, the moment o x d of the central ray grows along +y (o = (-s, 0, 0), d ~ +z)
    torch.testing.assert_close(video[3:], video[3:, :1].expand_as(video[3:]))
    central = video[:3, :, 8, 16]
    assert (central[1, 1:] > 0).all() and (torch.diff(central[1]) > 0).all()
    np.testing.assert_allclose(centres[-1, 0], -1.5 * (n - 1) / n)


def test_roll_presets_turn_directions_the_right_way():
    for name, sign in (("ACW", -1), ("CW", 1)):
        video = camera_control_video(camera_preset(name, 5), 5, 16, 32)[0]
        right = video[3:, -1, 8, 30]  # a ray right of centre on the last frame
        # ACW: the camera rolls anticlockwise (seen from behind it), so the right side of the image looks up (y < 0)
        assert sign * right[1] > 0.1, name
        torch.testing.assert_close(video[:3], torch.zeros_like(video[:3]))  # rotation only: zero moment


@pytest.mark.parametrize("name", ["Pan Up", "Pan Down", "Pan Left", "Pan Right"])
def test_original_pan_files_match_presets(assets, name):
    parsed = parse_pose_file(assets / f"{name.replace(' ', '_')}.txt")
    preset = camera_preset(name, len(parsed))
    np.testing.assert_allclose(parsed.w2c, preset.w2c, atol=1e-8)
    move_file = parsed.relative_c2w()[-1, :3, 3]
    move_preset = preset.relative_c2w()[-1, :3, 3]
    assert np.array_equal(np.sign(move_file.round(6)), np.sign(move_preset.round(6)))  # same direction
    expected = {"Pan Up": (1, -1), "Pan Down": (1, 1), "Pan Left": (0, -1), "Pan Right": (0, 1)}[name]
    assert np.sign(move_file[expected[0]]) == expected[1]  # OpenCV axes: x right, y down


def test_presets_combine_alias_and_write(tmp_path):
    a, b = camera_preset("Pan Left", 9, speed=0.5), camera_preset("Zoom In", 9, speed=0.5)
    both = camera_preset("pan left + Zoom In", 9, speed=0.5)
    np.testing.assert_allclose(both.w2c[:, :3, 3], a.w2c[:, :3, 3] + b.w2c[:, :3, 3])
    np.testing.assert_allclose(camera_preset(["Anti Clockwise (ACW)"], 5).w2c, camera_preset("ACW", 5).w2c)
    assert set(CAMERA_PRESETS) == {"Static", "Pan Up", "Pan Down", "Pan Left", "Pan Right", "Zoom In", "Zoom Out", "ACW", "CW"}
    with pytest.raises(InputError, match="Unknown camera preset 'Dolly'"): camera_preset("Pan Left + Dolly", 5)
    lines = camera_preset_lines("Pan Left + Zoom In", 9, speed=0.5)
    assert len(lines) == 9 and all(len(l.split()) == 19 for l in lines)
    assert lines[0].split()[1:5] == [f"{v:.9f}" for v in DEFAULT_CAMERA_INTRINSICS]
    path = write_pose_file(tmp_path / "sub" / "cam.txt", both)
    text = path.read_text().splitlines()
    assert text[0].startswith("# preset Pan Left + Zoom In") and text[1:] == lines
    back = parse_pose_file(path)
    np.testing.assert_allclose(back.w2c, both.w2c, atol=1e-8)
    assert write_pose_file(tmp_path / "lines.txt", lines).read_text().splitlines() == ["", *lines]


def test_write_pose_file_is_atomic(tmp_path, monkeypatch):
    import easyanimate.control as control
    def boom(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(control.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"): write_pose_file(tmp_path / "cam.txt", camera_preset("CW", 5))
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary is left


# ---------------------------------------------------------------- canny

def test_canny_of_white_square_is_its_border():
    frames = np.zeros((5, 64, 96, 3), np.uint8); frames[:, 16:48, 24:72] = 255
    video = canny_control_video(frames, num_frames=5)
    assert video.shape == (1, 3, 5, 64, 96) and set(video.unique().tolist()) == {-1.0, 1.0}
    edges = video[0, 0, 2].numpy() > 0
    ys, xs = np.nonzero(edges)
    on_border = (np.minimum(abs(ys - 15.5), abs(ys - 47.5)) <= 1.5) | (np.minimum(abs(xs - 23.5), abs(xs - 71.5)) <= 1.5)
    inside_box = (ys >= 14) & (ys <= 49) & (xs >= 22) & (xs <= 73)
    assert on_border.all() and inside_box.all()
    assert edges[16, 24:72].any() and edges[16:48, 24].any()  # all four sides are found
    assert (video[0, 0] == video[0, 2]).all()  # three equal channels


def test_canny_from_file_frame_rule_and_size(assets):
    v = canny_control_video(assets / "1.mp4", num_frames=13, stride=2, height=128, width=224, blur=3)
    assert v.shape == (1, 3, 13, 128, 224) and v.min() == -1 and v.max() == 1
    assert canny_control_video(assets / "1.mp4", stride=3, height=64, width=112).shape[2] == 17  # 17 frames: already 4k+1
    assert canny_control_video(assets / "1.mp4", stride=4, height=64, width=112).shape[2] == 13
    assert canny_control_video(assets / "1.mp4", stride=5, height=64, width=112).shape[2] == 9  # 10 rounded down
    with pytest.raises(FrameCountError, match="9 or 13"): canny_control_video(assets / "1.mp4", num_frames=12)
    with pytest.raises(InputError, match="low <= high"): canny_edges(np.zeros((1, 8, 8, 3), np.uint8), 200, 100)


def test_ready_made_pose_video(assets):
    v = load_control_video(assets / "pose.mp4", num_frames=25, height=448, width=256)
    assert v.shape == (1, 3, 25, 448, 256) and -1 <= v.min() < v.max() <= 1
    assert load_frames(assets / "pose.mp4").shape == (49, 1016, 576, 3)


# ---------------------------------------------------------------- trajectories

def test_blob_template_matches_the_original_formula():
    import cv2
    ref = np.zeros((200, 200), np.float32)
    for i in range(200):  # the original's loops, literally
        for j in range(200):
            ref[i, j] = 1 / (2 * np.pi * 40 ** 2) * np.exp(-1 / 2 * ((i - 100) ** 2 / 40 ** 2 + (j - 100) ** 2 / 40 ** 2))
    ref *= cv2.circle(np.zeros((200, 200), np.float32), (100, 100), 99, 1, -1)
    ref = (ref / ref.max() * 255).astype(np.uint8)
    np.testing.assert_array_equal(gaussian_blob(), ref)


def test_trajectory_video_shape_range_and_blob():
    import cv2
    h, w = 384, 672
    frames = trajectory_frames([(0, 100, 120), (24, 500, 260)], 25, h, w)
    assert frames.shape == (25, h, w, 3) and frames.dtype == np.uint8
    r = blob_radius(h, w); assert r == 26
    # frame 0: exactly the original's drawing, the template resized into the box [y-r, y+r) x [x-r, x+r)
    expected = np.zeros((h, w), np.uint8)
    expected[120 - r:120 + r, 100 - r:100 + r] = cv2.resize(gaussian_blob(), (2 * r, 2 * r), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(frames[0, ..., 0], expected)
    assert (frames[..., 0] == frames[..., 2]).all()  # grey: white blob on black
    video = trajectory_control_video([(0, 100, 120), (24, 500, 260)], 25, h, w)
    assert video.shape == (1, 3, 25, h, w) and video.min() == -1 and 0.9 < video.max() <= 1
    with pytest.raises(FrameCountError): trajectory_frames([(0, 1, 1)], 24, h, w)


def test_keyframe_interpolation_hits_keyframes():
    keys = [(0, 40.0, 300.0), (7, 250.5, 30.25), (12, 600.0, 200.0), (24, 33.0, 44.0)]  # blobs clear of the borders
    track = interpolate_track(keys, 25)
    for f, x, y in keys: assert tuple(track[f]) == (x, y)
    np.testing.assert_allclose(track[3], [40 + 3 / 7 * 210.5, 300 + 3 / 7 * (30.25 - 300)])
    # drawn: the brightest pixel of each keyframe is at the keyframe's rounded position (or half a pixel before)
    frames = trajectory_frames(keys, 25, 384, 672)
    for f, x, y in keys:
        yy, xx = np.unravel_index(frames[f, ..., 0].argmax(), frames.shape[1:3])
        assert abs(yy - round(y)) <= 1 and abs(xx - round(x)) <= 1


def test_trajectory_outside_points_are_clipped_with_warning():
    ok = [(0, 50, 50), (8, 60, 60)]
    bad = [(0, -40, 100), (4, 100, 100), (8, 100, 500)]  # left of the frame at first, below it at the end
    with pytest.warns(UserWarning, match=r"track 1: points at frames 0-1, 5-8 lie outside the 224x128 frame; they are clipped"):
        frames = trajectory_frames([ok, bad], 9, 128, 224)
    assert frames[0, 95:106, 0:4, 0].max() > 0  # drawn on the left border
    assert frames[8, 120:127, 95:106, 0].max() > 0  # and on the bottom one
    with pytest.warns(UserWarning, match="not drawn"):
        skipped = trajectory_frames([bad], 9, 128, 224, outside="skip")
    assert skipped[0].max() == 0 and skipped[4].max() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trajectory_frames([ok], 9, 128, 224)  # inside: no warning


def test_trajectory_normalized_coordinates_and_track_forms():
    px = trajectory_frames([(0, 111.5, 63.5), (8, 0, 127)], 9, 128, 224)
    norm = trajectory_frames([(0, 0.5, 0.5), (8, 0.0, 1.0)], 9, 128, 224, normalized=True)
    np.testing.assert_array_equal(px, norm)
    per_frame = np.stack([np.linspace(10, 200, 9), np.full(9, 64)], axis=1)
    a = trajectory_frames(per_frame, 9, 128, 224)
    b = trajectory_frames({0: (10, 64), 8: (200, 64)}, 9, 128, 224)
    np.testing.assert_array_equal(a, b)
    held = trajectory_frames([(4, 100, 60)], 9, 128, 224)
    gone = trajectory_frames([(4, 100, 60)], 9, 128, 224, hold=False)
    assert held[0].max() > 0 and gone[0].max() == 0 and (gone[4] == held[4]).all()
    with pytest.raises(InputError, match="appears twice"): trajectory_frames([(1, 5, 5), (1, 6, 6)], 9, 128, 224)
    with pytest.raises(InputError, match="non-finite"): trajectory_frames([(1, np.nan, 5)], 9, 128, 224)


# ---------------------------------------------------------------- detectors

def _save_tiny_depth_models(tmp_path):
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTConfig,
                              DPTForDepthEstimation, DPTImageProcessor)
    torch.manual_seed(0)
    da = tmp_path / "depth_anything"
    DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                     image_size=28, patch_size=14, out_features=["stage1", "stage2"], reshape_hidden_states=False),
        reassemble_hidden_size=32, patch_size=14, neck_hidden_sizes=[8, 16], fusion_hidden_size=16, head_hidden_size=8,
        reassemble_factors=[2, 1])).save_pretrained(da)
    DPTImageProcessor(size={"height": 28, "width": 28}).save_pretrained(da)
    dpt = tmp_path / "dpt"
    DPTForDepthEstimation(DPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                    image_size=32, patch_size=8, backbone_out_indices=[0, 1], neck_hidden_sizes=[8, 16],
                                    fusion_hidden_size=16, head_in_index=-1, reassemble_factors=[2, 1])).save_pretrained(dpt)
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(dpt)
    return da, dpt


def test_depth_detector_from_local_folder(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (9, 40, 70, 3), dtype=np.uint8)
    for folder in _save_tiny_depth_models(tmp_path):
        detector = load_detector("depth", folder)
        video = detector_control_video(frames, detector, num_frames=5, height=32, width=64)
        assert video.shape == (1, 3, 5, 32, 64)
        assert video.min() == -1 and video.max() == 1  # scaled over the clip to the full range
        assert (video[:, 0] == video[:, 2]).all()


def test_missing_detectors_say_to_pass_a_ready_made_video(tmp_path):
    for kind in ("depth", "pose", "mlsd"):
        with pytest.raises(WeightsError, match=f"ready-made {kind} control video"):
            load_detector(kind, tmp_path / "absent")
    with pytest.raises(WeightsError, match="body_pose_model.pth"): load_detector("pose", tmp_path)
    with pytest.raises(WeightsError, match="preprocessor_config.json"):
        (tmp_path / "config.json").write_text("{}"); load_detector("depth", tmp_path)
    (tmp_path / "mlsd_large_512_fp32.pth").write_bytes(b"")
    import builtins
    real_import = builtins.__import__
    def no_cna(name, *a, **k):
        if name == "controlnet_aux": raise ImportError("No module named 'controlnet_aux'")
        return real_import(name, *a, **k)
    builtins.__import__ = no_cna
    try:
        with pytest.raises(MissingDependencyError, match="pip install controlnet-aux"): load_detector("mlsd", tmp_path)
    finally:
        builtins.__import__ = real_import


def test_controlnet_aux_adapter_loads_from_folder_and_resizes(tmp_path, monkeypatch):
    "controlnet-aux is not installed here; a stand-in with its API checks our side of the adapter."
    loaded = {}
    class FakeDetector:
        @classmethod
        def from_pretrained(cls, path):
            loaded["path"] = path; return cls()
        def to(self, device): return self
        def __call__(self, image, detect_resolution, image_resolution, output_type):
            assert output_type == "np" and image.dtype == np.uint8
            return np.full((128, 192), image.mean(), np.uint8)  # controlnet-aux returns multiples of 64
    fake = types.SimpleNamespace(OpenposeDetector=FakeDetector, MLSDdetector=FakeDetector)
    monkeypatch.setitem(sys.modules, "controlnet_aux", fake)
    (tmp_path / "body_pose_model.pth").write_bytes(b"")
    detector = load_detector("pose", tmp_path)
    assert loaded["path"] == str(tmp_path)
    frames = np.full((5, 48, 80, 3), 77, np.uint8)
    video = detector_control_video(frames, detector, height=48, width=80)
    assert video.shape == (1, 3, 5, 48, 80)
    np.testing.assert_allclose(video.numpy(), 77 / 127.5 - 1, atol=1e-6)
    with pytest.raises(InputError, match="must return uint8 maps"):
        detector_control_video(frames, lambda f: f[:, :10], height=48, width=80)
