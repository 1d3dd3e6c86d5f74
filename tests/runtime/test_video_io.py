"""Videos written and read back: .gif through Pillow, .mp4 through PyAV; bad input named, no partial file left."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from diffrt.runtime import export_to_video, load_video
from diffrt.runtime.errors import ConfigError


def moving_square(frames: int = 6, size: tuple[int, int] = (32, 48)) -> np.ndarray:
    """(F, H, W, 3) floats in [0, 1]: a white square moving right on black."""
    h, w = size
    video = np.zeros((frames, h, w, 3), dtype=np.float32)
    for i in range(frames):
        video[i, 8:20, 4 + 4 * i : 16 + 4 * i] = 1.0
    return video


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_written_video_reads_back_with_its_frames(tmp_path, suffix):
    video = moving_square()
    path = export_to_video(list(video), tmp_path / f"clip{suffix}", fps=8)
    frames = load_video(path)
    assert len(frames) == len(video)
    assert frames[0].size == (48, 32)
    got = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in frames])
    tolerance = 0.02 if suffix == ".gif" else 0.25  # H.264 is lossy; the square must still be where it was
    assert np.abs(got - video).mean() < tolerance
    centroids = [np.argwhere(f.mean(-1) > 0.5)[:, 1].mean() for f in got]
    assert np.all(np.diff(centroids) > 2), "the square does not move right in the file read back"
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]


def test_pil_frames_and_uint8_arrays_are_accepted(tmp_path):
    video = (moving_square(3) * 255).astype(np.uint8)
    export_to_video([PIL.Image.fromarray(f) for f in video], tmp_path / "a.gif")
    export_to_video(video, tmp_path / "b.gif")
    a, b = load_video(tmp_path / "a.gif"), load_video(tmp_path / "b.gif")
    assert [np.asarray(f).tolist() for f in a] == [np.asarray(f).tolist() for f in b]


def test_odd_sizes_are_padded_for_h264(tmp_path):
    path = export_to_video(list(moving_square(3, (17, 23))), tmp_path / "odd.mp4")
    assert load_video(path)[0].size == (24, 18)


@pytest.mark.parametrize(
    ("frames", "name", "fps", "message"),
    [
        ([], "x.gif", 8, "non-empty"),
        ([np.zeros((4, 4))], "x.gif", 8, "RGB"),
        ([np.zeros((4, 4, 3)), np.zeros((5, 4, 3))], "x.gif", 8, "one size"),
        ([np.zeros((4, 4, 3))], "x.avi", 8, "extensions"),
        ([np.zeros((4, 4, 3))], "x.gif", 0, "fps"),
    ],
    ids=["empty", "grey", "sizes", "suffix", "fps"],
)
def test_bad_video_input_is_named_and_nothing_is_written(tmp_path, frames, name, fps, message):
    with pytest.raises(ConfigError, match=message):
        export_to_video(frames, tmp_path / name, fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_video_is_named(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ConfigError, match="bad.mp4"):
        load_video(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_video(tmp_path / "missing.gif")
