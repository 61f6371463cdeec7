"""The HTML report opened in a real headless Chromium: every plot draws, and the page logs no error.

Chromium is Debian's (``apt-get install chromium``, done by ``.ci/run``), driven by Playwright with
that executable, because Playwright's own browser download needs a network CI does not have.
Set ``LEPTON_REQUIRE_BROWSER=1`` (CI does) so that a missing browser fails instead of skipping.
The screenshot is kept in ``$LEPTON_TEST_ARTIFACTS`` (default ``test-artifacts/``) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import optuna
import pytest

from lepton_search.search import Locations, parse_study, run_study, write_report
from lepton_search.testing import study_dict

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

CHROMIUM = os.environ.get("LEPTON_CHROMIUM", "/usr/bin/chromium")
# The probe's flags: without the background-networking ones Chromium keeps dialling out on a
# closed network, and as root it needs --no-sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = sync_playwright is None or not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM))
    if missing:
        reason = f"needs playwright (pip) and Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("LEPTON_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LEPTON_REQUIRE_BROWSER=1 but the browser test {reason}")
        pytest.skip(reason)
    return sync_playwright


def _artifact_dir() -> Path:
    path = Path(os.environ.get("LEPTON_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_every_plot_of_the_report_renders_in_chromium(tmp_path: Path, artifacts: Path) -> None:
    sync_playwright = _browser_or_skip()
    spec = parse_study(study_dict(tmp_path, artifacts, budget={"n_trials": 4}))
    locations = Locations.resolve(spec)
    run_study(spec, locations=locations)
    study = optuna.load_study(study_name=spec.study.name, storage=locations.storage_url)
    report = write_report(study, tmp_path / "report.html")
    page_text = report.read_text()
    expected_plots = page_text.count('class="plotly-graph-div"')
    assert expected_plots >= 3, "the report holds at least the Pareto, speed-cost and hypervolume plots"

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(report.resolve().as_uri())
            page.wait_for_function(
                "n => document.querySelectorAll('.plotly-graph-div .main-svg').length >= n",
                arg=expected_plots,
                timeout=30_000,
            )
            drawn = page.evaluate(
                """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(div => {
                    const svg = div.querySelector('.main-svg');
                    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                    const marks = div.querySelectorAll('.point, .trace, path.js-line, .scatterlayer path, canvas');
                    return {id: div.id, width: box.width, height: box.height, marks: marks.length};
                })"""
            )
            page.screenshot(path=str(_artifact_dir() / "report.png"), full_page=True)
        finally:
            browser.close()

    assert len(drawn) == expected_plots
    for plot in drawn:
        assert plot["width"] > 100 and plot["height"] > 100, f"plot {plot['id']} has no drawing area: {plot}"
        assert plot["marks"] > 0, f"plot {plot['id']} drew no marks: {plot}"
    assert errors == [], f"the report logged errors in the browser: {errors}"
