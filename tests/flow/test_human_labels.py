"""People label through a paused flow run: a real Prefect server on 127.0.0.1, the pipeline started
with `alignflow run` and a `human` labeler; the first batch is answered over Prefect's REST API, the
second with `alignflow label RUN_ID` in a terminal. An invalid answer is rejected and the run stays
paused; valid answers resume it, and the labels reach the reward model (as its MLflow dataset
input) and the feedback store."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from mlflow import MlflowClient

from alignflow.pipeline import stage_dir, tracking_uri
from alignflow.store import read_jsonl
from tests.conftest import REPO, micro_config
from tests.flow.conftest import paused_run, start_labelled_pipeline, wait_for

PROMPTS, BATCH = 5, 3  # two pauses: comparisons 1-3, then 4-5 (or fewer if candidates collapse)


def _form(api: str, run: dict) -> tuple[dict, str]:
    keyset = run["state"]["state_details"]["run_input_keyset"]
    read = lambda key: httpx.get(f"{api}/flow_runs/{run['id']}/input/{keyset[key]}", timeout=10)  # noqa: E731
    return read("schema").json(), read("description").text


def _resume(api: str, run_id: str, answer: dict) -> dict:
    response = httpx.post(
        f"{api}/flow_runs/{run_id}/resume", json={"run_input": answer}, timeout=30
    )
    response.raise_for_status()
    return response.json()


def _label_in_terminal(run_id: str, schema: dict, env: dict) -> None:
    """Answer every field as a person would, with one wrong answer first (asked again)."""
    lines = ["tester"]
    for name in schema["properties"]:
        if name.endswith("_best"):
            lines += ["Z", "A"] if len(lines) == 1 else ["A"]
        elif name.endswith("_confidence"):
            lines.append("0.75")
        elif name.endswith("_comment"):
            lines.append("")
    done = subprocess.run(
        [sys.executable, "-m", "alignflow.app.cli", "label", run_id], input="\n".join(lines) + "\n",
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "**A**" in done.stdout and f"resumed flow run {run_id}" in done.stdout
    assert (
        "\\n" not in done.stdout and "\n---" in done.stdout
    )  # markdown lines, not one escaped string
    assert "'Z' is not one of" in done.stdout  # the wrong answer was refused, then asked again


# slow (30-70 s): the family matrix (tests/flow/test_families.py) took its place in make test's
# 20 minutes; it runs under make test-all
@pytest.mark.slow
def test_people_label_over_the_api_and_the_labels_reach_the_reward_model(
    pipeline_runs, tmp_path, prefect_api
):
    process, overrides, env, log = start_labelled_pipeline(
        pipeline_runs, tmp_path, prefect_api, PROMPTS, BATCH
    )
    answered: list[dict] = []
    try:
        run = wait_for(lambda: paused_run(prefect_api), 240)
        schema, description = _form(prefect_api, run)
        assert "c1_best" in schema["required"] and "**A**" in description

        # An answer outside the form is rejected, and the run stays paused.
        rejected = _resume(prefect_api, run["id"], {"c1_best": "Z"})
        assert rejected["status"] == "REJECT"
        time.sleep(2)
        assert paused_run(prefect_api)["id"] == run["id"]

        while process.poll() is None:
            paused = paused_run(prefect_api)
            if paused is None:
                time.sleep(1)
                continue
            schema, _ = _form(prefect_api, paused)
            answer = {"labeler_name": "tester"}
            for field in schema["required"]:
                answer[field] = "A"  # the candidate shown first
                answer[field.replace("_best", "_confidence")] = 0.75
            if not answered:  # the first batch over the REST API
                assert _resume(prefect_api, paused["id"], answer)["status"] == "ACCEPT"
            else:  # the next one in a terminal: `alignflow label RUN_ID`
                _label_in_terminal(paused["id"], schema, env)
            answered.append(answer)
            wait_for(lambda: paused_run(prefect_api) is None or process.poll() is not None, 60)
        assert process.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
        # the paused run's own terminal said how to answer from another one
        assert f"`alignflow label {run['id']}`" in (tmp_path / "run.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
        log.close()

    cfg = micro_config(tmp_path, *overrides[1:])
    collected = stage_dir(cfg, "collect").final
    records = read_jsonl(collected / "records.jsonl")
    labelled = sum(len([k for k in answer if k.endswith("_best")]) for answer in answered)
    assert len(answered) == 2 and len(records) == labelled
    for record in records:
        assert record["labeler"] == "human:tester" and record["confidence"] == 0.75
        shown_first = record["shown_order"][0]
        assert record["ranking"][shown_first] == 1  # "A" named the candidate shown first
    pairs = read_jsonl(collected / "pairs.jsonl")
    expected_pairs = sum(len(r["candidates"]) - 1 for r in records)  # best > each other
    assert len(pairs) == expected_pairs
    result = json.loads((collected / "result.json").read_text())

    # The reward model trained on exactly these pairs, logged as its dataset input.
    reward = json.loads((stage_dir(cfg, "reward").final / "result.json").read_text())
    assert reward["metrics"]["train_pairs"] + reward["metrics"]["eval_pairs"] == len(pairs)
    client = MlflowClient(tracking_uri(cfg))
    inputs = client.get_run(reward["mlflow_run_id"]).inputs.dataset_inputs
    assert [d.dataset.digest for d in inputs] == [result["metrics"]["preference_digest"]]
    # ...and the feedback store holds them for retraining.
    from alignflow.feedback import store

    stored, _ = store.read(tmp_path / "feedback")
    assert len(stored) == len(records)
