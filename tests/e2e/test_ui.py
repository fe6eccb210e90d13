"""The MLflow UI, in a real headless Chromium against a real `mlflow server` on loopback."""

import os
import shutil
from pathlib import Path

import pytest

from helpers import CHROMIUM, CHROMIUM_ARGS, mlflow_server, run_app, runs

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (scripts/install.sh installs it as root)")


@pytest.fixture
def server(tmp_path):
    run_app(tmp_path, "-m", "task.limit=20", "method=linear,slerp", "lambda=0.5")
    with mlflow_server(tmp_path / "mlruns") as url:
        yield url


def test_experiment_page_shows_child_runs_and_their_metrics(server, tmp_path):
    from playwright.sync_api import sync_playwright

    client, found = runs(tmp_path)
    exp_id = found[0].info.experiment_id
    children = {r.info.run_name: r.data.metrics for r in found
                if r.data.tags.get("role") == "job"}
    assert set(children) == {"linear λ=0.5", "slerp λ=0.5"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(f"{server}/#/experiments/{exp_id}/runs")
        page.get_by_text("reference PT").first.wait_for(timeout=60_000)
        page.locator("[role=row]", has_text="sweep").first.locator("button").first.click()
        for name in children:  # the sweep's children appear under its parent
            page.get_by_text(name).first.wait_for(timeout=10_000)
        close = page.get_by_role("button", name="Close")
        if close.count():
            close.first.click()  # the assistant side panel
        page.get_by_role("button", name="Columns", exact=True).click()
        search = page.get_by_placeholder("Search columns")
        for metric in ("toy_mc/acc", "toy_mc/ece"):
            search.fill(metric)
            page.wait_for_timeout(400)
            dialog = page.locator("[role=dialog]")
            exact = [el for el in dialog.locator("span").all()
                     if el.text_content().strip() == metric]
            exact[-1].click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(800)
        page.screenshot(path=str(tmp_path / "mlflow_ui.png"))
        headers = page.locator("[role=columnheader]").all_inner_texts()
        assert "toy_mc/acc" in headers and "toy_mc/ece" in headers
        for name, metrics in children.items():
            # the grid renders a run as a pinned and a scrolling row with the same row-index
            index = page.locator("[role=row]", has_text=name).first.get_attribute("row-index")
            row = " ".join(page.locator(f"[role=row][row-index='{index}']").all_inner_texts())
            assert f"{metrics['toy_mc/acc']:g}"[:5] in row
            assert f"{metrics['toy_mc/ece']:.6f}"[:6] in row
        browser.close()
    assert (tmp_path / "mlflow_ui.png").stat().st_size > 10_000
    if os.environ.get("SAVE_UI_SCREENSHOT"):
        shutil.copy(tmp_path / "mlflow_ui.png", os.environ["SAVE_UI_SCREENSHOT"])
