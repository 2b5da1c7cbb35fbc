"""The web page of ``fv serve`` in a real browser: Debian's Chromium, headless, driven by Playwright.

Submit a prompt, watch the job's progress bar reach 100 %, and the video element play the result.
A screenshot goes to ``artifacts/serve-page.png`` (CI keeps it). Without Chromium the test skips,
except under CI (``CI=true``), where it fails: there the browser must be installed (.ci/run does).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "artifacts" / "serve-page.png"
PROMPT = "a yellow square moving down"


def _chromium() -> str:
    found = (
        os.environ.get("FASTVIDEO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    problem = None
    if not found:
        problem = "no Chromium: apt-get install chromium (or set FASTVIDEO_CHROMIUM)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed: pip install playwright"
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{problem} (CI must run the browser test)")
        pytest.skip(problem)
    return str(found)


def test_the_page_submits_shows_progress_and_plays_the_video(serve):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            # CI runs as root, in a container with a small /dev/shm
            args=["--no-sandbox", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(serve.url + "/")
            page.fill("#key", serve.api_key)
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            assert page.locator("#model").input_value() == "wan-toy"
            page.evaluate(
                """(prompt) => { window.seen = [];
                new MutationObserver(() => {
                  for (const card of document.querySelectorAll('.job')) {
                    if (card.querySelector('.prompt').textContent === prompt)
                      window.seen.push(Number(card.querySelector('.bar').getAttribute('aria-valuenow')));
                  }
                }).observe(document.querySelector('#jobs'), {subtree: true, attributes: true, childList: true}); }""",
                PROMPT,
            )
            page.fill("#prompt", PROMPT)
            page.fill("#size", "64x64")
            page.fill("#num_frames", "17")
            page.fill("#steps", "200")  # ~1.5 s: the page's 0.4 s refresh sees it on its way
            page.fill("#seed", "3")
            page.click("#submit")
            card = page.locator(".job", has_text=PROMPT)
            card.wait_for(timeout=30_000)
            page.wait_for_function(
                "p => [...document.querySelectorAll('.job')].some(c => c.querySelector('.prompt').textContent === p"
                " && c.dataset.status === 'completed' && c.querySelector('.bar').getAttribute('aria-valuenow') === '100')",
                arg=PROMPT,
                timeout=120_000,
            )
            seen = page.evaluate("window.seen")
            assert seen[-1] == 100 and any(0 < v < 100 for v in seen), seen
            assert seen == sorted(seen)
            video = card.locator("video")
            video.wait_for(timeout=30_000)
            handle = video.element_handle()
            page.wait_for_function("v => v.readyState >= 2 && v.videoWidth > 0", arg=handle, timeout=30_000)
            start = handle.evaluate("v => v.currentTime")
            page.wait_for_function(
                "([v, t]) => !v.paused && v.currentTime > t", arg=[handle, start], timeout=30_000
            )
            assert handle.evaluate("v => [v.videoWidth, v.videoHeight]") == [64, 64]
            assert "completed" in card.locator(".meta").inner_text()
            ARTIFACT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACT), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    jobs = [j for j in serve.get("/v1/videos?limit=100")["data"] if j["prompt"] == PROMPT]
    assert len(jobs) == 1 and jobs[0]["size"] == "64x64" and jobs[0]["fastvideo"]["params"]["seed"] == 3
