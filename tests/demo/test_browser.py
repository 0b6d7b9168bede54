"""The demo end to end: `pixart-lab demo` serves a tiny exported pipeline, headless Chromium drives it.

Chromium comes from Debian (`apt-get install chromium`; `.ci/run` installs it) and is driven by
Playwright. Without it the tests skip, unless PIXART_LAB_REQUIRE_BROWSER is set (CI), where they fail.
The screenshot of the page after generating is kept in tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PROMPT = "a sharp image of a large yellow triangle in the bottom right on a black background"
# Headless on a closed network: no sandbox or GPU, and none of Chromium's own background connections.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
IMAGE_LOADED = "() => [...document.querySelectorAll('#gallery img')].some(i => i.complete && i.naturalWidth > 0)"
# Seen by a reader: at its first characters the page shows the element itself, nothing over it.
UNCOVERED_AT_ITS_START = "e => { const r = e.getBoundingClientRect(); return e.contains(document.elementFromPoint(r.x + 8, r.y + r.height / 2)); }"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("PIXART_LAB_REQUIRE_BROWSER"):
            pytest.fail("PIXART_LAB_REQUIRE_BROWSER is set but no `chromium` is on PATH (apt-get install chromium)")
        pytest.skip("no `chromium` on PATH: the browser test needs Debian's chromium (apt-get install chromium)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not serve {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def demo_url(chromium, tiny_pipeline_folder, tmp_path_factory):
    """`pixart-lab demo` on a free port, serving the tiny stage-3-like pipeline folder."""
    run_dir = tmp_path_factory.mktemp("demo_run")
    port, log = free_port(), run_dir / "demo.log"
    command = [sys.executable, "-m", "pixart_lab.cli.demo", f"source={tiny_pipeline_folder}", f"port={port}",
               "num_threads=1", f"hydra.run.dir={run_dir}"]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", process, log, timeout=600)  # minutes on a busy machine
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(demo_url)
    yield page
    page.close()


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def generate(page, seed: int) -> None:
    """Generate with ``seed`` and wait for its settings in the status line (the gallery is updated with it)."""
    page.locator("#seed input").fill(str(seed))
    page.locator("#generate").click()
    page.wait_for_function(f"() => document.querySelector('#status').innerText.startsWith('seed {seed} ·')", timeout=180_000)


def test_typing_a_prompt_and_generating_shows_an_image_of_the_chosen_size(page):
    page.locator("#prompt textarea").fill(PROMPT)
    choose(page, "sampler", "SA-Solver")
    # picking a sampler sets its configured steps (conf/sampler/sa_solver.yaml: 25): wait for that first
    page.wait_for_function("() => document.querySelector('#steps input[type=number]').value === '25'")
    page.locator("#steps input[type=number]").fill("4")
    page.locator("#steps input[type=number]").press("Enter")
    choose(page, "size", "88x184")  # height x width: a landscape bucket
    caption = f"seed {{}} · 88x184 · SA-Solver · 4 steps · CFG 4.5 · '{PROMPT}'"
    try:
        generate(page, seed=7)
        page.wait_for_function(IMAGE_LOADED)
        width, height = page.eval_on_selector("#gallery img", "img => [img.naturalWidth, img.naturalHeight]")
        assert (height, width) == (88, 184)
        assert page.locator("#status").inner_text().startswith(caption.format(7))

        generate(page, seed=8)  # newest first; each thumbnail is labelled with its settings
        labels = page.locator("#gallery .caption-label")
        assert labels.all_inner_texts() == [caption.format(8), caption.format(7)]
        assert all(label.evaluate(UNCOVERED_AT_ITS_START) for label in labels.all())
        page.locator("#gallery .thumbnail-item").nth(1).click()  # the older one, previewed: its settings in full below
        page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('seed 7')")
        assert page.locator("#status").inner_text() == caption.format(7)
        preview = page.locator("#gallery .caption")
        assert preview.inner_text() == caption.format(7) and preview.evaluate(UNCOVERED_AT_ITS_START)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "demo_browser.png", full_page=True)


def test_an_empty_prompt_is_refused_with_a_message_on_the_page(page):
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    toast = page.locator(".toast-body").filter(has_text="enter a prompt")
    toast.wait_for()
    assert "enter a prompt: this model generates from text" in toast.inner_text()
    assert page.locator("#gallery img").count() == 0
