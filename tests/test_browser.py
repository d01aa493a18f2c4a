"""The viewer in a real headless browser: Playwright drives Debian's Chromium against the production server
(waitress, ``python -m app``) started on a free port with a tiny trained model and a scored batch.

The same code path makes the README's screenshots: ``make screenshots`` sets ``DFD_SCREENSHOT_DIR=docs/screenshots``;
otherwise they go to a temporary folder, so a test run never changes tracked files.

Nothing here races the clock: the server's model is loaded and warmed (``GET /readyz``) before any test runs,
every step waits for a state (a navigation's load event, an element), and each wait has one generous bound,
:data:`WAIT_MS`, with a failure message that names what it waited for.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from viewer_fixtures import CHAMPION, PLOTS, build_store, image_file, start_server, stop_server, wait_ready

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("DFD_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "dfd-screenshots")
MAX_SCREENSHOT_BYTES = 300_000
WAIT_MS = 180_000  # the bound on any one wait: generous, for a loaded 2-core machine
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    info = build_store(root / "artifacts", batch_rows=36, batch_id="inbox-2026-01-03")
    proc, base = start_server(info["artifacts"], env={"DFD_WORK_DIR": str(root / "work")})
    try:
        ready = wait_ready(base, timeout=WAIT_MS / 1000)  # the first upload must not pay for loading the model
        assert ready["model_version"] == CHAMPION, ready
        yield {**info, "base": base, "root": root}
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS, timeout=WAIT_MS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(WAIT_MS)
    p = context.new_page()
    yield p
    context.close()


def navigate(page: Any, what: str, action: Callable[[], object]) -> None:
    """Run ``action`` (a click, a ``goto``) and wait for the page it opens to finish loading (images too),
    failing with ``what`` if that takes longer than :data:`WAIT_MS`."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        with page.expect_navigation(wait_until="load", timeout=WAIT_MS):
            action()
    except PlaywrightTimeout as exc:
        pytest.fail(f"waited {WAIT_MS / 1000:.0f} s for {what}: {exc}")


def save_screenshot(page, name: str, full_page: bool = True) -> Path:
    """Write ``<name>.png`` (palette-reduced when needed to stay under 300 KB)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    data = page.screenshot(full_page=full_page)
    if len(data) > MAX_SCREENSHOT_BYTES:
        img = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=128)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    path = SCREENSHOTS / f"{name}.png"
    path.write_bytes(data)
    assert len(data) < MAX_SCREENSHOT_BYTES
    return path


def see_demo_warning(page: Any, where: str) -> None:
    """The champion was trained on the demo data: a person sees the warning, and how to train on real data,
    on screen (visible, not merely in the HTML) above what it qualifies."""
    warning = page.locator("#model-caveat")
    assert warning.count() == 1 and warning.is_visible(), f"no visible warning about the demo model on {where}"
    assert warning.get_attribute("data-kind") == "demo-data"
    text = warning.inner_text()
    assert "demo data" in text and "dfd-retrain --data DIR" in text, text
    box = warning.bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 10, box
    below = page.locator("#rows, #score").first.bounding_box()
    assert below is not None and box["y"] < below["y"], (box, below)


def test_overview_plots_all_load(server, page):
    statuses: dict[str, int] = {}
    page.on("response", lambda r: statuses.__setitem__(r.url, r.status))
    navigate(page, "the overview page and its plots to load", lambda: page.goto(server["base"] + "/"))
    assert page.locator("#champion-version").inner_text() == CHAMPION
    plots = page.eval_on_selector_all(
        "img[data-plot]", "els => els.map(e => ({name: e.dataset.plot, src: e.src, ok: e.complete, w: e.naturalWidth}))"
    )
    assert sorted(p["name"] for p in plots) == sorted(PLOTS)
    for p in plots:
        assert statuses.get(p["src"]) == 200, p
        assert p["ok"] and p["w"] > 0, p
    assert page.get_by_text("ROC AUC").count() >= 1
    save_screenshot(page, "overview")


def test_batch_filter_in_the_browser(server, page):
    navigate(page, "the batches page to load", lambda: page.goto(server["base"] + "/batches"))
    navigate(page, "the batch page and its thumbnails to load",
             lambda: page.get_by_role("link", name=server["batch_id"]).click())
    all_rows = page.locator("#rows tbody tr").count()
    assert all_rows == 36 if all_rows <= 50 else all_rows == 50
    see_demo_warning(page, "the batch page")
    page.select_option("#label", "deepfake")
    page.select_option("#sort", "score_desc")
    navigate(page, "the filtered batch page to load", lambda: page.click("#apply"))
    assert "label=deepfake" in page.url and "sort=score_desc" in page.url, page.url
    labels = page.locator("#rows tbody td.label").all_inner_texts()
    assert labels and set(labels) == {"deepfake"}
    scores = [float(s) for s in page.locator("#rows tbody td.score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and min(scores) >= round(server["threshold"], 4)
    assert f"{len(labels)} rows labelled deepfake" in page.locator("#pager").inner_text()
    # Thumbnails are lazy (they do not hold up the page's load event): ask for all of them, then wait until
    # every one has finished, loaded or not, before judging them.
    page.eval_on_selector_all("td.thumb img", "els => els.forEach(e => { e.loading = 'eager'; })")
    page.wait_for_function("() => [...document.querySelectorAll('td.thumb img')].every(e => e.complete)",
                           timeout=WAIT_MS)
    thumbs = page.eval_on_selector_all("td.thumb img", "els => els.map(e => e.complete && e.naturalWidth)")
    assert thumbs and all(w and w > 0 for w in thumbs)
    save_screenshot(page, "batch")


def test_classify_upload_shows_verdict_and_score(server, page, tmp_path):
    navigate(page, "the classify form to load", lambda: page.goto(server["base"] + "/classify"))
    page.set_input_files("#image", str(image_file(tmp_path, 1, size=160)))
    navigate(page, "the verdict page after the upload (model warmed by /readyz)", lambda: page.click("#submit"))
    assert page.locator("#verdict").count() == 1, page.locator("#error").all_inner_texts()
    verdict = page.locator("#verdict").inner_text().strip()
    score = float(page.locator("#score").inner_text())
    threshold = float(page.locator("#threshold").inner_text())
    assert 0.0 <= score <= 1.0 and threshold == round(server["threshold"], 4)
    if abs(score - threshold) > 1e-4:  # both are shown rounded to 4 digits
        assert verdict == ("This is a Deepfake Image!" if score >= threshold else "This is a Real Image!")
    assert page.locator("#model-version").inner_text() == CHAMPION
    see_demo_warning(page, "the verdict")
    assert page.eval_on_selector("#heatmap", "e => e.complete && e.naturalWidth") > 0
    save_screenshot(page, "classify")
