"""The page of `vidpipe serve` in a real browser: Debian's chromium driven through chromium-driver (Selenium).

Upload, submit, follow, play the video (loaded data, the requested width, a frame that is not blank), cancel a
second job from the page, a field error next to its field, the history after a reload. Screenshots of the page
idle, running and done are written to the test's folder (and to $VIDPIPE_SCREENSHOT_DIR when set: that is how
docs/images/ was made)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.test_serve import IMAGE, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium and chromedriver on this machine (Debian: apt-get install -y chromium chromium-driver)",
)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def until(check, timeout: float = 60, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def screenshot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"page-{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("VIDPIPE_SCREENSHOT_DIR"):
        target = Path(os.environ["VIDPIPE_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


def card_status(driver, job_id: str) -> str:
    return driver.execute_script(
        "const c = document.querySelector(`article[data-id='${arguments[0]}']`); return c && c.dataset.status;",
        job_id)


def submit(driver, **fields) -> str:
    """Fill the form (an image and `fields`), submit, return the new job's id."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "image").send_keys(str(IMAGE))
    for name, value in fields.items():
        box = driver.find_element(By.NAME, name)
        box.clear()
        box.send_keys(str(value))
    known = set(driver.execute_script("return [...document.querySelectorAll('article.job')].map(a => a.dataset.id)"))
    driver.find_element(By.ID, "submit").click()
    return until(lambda: next(iter(set(driver.execute_script(
        "return [...document.querySelectorAll('article.job')].map(a => a.dataset.id)")) - known), None),
        what="the new job's card")


def test_the_page_asks_for_the_token_once_submits_follows_plays_and_cancels(browser, tmp_path, cache):
    """A server with a token: the page asks for it once (kept in the browser), then every request, the event
    streams and the videos carry it."""
    from selenium.webdriver.common.by import By

    server = Server(tmp_path / "out", cache, "--gpus", "2", "--strategy", "dp", env_extra={"VIDPIPE_TOKEN": "s3cret"})
    try:
        browser.get(server.url + "/")
        until(lambda: browser.find_element(By.ID, "token-panel").is_displayed(), what="the token prompt")
        browser.find_element(By.ID, "token").send_keys("s3cret")
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        browser.refresh()  # kept in the browser's storage: not asked again
        until(lambda: browser.find_element(By.ID, "health-status").text == "ready", what="the server to be ready")
        assert not browser.find_element(By.ID, "token-panel").is_displayed()
        assert "plan dp2" in browser.find_element(By.ID, "health-plan").text
        assert browser.find_element(By.NAME, "steps").get_attribute("value") == "25"  # the server's defaults
        screenshot(browser, tmp_path, "idle")

        # A field at fault: its one-line error next to it.
        browser.find_element(By.ID, "image").send_keys(str(IMAGE))
        steps = browser.find_element(By.NAME, "steps")
        steps.clear()
        steps.send_keys("0")
        browser.find_element(By.ID, "submit").click()
        error = until(lambda: browser.find_element(By.CSS_SELECTOR, ".error[data-for=steps]").text,
                      what="the error next to steps")
        assert error == "steps 0: must be at least 1"

        # A long job, followed live, then cancelled from the page.
        long_job = submit(browser, steps=300)
        until(lambda: card_status(browser, long_job) == "running", what="the long job to run")
        until(lambda: browser.execute_script(
            f"return document.querySelector(`article[data-id='{long_job}'] progress`).value > 0"))
        until(lambda: browser.execute_script(
            "return [...document.querySelectorAll('#ranks td')].some(td => td.textContent === 'diffuse')"),
            what="a rank shown diffusing")
        screenshot(browser, tmp_path, "running")
        browser.find_element(By.CSS_SELECTOR, f"article[data-id='{long_job}'] button.cancel").click()
        until(lambda: card_status(browser, long_job) == "cancelled", what="the cancellation")

        # A short job at 64 x 96: its video plays in the page.
        done_job = submit(browser, steps=4, height=64, width=96)
        until(lambda: card_status(browser, done_job) == "done", what="the job to finish")
        video = f"article[data-id='{done_job}'] video"
        until(lambda: browser.execute_script(f"const v = document.querySelector(`{video}`); "
                                             "return v && v.readyState >= 2"), what="the video's data")
        width, height = browser.execute_script(
            f"const v = document.querySelector(`{video}`); return [v.videoWidth, v.videoHeight]")
        assert (width, height) == (96, 64)
        spread = browser.execute_script(f"""
            const v = document.querySelector(`{video}`);
            const canvas = document.createElement('canvas');
            canvas.width = v.videoWidth; canvas.height = v.videoHeight;
            const context = canvas.getContext('2d');
            context.drawImage(v, 0, 0);
            const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let low = 255, high = 0;
            for (let i = 0; i < pixels.length; i += 4) {{
              const grey = (pixels[i] + pixels[i + 1] + pixels[i + 2]) / 3;
              low = Math.min(low, grey); high = Math.max(high, grey);
            }}
            return high - low;""")
        assert spread > 10, f"the drawn frame is blank (grey levels spread {spread})"
        links = browser.find_elements(By.CSS_SELECTOR, f"article[data-id='{done_job}'] figcaption a")
        assert any(link.text.endswith(".mp4") for link in links)
        assert browser.execute_script(
            f"return document.querySelector(`article[data-id='{done_job}'] img.input`).naturalWidth") > 0
        until(lambda: browser.find_element(By.ID, "health-status").text == "ready", what="the header to say ready")
        screenshot(browser, tmp_path, "done")

        # A phone's width, and dark mode as the system asks for it.
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        screenshot(browser, tmp_path, "dark")
        browser.set_window_size(390, 844)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        screenshot(browser, tmp_path, "phone")
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        browser.set_window_size(1280, 1000)

        # The history survives a reload.
        browser.refresh()
        until(lambda: card_status(browser, done_job) == "done" and card_status(browser, long_job) == "cancelled",
              what="the history after a reload")
    finally:
        server.stop()
