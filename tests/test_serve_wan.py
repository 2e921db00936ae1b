"""`vidpipe serve`, `submit`, job files and the page with a Wan model (wan-tiny, random weights, CPU): a job takes
Wan's fields (prompt, negative prompt, guidance scales) and refuses SVD's, one warm 2-stage pipeline runs it, and
its latents are `vidpipe generate`'s bit for bit."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import read_json, run_main
from tests.test_serve import IMAGE, Server, post, wait_for
from vidpipe.models.registry import resolve_model

try:  # the page test needs selenium, chromium and chromium-driver; the rest of this file does not
    from tests.test_page import CHROMEDRIVER, CHROMIUM, browser, card_status, screenshot, submit, until  # noqa: F401
    PAGE = bool(CHROMIUM and CHROMEDRIVER)
except pytest.skip.Exception:
    PAGE = False

PROMPT, NEGATIVE = "a red fox running through snow", "blurry"


@pytest.fixture(scope="module")
def wan_cache(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    resolve_model("wan-tiny", cache_dir=cache_dir)
    return cache_dir


@pytest.fixture(scope="module")
def wan_server(tmp_path_factory, wan_cache):
    """One warm wan-tiny server on a 2-stage pipeline: each sample's state (the solver's history, host-side step
    count and guidance included) is handed from stage 0 to stage 1."""
    instance = Server(tmp_path_factory.mktemp("serve") / "out", wan_cache, "--model", "wan-tiny", "--gpus", "2",
                      "--strategy", "pp", env_extra={"VIDPIPE_THREADS_PER_RANK": "1"})
    with instance.client() as client:
        instance.wait_ready(client)
    yield instance
    instance.stop()


def test_a_wan_sweep_gives_the_latents_of_generate_and_a_wan_job_file(wan_server, wan_cache, tmp_path, capsys,
                                                                      monkeypatch):
    """A job with a prompt and a 2-entry sweep (guidance, then another prompt and seed): sample 0 equals `generate
    IMAGE --prompt ...`, sample 1 the same sample in a job file (whose other line sweeps prompts), bit for bit."""
    sweep = [{"guidance_scale": 3.0}, {"guidance_scale": 6.0, "prompt": "a cat", "seed": 9}]
    with wan_server.client() as client:
        health = client.get("/v1/health").json()
        assert health["family"] == "wan" and health["plan"] == "pp2"
        assert {"prompt", "negative_prompt", "guidance_scale"} <= set(health["fields"])
        assert "fps" not in health["fields"] and "guidance_scale_2" not in health["fields"]  # one expert
        assert health["defaults"]["steps"] == 50 and health["defaults"]["guidance_scale"] == 5.0
        job = post(client, prompt=PROMPT, negative_prompt=NEGATIVE, steps=3, seed=5, save_latents="true",
                   sweep=json.dumps(sweep)).json()
        final = wait_for(client, job["id"])
        assert final["status"] == "done", final
        assert final["progress"]["samples_total"] == 2 and final["options"]["prompt"] == PROMPT
        served = {}
        for stem in ("sunset_s0_seed5", "sunset_s1_seed9"):
            content = client.get(f"/v1/files/{job['id']}/{stem}.latents.safetensors").content
            (tmp_path / f"{stem}.safetensors").write_bytes(content)
            served[stem] = load_file(tmp_path / f"{stem}.safetensors")["latents"]
            video = client.get(f"/v1/files/{job['id']}/{stem}.mp4").content
            frames = list(imageio.get_reader(video, "mp4").iter_data())
            assert len(frames) == 9 and frames[0].shape == (32, 48, 3)  # wan-tiny's 9 frames of 32 x 48

    monkeypatch.setenv("VIDPIPE_THREADS_PER_RANK", "1")
    common = ["--model", "wan-tiny", "--cache-dir", str(wan_cache), "--device", "cpu", "--gpus", "1", "--steps", "3",
              "--negative-prompt", NEGATIVE, "--save-latents", "--format", "gif"]
    code, err = run_main(capsys, "generate", str(IMAGE), *common, "--seed", "5", "--prompt", PROMPT,
                         "--guidance-scale", "3", "--out", str(tmp_path / "one"))
    assert code == 0, err[-3000:]
    expected = load_file(tmp_path / "one" / "sunset_s0_seed5.latents.safetensors")["latents"]
    assert expected.shape == (16, 3, 4, 6) and torch.equal(served["sunset_s0_seed5"], expected)

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([
        json.dumps({"image": str(IMAGE), "id": "cat", "prompt": "a cat", "guidance_scale": 6.0, "seed": 9}),
        json.dumps({"image": str(IMAGE), "id": "prompts", "steps": 2, "sweep": [{"prompt": "a"}, {"seed": 4}]}),
    ]))
    code, err = run_main(capsys, "generate", "--jobs", str(jobs), *common, "--prompt", PROMPT, "--out",
                         str(tmp_path / "jobs"), "--json", str(tmp_path / "jobs.json"))
    assert code == 0, err[-3000:]
    expected = load_file(tmp_path / "jobs" / "cat" / "sunset_s0_seed9.latents.safetensors")["latents"]
    assert torch.equal(served["sunset_s1_seed9"], expected)
    report = read_json(tmp_path / "jobs.json")
    assert report["jobs"] == {"cat": [0], "prompts": [1, 2]}
    assert [(s["job"], s["seed"], s["steps"], s["prompt"], s["guidance_scale"]) for s in report["samples"]] == [
        ("cat", 9, 3, "a cat", 6.0), ("prompts", 0, 2, "a", 5.0), ("prompts", 4, 2, PROMPT, 5.0)]
    assert (tmp_path / "jobs" / "prompts" / "sunset_s1_seed4.gif").is_file()


@pytest.mark.parametrize(("fields", "message"), [
    ({"fps": "8"}, "fps is a Stable Video Diffusion option; Wan takes prompt"),
    ({"sweep": '[{"prompt": "a"}, {"motion_bucket_id": 60}]'}, "sweep[1]: motion_bucket_id is a Stable Video"),
    ({"frames": "10"}, "frames 10: Wan takes 4k + 1 frames"),
    ({"guidance_scale": "x"}, "guidance_scale 'x': not a number"),
])
def test_svd_fields_and_bad_values_get_422_naming_the_field(wan_server, fields, message):
    with wan_server.client() as client:
        response = post(client, **fields)
    assert response.status_code == 422 and message in response.json()["error"], response.text


def test_submit_sends_wan_fields_and_a_job_file_refuses_svd_ones(wan_server, wan_cache, tmp_path, capsys):
    code, err = run_main(capsys, "submit", str(IMAGE), "--server", wan_server.url, "--prompt", PROMPT,
                         "--guidance-scale", "-1", "--out", str(tmp_path / "videos"))
    assert code == 2 and "guidance_scale -1.0: must be 0 or more" in err and len(err.strip().splitlines()) == 1
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(IMAGE), "id": "svd", "motion_bucket_id": 60}))
    code, err = run_main(capsys, "generate", "--jobs", str(jobs), "--model", "wan-tiny", "--cache-dir",
                         str(wan_cache), "--device", "cpu", "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "job svd: motion_bucket_id is a Stable Video Diffusion option" in err


@pytest.mark.skipif(not PAGE, reason="needs selenium, chromium and chromium-driver (see tests/test_page.py)")
def test_the_page_shows_wans_fields_and_runs_a_prompt(wan_server, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(wan_server.url + "/")
    until(lambda: browser.find_element(By.ID, "health-status").text == "ready", what="the server to be ready")
    assert "(Wan)" in browser.find_element(By.ID, "health-model").text
    assert browser.find_element(By.NAME, "prompt").is_displayed()
    assert browser.find_element(By.NAME, "guidance_scale").get_attribute("value") == "5"
    assert not browser.find_element(By.NAME, "fps").is_displayed()
    assert not browser.find_element(By.NAME, "motion_bucket_id").is_displayed()
    assert not browser.find_element(By.NAME, "guidance_scale_2").is_displayed()  # wan-tiny has one expert
    job = submit(browser, prompt=PROMPT, negative_prompt=NEGATIVE, steps=2, guidance_scale=4)
    until(lambda: card_status(browser, job) == "done", what="the Wan job to finish")
    until(lambda: browser.execute_script(f"const v = document.querySelector(`article[data-id='{job}'] video`); "
                                         "return v && v.readyState >= 2"), what="the video's data")
    options = browser.find_element(By.CSS_SELECTOR, f"article[data-id='{job}'] .job-options").text
    assert f"prompt {PROMPT}" in options and "guidance_scale 4" in options and "fps" not in options
    screenshot(browser, tmp_path, "wan")


def test_a_two_expert_model_takes_guidance_scale_2(tmp_path):
    """Wan 2.2 A14B-style: its jobs (and the page) have the low-noise expert's scale; a sweep keeps the job's."""
    from vidpipe.jobspec import expand, model_fields
    from vidpipe.parallel.plan import ParallelPlan

    source = resolve_model("wan2.2-tiny", cache_dir=tmp_path)
    assert "guidance_scale_2" in model_fields(source)
    specs, outputs = expand({"guidance_scale_2": 2.0, "steps": 4}, [{"seed": 1}, {"guidance_scale": 3.0}], source,
                            ParallelPlan("pp", 2))
    assert [(s.seed, s.params.guidance) for s in specs] == [(1, (5.0, 2.0)), (1, (3.0, 2.0))] and outputs == ("mp4",)
