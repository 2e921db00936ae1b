"""vidpipe.media: input validation, output naming, and atomic writers read back the way a user would."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from vidpipe import media
from vidpipe.errors import UsageError, VidpipeError
from vidpipe.media import video

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def smooth_frames(count: int = 5, height: int = 24, width: int = 32) -> np.ndarray:
    """Gradients that change every frame: easy for a lossy codec, and no two frames alike."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 40 + 30 * t)], axis=-1)
        for t in range(count)
    ]
    return np.stack(frames).astype(np.uint8)


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: object) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message


def save_image(path: Path, size=(40, 30), mode="RGB", image_format="PNG", **params) -> Path:
    rng = np.random.default_rng(0)  # noise, so compressed data fills the file and truncation hits pixels
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path, format=image_format, **params)
    return path


def file_with(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def probe(path: Path) -> str:
    """What `ffmpeg -i` says about a file (on stderr; it exits 1 because no output is given)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)]
    return subprocess.run(command, capture_output=True, text=True).stderr


def read_mp4(path: Path) -> np.ndarray:
    with imageio.get_reader(path, "ffmpeg") as reader:
        return np.stack(list(reader.iter_data()))  # list(reader) trips over its infinite len()


# ----- load_image


def test_load_image_returns_a_loaded_rgb_image(tmp_path):
    image = media.load_image(save_image(tmp_path / "cat.png", size=(40, 30), mode="RGBA"))
    assert image.mode == "RGB"
    assert image.size == (40, 30)
    image.getpixel((0, 0))  # no file behind it any more


def test_load_image_turns_the_image_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned 90 degrees
    path = save_image(tmp_path / "phone.jpg", size=(40, 30), image_format="JPEG", exif=exif)
    image = media.load_image(path)
    assert image.size == (30, 40)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda tmp: tmp / "missing.png", "does not exist"),
        (lambda tmp: tmp, "is a folder"),
        (lambda tmp: file_with(tmp / "empty.png", b""), "is empty"),
        (lambda tmp: file_with(tmp / "notes.png", b"hello"), "not an image"),
    ],
    ids=["missing", "folder", "empty", "not-an-image"],
)
def test_load_image_rejects_what_is_not_an_image(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(UsageError) as exc:
        media.load_image(path)
    assert_one_line(exc, path, fragment)


@pytest.mark.parametrize("image_format, name", [("PNG", "cut.png"), ("JPEG", "cut.jpg")])
def test_load_image_rejects_a_truncated_file(tmp_path, image_format, name):
    path = save_image(tmp_path / name, size=(64, 64), image_format=image_format)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UsageError) as exc:
        media.load_image(path)
    assert_one_line(exc, path, "truncated or corrupt")


@pytest.mark.parametrize("size", [(15, 10), (30, 30)], ids=["pillow-warns", "pillow-refuses"])
def test_load_image_rejects_a_decompression_bomb(tmp_path, monkeypatch, size):
    path = save_image(tmp_path / "huge.png", size=size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UsageError) as exc:
        media.load_image(path)
    assert_one_line(exc, path, f"{size[0] * size[1]} pixels", "100-pixel limit")


def test_load_image_rejects_a_file_it_may_not_read(tmp_path, monkeypatch):
    path = save_image(tmp_path / "secret.png")

    def permission_denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(media.images, "open", permission_denied, raising=False)  # works as root too
    with pytest.raises(UsageError) as exc:
        media.load_image(path)
    assert_one_line(exc, path, "permission denied")


@pytest.mark.skipif(IS_ROOT, reason="root can read any file")
def test_load_image_rejects_an_unreadable_file(tmp_path):
    path = save_image(tmp_path / "secret.png")
    path.chmod(0)
    with pytest.raises(UsageError) as exc:
        media.load_image(path)
    assert_one_line(exc, path, "permission denied")


# ----- the output folder and names


def test_check_output_dir_creates_missing_folders(tmp_path):
    out = tmp_path / "a" / "b"
    media.check_output_dir(out)
    assert out.is_dir()
    assert list(out.iterdir()) == []  # the write probe is gone


def test_check_output_dir_rejects_a_file(tmp_path):
    out = tmp_path / "out"
    out.write_text("")
    with pytest.raises(UsageError) as exc:
        media.check_output_dir(out)
    assert_one_line(exc, out, "is a file")


@pytest.mark.skipif(IS_ROOT, reason="root can write anywhere")
def test_check_output_dir_rejects_a_folder_without_write_permission(tmp_path):
    out = tmp_path / "locked"
    out.mkdir(mode=0o500)
    with pytest.raises(UsageError) as exc:
        media.check_output_dir(out)
    assert_one_line(exc, out, "not writable", "permission denied")


def test_check_output_dir_rejects_a_read_only_file_system(tmp_path, monkeypatch):
    def read_only(**kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(media.outputs.tempfile, "mkstemp", read_only)
    with pytest.raises(UsageError) as exc:
        media.check_output_dir(tmp_path)
    assert_one_line(exc, tmp_path, "read-only file system", "--out")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mp4", ("mp4",)),
        ("mp4,gif,png", ("mp4", "gif", "png")),
        (" GIF , mp4,gif,latents,", ("gif", "mp4", "latents")),
    ],
)
def test_parse_formats(text, expected):
    assert media.parse_formats(text) == expected


@pytest.mark.parametrize("text, fragment", [("mp4,webm", "'webm'"), ("", "no output format"), (" , ", "no")])
def test_parse_formats_rejects_unknown_or_empty(text, fragment):
    with pytest.raises(UsageError) as exc:
        media.parse_formats(text)
    assert_one_line(exc, fragment, "mp4, gif, png, latents")


def test_output_paths_and_completeness(tmp_path):
    stem = media.sample_stem("cat", 2, 42)
    assert stem == "cat_s2_seed42"
    paths = media.output_paths(tmp_path, stem, ("png", "mp4", "latents", "gif"))
    assert list(paths) == ["png", "mp4", "latents", "gif"]
    assert paths["mp4"] == tmp_path / "cat_s2_seed42.mp4"
    assert paths["gif"] == tmp_path / "cat_s2_seed42.gif"
    assert paths["png"] == tmp_path / "cat_s2_seed42"
    assert paths["latents"] == tmp_path / "cat_s2_seed42.latents.safetensors"

    assert media.existing_outputs(paths) == [] and not media.is_complete(paths)
    paths["mp4"].write_bytes(b"x")
    paths["png"].write_bytes(b"x")  # a file where the frames folder should be
    assert media.existing_outputs(paths) == [paths["png"], paths["mp4"]]
    paths["latents"].write_bytes(b"x")
    paths["gif"].write_bytes(b"x")
    assert not media.is_complete(paths)
    paths["png"].unlink()
    paths["png"].mkdir()
    assert media.is_complete(paths)


# ----- writers, read back the way a user would


def test_write_mp4_plays_in_a_browser_and_looks_like_the_frames(tmp_path):
    frames = smooth_frames(count=6)
    path = tmp_path / "clip.mp4"
    media.write_mp4(path, frames, fps=7)

    info = probe(path)
    assert "Video: h264" in info and "yuv420p" in info and "7 fps" in info
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: the index comes first
    decoded = read_mp4(path)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 10
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]


def test_write_mp4_pads_odd_sizes_to_even(tmp_path):
    frames = smooth_frames(count=3, height=23, width=31)
    path = tmp_path / "odd.mp4"
    media.write_mp4(path, frames, fps=8)
    decoded = read_mp4(path)
    assert decoded.shape == (3, 24, 32, 3)
    assert np.abs(decoded[:, :23, :31].astype(int) - frames).mean() < 10


def test_write_gif_loops_at_the_frame_rate(tmp_path):
    frames = smooth_frames(count=4)
    path = tmp_path / "clip.gif"
    media.write_gif(path, frames, fps=7)
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        assert gif.size == (32, 24)
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 140  # 1000 / 7 ms, to the nearest hundredth of a second
        gif.seek(3)
        assert np.abs(np.asarray(gif.convert("RGB"), dtype=int) - frames[3]).mean() < 10


def test_write_png_frames_is_exact(tmp_path):
    frames = smooth_frames(count=3)
    folder = tmp_path / "clip"
    media.write_png_frames(folder, frames)
    assert sorted(os.listdir(folder)) == ["frame_000.png", "frame_001.png", "frame_002.png"]
    for index, frame in enumerate(frames):
        with Image.open(folder / f"frame_{index:03d}.png") as png:
            np.testing.assert_array_equal(np.asarray(png), frame)
    assert sorted(os.listdir(tmp_path)) == ["clip"]


def test_write_png_frames_replaces_an_older_folder_whole(tmp_path):
    folder = tmp_path / "clip"
    media.write_png_frames(folder, smooth_frames(count=4))
    media.write_png_frames(folder, smooth_frames(count=2))
    assert sorted(os.listdir(folder)) == ["frame_000.png", "frame_001.png"]
    assert sorted(os.listdir(tmp_path)) == ["clip"]


def test_png_frame_names_grow_past_a_thousand_frames():
    assert media.png_frame_name(7, 25) == "frame_007.png"
    assert media.png_frame_name(999, 1000) == "frame_999.png"
    assert media.png_frame_name(7, 1001) == "frame_0007.png"


def test_write_latents_stores_contiguous_fp32(tmp_path):
    latents = torch.randn(2, 4, 3, 5).to(torch.bfloat16).transpose(1, 2)  # not contiguous, not fp32
    path = tmp_path / "clip.latents.safetensors"
    media.write_latents(path, latents)
    loaded = safetensors.torch.load_file(path)
    assert list(loaded) == ["latents"]
    assert loaded["latents"].dtype == torch.float32
    torch.testing.assert_close(loaded["latents"], latents.float(), rtol=0, atol=0)


def test_write_png_and_json_round_trip(tmp_path):
    image = Image.fromarray(smooth_frames(count=1)[0])
    media.write_png(tmp_path / "first.png", image)
    with Image.open(tmp_path / "first.png") as png:
        np.testing.assert_array_equal(np.asarray(png), np.asarray(image))

    report = {"samples": 2, "name": "café", "times_s": [1.5, 2.0]}
    media.write_json(tmp_path / "report.json", {"old": True})
    media.write_json(tmp_path / "report.json", report)
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8")) == report
    assert sorted(os.listdir(tmp_path)) == ["first.png", "report.json"]


# ----- atomicity: a writer that fails midway leaves nothing behind


def fail_in_pillow_save(monkeypatch, error, after_saves=0):
    """Let `after_saves` Pillow saves through, then write half a file and raise `error`."""
    real_save = Image.Image.save
    calls = []

    def save(image, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) <= after_saves:
            return real_save(image, fp, *args, **kwargs)
        Path(fp).write_bytes(b"half a file")
        raise error

    monkeypatch.setattr(Image.Image, "save", save)


def fail_in_save_file(monkeypatch, error):
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise error

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def fail_in_write_text(monkeypatch, error):
    def write_text(path, text, encoding=None):
        path.write_bytes(text[:5].encode())
        raise error

    monkeypatch.setattr(Path, "write_text", write_text)


def fail_in_ffmpeg(monkeypatch, error):
    """ffmpeg writes half a file; a full disk shows up as its exit status and stderr, not as an exception."""
    media.check_ffmpeg_h264()  # cache the real check before faking subprocess.run

    def run(command, **kwargs):
        Path(command[-1]).write_bytes(b"half a file")
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            stderr = b"[out#0/mp4] Error writing trailer: No space left on device\n"
            return subprocess.CompletedProcess(command, 1, b"", stderr)
        raise error

    monkeypatch.setattr(video.subprocess, "run", run)


WRITERS = {
    "mp4": ("clip.mp4", lambda p: media.write_mp4(p, smooth_frames(), 7), fail_in_ffmpeg),
    "gif": ("clip.gif", lambda p: media.write_gif(p, smooth_frames(), 7), fail_in_pillow_save),
    "png-frames": (
        "clip",
        lambda p: media.write_png_frames(p, smooth_frames()),
        lambda mp, error: fail_in_pillow_save(mp, error, after_saves=2),
    ),
    "latents": ("c.latents.safetensors", lambda p: media.write_latents(p, torch.ones(2)), fail_in_save_file),
    "png": ("first.png", lambda p: media.write_png(p, Image.new("RGB", (4, 4))), fail_in_pillow_save),
    "json": ("report.json", lambda p: media.write_json(p, {"a": 1}), fail_in_write_text),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch, kind):
    name, write, make_it_fail = WRITERS[kind]
    make_it_fail(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        write(tmp_path / name)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", WRITERS)
def test_a_full_disk_is_a_one_line_error_and_leaves_nothing(tmp_path, monkeypatch, kind):
    name, write, make_it_fail = WRITERS[kind]
    make_it_fail(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(VidpipeError) as exc:
        write(tmp_path / name)
    assert_one_line(exc, f"disk full while writing {tmp_path / name}", "free space or choose another --out")
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_old_output(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    media.write_json(path, {"version": 1})
    fail_in_write_text(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        media.write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert os.listdir(tmp_path) == ["report.json"]


def test_an_ffmpeg_failure_is_a_one_line_error(tmp_path, monkeypatch):
    media.check_ffmpeg_h264()

    def run(command, **kwargs):
        return subprocess.CompletedProcess(command, 8, b"", b"some detail\nConversion failed!\n")

    monkeypatch.setattr(video.subprocess, "run", run)
    with pytest.raises(VidpipeError) as exc:
        media.write_mp4(tmp_path / "clip.mp4", smooth_frames(), 7)
    assert_one_line(exc, tmp_path / "clip.mp4", "exit 8", "Conversion failed!")
    assert os.listdir(tmp_path) == []


# ----- ffmpeg's H.264 encoder


@pytest.fixture
def fresh_ffmpeg_check():
    video._h264_problem.cache_clear()
    yield
    video._h264_problem.cache_clear()


def test_check_ffmpeg_h264_passes_with_the_bundled_ffmpeg(fresh_ffmpeg_check):
    media.check_ffmpeg_h264()


def test_check_ffmpeg_h264_names_the_missing_encoder_once(tmp_path, monkeypatch, fresh_ffmpeg_check):
    fake_ffmpeg = tmp_path / "ffmpeg"
    fake_ffmpeg.write_text("#!/bin/sh\necho run >> \"$0.calls\"\necho ' V....D mpeg4   MPEG-4 part 2'\n")
    fake_ffmpeg.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake_ffmpeg))
    for _ in range(2):
        with pytest.raises(UsageError) as exc:
            media.check_ffmpeg_h264()
        assert_one_line(exc, "libx264", fake_ffmpeg, "--format gif,png")
    assert (tmp_path / "ffmpeg.calls").read_text() == "run\n"


def test_check_ffmpeg_h264_without_ffmpeg(monkeypatch, fresh_ffmpeg_check):
    def no_ffmpeg():
        raise RuntimeError("No ffmpeg exe could be found.")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_ffmpeg)
    with pytest.raises(UsageError) as exc:
        media.check_ffmpeg_h264()
    assert_one_line(exc, "needs ffmpeg", "No ffmpeg exe could be found.", "--format gif,png")
