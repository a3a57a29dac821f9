"""A person labels in the Prefect UI: headless Chromium (Debian's, driven by Selenium; no browser
is ever downloaded, STACK.md) opens the paused pipeline run on a Prefect server on 127.0.0.1,
fills the labelling form and submits it; the run resumes and the labels are the browser's.
Screenshots of the filled form and of the resumed run are kept in test-artifacts/."""

from __future__ import annotations

import time

import pytest

from alignflow.pipeline import stage_dir
from alignflow.store import read_jsonl
from tests.conftest import micro_config
from tests.flow.conftest import ARTIFACTS, button, paused_run, start_labelled_pipeline, wait_for

pytestmark = pytest.mark.slow  # a browser and a server: `make test-all` (installs chromium)


def _fill_form(browser, name: str) -> int:
    """Type `name`, choose "A" (the candidate shown first) everywhere; returns the comparisons."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    modal = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, ".p-modal"), 30)
    fields = modal.find_elements(By.TAG_NAME, "textarea") + modal.find_elements(
        By.TAG_NAME, "input"
    )
    (name_field,) = [f for f in fields if f.get_attribute("value") == "anonymous"]
    name_field.clear()
    name_field.send_keys(name)
    selects = modal.find_elements(
        By.CSS_SELECTOR,
        "select.p-native-select__control:not(.p-native-select__control--placeholder)",
    )
    for select in selects:
        Select(select).select_by_value("A")
    time.sleep(1)
    return len(selects)


def test_a_person_labels_in_the_prefect_ui_and_the_run_resumes(
    pipeline_runs, tmp_path, prefect_api, browser
):
    ARTIFACTS.mkdir(exist_ok=True)
    process, overrides, _, log = start_labelled_pipeline(
        pipeline_runs, tmp_path, prefect_api, prompts=3, batch=3
    )
    try:
        run = wait_for(lambda: paused_run(prefect_api), 240)
        ui = prefect_api.removesuffix("/api")
        browser.get(f"{ui}/runs/flow-run/{run['id']}")
        button(browser, "Resume").click()
        comparisons = _fill_form(browser, "browser")
        browser.save_screenshot(str(ARTIFACTS / "prefect-ui-label-form.png"))
        button(browser, "Submit").click()
        wait_for(lambda: paused_run(prefect_api) is None, 60)
        browser.refresh()
        time.sleep(3)
        browser.save_screenshot(str(ARTIFACTS / "prefect-ui-resumed-run.png"))
        assert process.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        log.close()

    records = read_jsonl(stage_dir(micro_config(tmp_path, *overrides[1:]), "collect").final
                         / "records.jsonl")  # fmt: skip
    assert len(records) == comparisons > 0
    for record in records:
        assert record["labeler"] == "human:browser"
        assert record["ranking"][record["shown_order"][0]] == 1  # "A" was the first shown
    assert (ARTIFACTS / "prefect-ui-label-form.png").stat().st_size > 10_000
