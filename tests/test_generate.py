"""`vidpipe generate` end to end with the tiny SVD: files a user can open, and pp/dp = 1 rank = diffusers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import read_json, run_here, run_main
from vidpipe.models.registry import resolve_model

STEPS = 3  # pp's 2 stages take 2 + 1 steps
COMMON = ["--model", "tiny", "--steps", str(STEPS), "--device", "cpu", "--max-guidance", "2.5"]



@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    y, x = np.mgrid[0:72, 0:96]
    pixels = np.stack([x * 255 / 95, y * 255 / 71, (x + y) * 255 / 166], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("in") / "photo.png"
    PIL.Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def generate(capsys):
    """`vidpipe generate ARGS` in this process (ranks from its warm worker server) -> CompletedProcess."""
    return lambda *args: run_here(capsys, "generate", *args)


def test_two_ranks_write_every_format(generate, tmp_path, cache, photo):
    out = tmp_path / "out"
    result = generate(str(photo), *COMMON, "--cache-dir", str(cache), "--gpus", "2", "--samples", "3",
                      "--seed", "5", "--out", str(out), "--format", "mp4,gif,png", "--save-latents",
                      "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(tmp_path / "r.json")
    assert report["verified"] if "verified" in report else True
    assert [s["seed"] for s in report["samples"]] == [5, 6, 7]
    assert {s["decoded_on_rank"] for s in report["samples"]} == {0, 1}  # phase 2 spread over the ranks
    assert set(report["peak_memory_gb_per_rank_by_phase"]) >= {"diffuse", "decode"}
    for index, seed in enumerate((5, 6, 7)):
        stem = out / f"photo_s{index}_seed{seed}"
        video = imageio.get_reader(f"{stem}.mp4", "ffmpeg")
        frames = list(video.iter_data())
        assert len(frames) == 4 and frames[0].shape == (64, 64, 3)  # tiny: 4 frames of 64 x 64
        assert video.get_meta_data()["fps"] == 7
        assert PIL.Image.open(f"{stem}.gif").n_frames >= 1
        assert sorted(p.name for p in stem.iterdir()) == [f"frame_00{i}.png" for i in range(4)]
        assert load_file(f"{stem}.latents.safetensors")["latents"].shape == (4, 4, 8, 8)
    assert PIL.Image.open(out / "photo_input.png").size == (64, 64)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["sample"] for entry in manifest) == [0, 1, 2]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written
    assert "Files written" in result.stderr


def test_auto_splits_one_video_over_the_ranks_and_says_why(generate, tmp_path, cache, photo):
    """The default plan: one sample on 2 ranks goes to the guidance split, and its decode chunks are spread."""
    result = generate(str(photo), *COMMON, "--cache-dir", str(cache), "--gpus", "2", "--decode-chunk-size", "2",
                      "--out", str(tmp_path / "o"), "--format", "mp4", "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())  # as printed, wherever the console wrapped it
    assert "auto -> dp1.cfg2: 1 sample on 2 CPU ranks: 1 group(s) of 2, each splitting its sample's guidance " \
           "batch" in said
    report = read_json(tmp_path / "r.json")
    assert report["plan"] == "dp1.cfg2"
    assert report["samples"][0]["decoded_on_ranks"] == [0, 1]  # 4 frames = 2 chunks of 2, one per rank
    assert len(list(imageio.get_reader(report["samples"][0]["files"][0], "ffmpeg").iter_data())) == 4


#: Plan -> ranks. Whole steps per rank (pp, dp, fsdp) must give the 1-rank latents bit for bit; plans that split a
#: step (cfg, sp) sum in another order: within 1e-5, times the latents' largest magnitude where that exceeds 1.
FIDELITY_PLANS = {"pp": 2, "dp": 2, "fsdp": 2, "cfg2": 2, "sp2": 2, "sp3": 3, "cfg2.sp2": 4, "pp2.cfg2": 4,
                  "dp2.cfg2": 4, "fsdp.sp2": 2}
FIDELITY_FRAMES = 5  # sp2: 3 + 2, sp3: 2 + 2 + 1 frames per rank


def test_every_plan_equals_one_rank_and_diffusers(tmp_path, cache, photo, capsys, monkeypatch):
    """CPU fp32, one thread per rank; each plan's latents and frames against 1 rank and against diffusers'
    own StableVideoDiffusionPipeline. Run with -s to see the fidelity table. (The CLI runs in this process, so
    its ranks come from one worker server for all eleven runs.)"""
    monkeypatch.setenv("VIDPIPE_THREADS_PER_RANK", "1")
    args = [str(photo), *COMMON, "--cache-dir", str(cache), "--samples", "2", "--frames", str(FIDELITY_FRAMES),
            "--format", "png", "--save-latents"]
    outputs = {}
    for plan, ranks in {"one": 1, **FIDELITY_PLANS}.items():
        out = tmp_path / plan
        strategy = ["--strategy", "dp" if plan == "one" else plan]
        code, err = run_main(capsys, "generate", *args, "--out", str(out), "--gpus", str(ranks), *strategy)
        assert code == 0, (plan, err[-3000:])
        outputs[plan] = out

    def latents(plan, i):
        return load_file(outputs[plan] / f"photo_s{i}_seed{i}.latents.safetensors")["latents"]

    def frames(plan, i):
        folder = outputs[plan] / f"photo_s{i}_seed{i}"
        return np.stack([np.asarray(PIL.Image.open(folder / f"frame_{k:03d}.png")) for k in range(FIDELITY_FRAMES)])

    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(resolve_model("tiny", cache_dir=cache).path)
    pipe.set_progress_bar_config(disable=True)
    print("\nplan        ranks  max|diff| vs 1 rank  vs diffusers  frames vs diffusers (1/255)")
    caught = {}

    def catch(_pipe, _step, _t, tensors):
        caught["latents"] = tensors["latents"]
        return tensors

    for i in (0, 1):
        expected_frames = pipe(
            PIL.Image.open(photo), height=64, width=64, num_frames=FIDELITY_FRAMES, num_inference_steps=STEPS, fps=7,
            motion_bucket_id=127, noise_aug_strength=0.02, min_guidance_scale=1.0, max_guidance_scale=2.5,
            decode_chunk_size=4, generator=torch.Generator("cpu").manual_seed(i), output_type="np",
            callback_on_step_end=catch,
        ).frames[0]
        expected = caught["latents"][0]
        one = latents("one", i)
        scale = max(1.0, one.abs().max().item())
        for plan in ["one", *FIDELITY_PLANS]:
            got = latents(plan, i)
            vs_one = (got - one).abs().max().item()
            vs_diffusers = (got - expected).abs().max().item()
            frame_diff = np.abs(frames(plan, i) / 255.0 - expected_frames).max() * 255
            print(f"{plan:<11} {FIDELITY_PLANS.get(plan, 1):>5}  {vs_one:>18.3g}  {vs_diffusers:>12.3g}  "
                  f"{frame_diff:>10.2f}   (sample {i})")
            if plan in ("pp", "dp"):
                assert torch.equal(got, one), plan
            assert vs_one <= 1e-5 * scale, plan
            assert vs_diffusers <= 1e-4 * scale, plan
            assert frame_diff <= 1.0 + 1e-6, plan


@pytest.mark.parametrize(("extra", "expected"), [
    (["--frames", "0"], "--frames 0"),
    (["--decode-chunk-size", "0"], "--decode-chunk-size 0"),
    (["--decode-chunk-size", "9"], "--decode-chunk-size 9: must be between 1 and 4"),
    (["--format", "mp5"], "unknown output format 'mp5'"),
    (["--height", "72"], "--height 72: must be a positive multiple of 16"),
    (["--model", "/nonexistent/dir"], "/nonexistent/dir"),
])
def test_bad_generate_input(capsys, tmp_path, cache, photo, extra, expected):
    args = [str(photo), *COMMON, "--cache-dir", str(cache), "--out", str(tmp_path / "o")]
    code, err = run_main(capsys, "generate", *args, *extra)
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_images_and_outputs(capsys, tmp_path, cache, photo):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.touch()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        ([str(tmp_path / "missing.png")], "missing.png"),
        ([str(text)], "notes.png"),
        ([str(empty)], "empty.png"),
        ([str(tmp_path)], str(tmp_path)),
        ([str(photo), "--out", str(a_file)], str(a_file)),
    ]
    for args, expected in cases:
        code, err = run_main(capsys, "generate", *args, *COMMON, "--cache-dir", str(cache))
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (args, err)


def test_existing_outputs_are_not_overwritten(capsys, tmp_path, cache, photo):
    out = tmp_path / "o"
    out.mkdir()
    (out / "photo_s0_seed0.mp4").write_bytes(b"precious")
    code, err = run_main(capsys, "generate", str(photo), *COMMON, "--cache-dir", str(cache), "--out", str(out))
    assert code == 2 and "--overwrite" in err
    assert (out / "photo_s0_seed0.mp4").read_bytes() == b"precious"


def test_resume_redoes_a_sample_an_interrupted_run_left_partly_written(tmp_path):
    """An interrupt between a sample's formats leaves its gif but not its png folder: --resume skips the finished
    sample and redoes that one (its gif replaced), where a plain run refuses to touch either."""
    from vidpipe.config import GenerateConfig, RunOptions
    from vidpipe.errors import UsageError
    from vidpipe.jobs.generate import plan_outputs
    from vidpipe.models.base import Sample

    out = tmp_path / "o"
    (out / "still_s0_seed0").mkdir(parents=True)
    (out / "still_s0_seed0.gif").write_bytes(b"whole")
    (out / "still_s1_seed1.gif").write_bytes(b"partly written sample")
    samples = [Sample(i, i, image_name="still") for i in range(3)]
    config = dict(run=RunOptions(), images=("still.png",), samples=3, out=str(out), formats=("gif", "png"))
    todo, targets, _inputs = plan_outputs(GenerateConfig(**config, resume=True), samples)
    assert [s.index for s in todo] == [1, 2]
    assert targets[1]["gif"] == str(out / "still_s1_seed1.gif")
    with pytest.raises(UsageError, match="still_s0_seed0.* and 2 more already exist"):
        plan_outputs(GenerateConfig(**config), samples)


def test_a_job_file_runs_every_job_with_its_own_options(tmp_path, cache, photo, capsys, monkeypatch):
    """Three jobs of different steps, frames and motion (one a sweep) through a 2-stage pipeline: the pipeline's
    latents equal data parallel's, files land in OUT/<id>/, the report and manifest are keyed by id, and
    --resume then has nothing left to do."""
    monkeypatch.setenv("VIDPIPE_THREADS_PER_RANK", "1")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([
        json.dumps({"image": str(photo), "id": "calm", "motion_bucket_id": 20, "steps": 3}),
        json.dumps({"image": photo.name, "id": "sweep", "steps": 4, "frames": 5,
                    "sweep": [{"motion_bucket_id": 50}, {"motion_bucket_id": 200, "seed": 7}]}),
        "# comments and blank lines are skipped",
        "",
        json.dumps({"image": photo.name, "samples": 2, "format": "gif"}),
    ]))
    shutil.copy(photo, tmp_path / photo.name)  # relative images are found beside the job file
    latents = {}
    for plan in ("pp", "dp"):
        out = tmp_path / plan
        code, err = run_main(capsys, "generate", "--jobs", str(jobs), "--model", "tiny", "--cache-dir", str(cache),
                             "--device", "cpu", "--gpus", "2", "--strategy", plan, "--steps", "2",
                             "--save-latents", "--out", str(out), "--json", str(tmp_path / f"{plan}.json"))
        assert code == 0, err
        latents[plan] = {p.relative_to(out): load_file(p)["latents"] for p in out.glob("*/*.safetensors")}
    report = read_json(tmp_path / "pp.json")
    assert report["jobs"] == {"calm": [0], "sweep": [1, 2], "line5": [3, 4]}
    assert [(s["job"], s["seed"], s["steps"], s["motion_bucket_id"]) for s in report["samples"]] == [
        ("calm", 0, 3, 20), ("sweep", 0, 4, 50), ("sweep", 7, 4, 200), ("line5", 0, 2, 127), ("line5", 1, 2, 127)]
    assert sorted(map(str, latents["pp"])) == [
        "calm/photo_s0_seed0.latents.safetensors", "line5/photo_s0_seed0.latents.safetensors",
        "line5/photo_s1_seed1.latents.safetensors", "sweep/photo_s0_seed0.latents.safetensors",
        "sweep/photo_s1_seed7.latents.safetensors"]
    for name, tensor in latents["pp"].items():
        assert torch.equal(tensor, latents["dp"][name]), name
    assert latents["pp"][Path("sweep/photo_s0_seed0.latents.safetensors")].shape[0] == 5
    manifest = [json.loads(line) for line in (tmp_path / "pp" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["job"] for entry in manifest) == ["calm", "line5", "line5", "sweep", "sweep"]
    assert (tmp_path / "pp" / "line5" / "photo_s1_seed1.gif").is_file()

    code, err = run_main(capsys, "generate", "--jobs", str(jobs), "--model", "tiny", "--cache-dir", str(cache),
                         "--device", "cpu", "--gpus", "2", "--steps", "2", "--save-latents", "--out",
                         str(tmp_path / "pp"), "--resume")
    assert code == 0 and "nothing to do" in err


@pytest.mark.parametrize(("line", "expected"), [
    ("{", "line 1: not JSON"),
    ('{"seed": 3}', 'line 1: each line is a JSON object with "image"'),
    ('{"image": "photo.png", "colour": "red"}', "unknown option 'colour'"),
    ('{"image": "photo.png", "sweep": [{"samples": 2}]}', "'samples' cannot vary per sample"),
])
def test_bad_job_files_are_one_line(capsys, tmp_path, cache, photo, line, expected):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line)
    code, err = run_main(capsys, "generate", "--jobs", str(jobs), "--model", "tiny", "--cache-dir", str(cache),
                         "--device", "cpu", "--out", str(tmp_path / "o"))
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
