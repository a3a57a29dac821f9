"""The pipeline's shape follows the config: each example config the README shows (examples/*.yaml)
runs as written on the demo's data written as a user's files (`alignflow data demo`), through a
real Prefect flow and MLflow store. Each test asserts the stages that ran, that the user's pairs
reached the trainer unchanged, and that something was learned."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from alignflow.config import load_config
from alignflow.store import read_jsonl
from tests.conftest import REPO

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Run example configs by name (cached per module): `run(name, *overrides) -> summary`."""
    from prefect.testing.utilities import prefect_test_harness

    from alignflow.demo import write_user_files
    from flows.rlhf import rlhf

    write_user_files(EXAMPLES / "data")  # what the README's first command writes
    root = tmp_path_factory.mktemp("shapes")
    done: dict[tuple, dict] = {}
    cwd = Path.cwd()
    os.chdir(
        REPO
    )  # the examples name their data relative to the repository, as the README runs them

    def run(name: str, *overrides: str) -> dict:
        if (name, overrides) not in done:
            cfg = load_config(EXAMPLES / f"{name}.yaml", [f"run.artifacts_root={root}", *overrides])
            done[(name, overrides)] = rlhf(config=cfg)
        return done[(name, overrides)]

    try:
        with prefect_test_harness():
            yield run
    finally:
        os.chdir(cwd)


def _metrics(summary: dict, stage: str) -> dict:
    output = Path(summary["stages"][stage]["output"])
    return json.loads((output / "result.json").read_text())["metrics"]


def _statuses(summary: dict) -> dict[str, str]:
    return {name: stage["status"] for name, stage in summary["stages"].items()}


def _own_pairs(summary: dict) -> list[dict]:
    return read_jsonl(Path(summary["stages"]["prepare"]["output"]) / "preferences.jsonl")


def _text(messages: list[dict]) -> str:
    return messages[-1]["content"]


def test_own_pairs_go_straight_to_dpo_with_no_reward_model_or_rl_prompts(shapes):
    summary = shapes("dpo_own_pairs")
    assert list(_statuses(summary)) == ["prepare", "sft", "policy", "evaluate", "register"]
    assert set(_statuses(summary).values()) == {"completed"}
    # every pair of the user's file, as written, split by prompt and marked as theirs
    source = read_jsonl(EXAMPLES / "data" / "pairs.jsonl")
    own = _own_pairs(summary)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in source] == [
        (_text(r["prompt"]), _text(r["chosen"]), _text(r["rejected"])) for r in own
    ]
    assert {r["origin"] for r in own} == {"user"} and {r["split"] for r in own} == {"train", "eval"}
    policy = _metrics(summary, "policy")
    train = sum(r["split"] == "train" for r in own)
    assert policy["user_train_rows"] == train == policy["train_rows"]  # all of them, none dropped
    assert "collected_train_rows" not in policy
    # DPO learned the people's preference: on held-out pairs, and by the judge on new prompts
    assert policy["eval_margin_policy"] > policy["eval_margin_sft"] + 1.0
    assert summary["eval"]["judge_gain"] > 0
    assert summary["registered"]["alias"] == "champion"
    assert "reward_score" not in summary["eval"]  # no reward model anywhere in this shape


# slow, with test_an_existing_reward_model_replaces_the_reward_stage (it reuses this run; ~55 s
# together), for make test's 20 minutes; the reward model -> PPO path runs in make test through
# the micro pipeline and the family matrix. Both run under make test-all.
@pytest.mark.slow
def test_own_hh_pairs_and_collected_ones_train_the_reward_model_that_ppo_uses(shapes):
    summary = shapes("rm_ppo_own_pairs")
    assert list(_statuses(summary)) == [
        "prepare", "sft", "collect", "reward", "policy", "evaluate", "register"
    ]  # fmt: skip
    own = _own_pairs(summary)
    report = json.loads(
        (Path(summary["stages"]["prepare"]["output"]) / "data_report.json").read_text()
    )["preferences"]
    # all 200 transcripts, less the exact repeats the data layer removed and counted
    assert len(own) == 200 - report["removed"]["duplicate_exact"] > 180
    assert {r["origin"] for r in own} == {"user"}
    reward = _metrics(summary, "reward")
    collected = _metrics(summary, "collect")
    assert reward["user_train_rows"] == sum(r["split"] == "train" for r in own)
    assert reward["collected_train_rows"] == collected["pairs_train"] > 0
    assert reward["train_pairs"] == reward["user_train_rows"] + reward["collected_train_rows"]
    assert reward["accuracy"] > 0.7  # on held-out pairs of both origins
    ppo = _metrics(summary, "policy")
    assert ppo["reward_last"] > ppo["reward_first"]
    assert summary["eval"]["judge_gain"] > 0 and summary["registered"]["registered"]


@pytest.mark.slow  # 19 s on a slow day: under make test-all for make test's 20 minutes
def test_an_instruct_model_as_it_ships_is_the_start_and_reference_without_sft(shapes):
    trained = shapes("dpo_own_pairs")
    instruct = str(Path(trained["stages"]["sft"]["output"]) / "model")  # "the model as it ships"
    summary = shapes(
        "instruct_dpo", f"model.name_or_path={instruct}", "policy.dpo.learning_rate=5e-4"
    )
    assert list(_statuses(summary)) == ["prepare", "policy", "evaluate", "register"]
    ev = summary["eval"]
    # the first run's policy, registered in the same MLflow store, is the champion evaluated beside
    assert ev["reference"] == "base" and set(ev["judge_score"]) == {"base", "policy", "champion"}
    assert ev["champion_version"] == trained["registered"]["version"]
    table = (Path(summary["stages"]["evaluate"]["output"]) / "eval.md").read_text()
    version = ev["champion_version"]
    assert f"| metric | base | dpo | champion v{version} |" in table and "kl_to_base" in table
    policy = _metrics(summary, "policy")
    assert policy["eval_margin_policy"] > policy["eval_margin_sft"] + 1.0


@pytest.mark.slow  # 40 s on a slow day: under make test-all for make test's 20 minutes
def test_rule_rewards_alone_train_grpo_with_no_reward_model(shapes):
    summary = shapes("grpo_rules")
    assert list(_statuses(summary)) == ["prepare", "sft", "policy", "evaluate", "register"]
    assert _metrics(summary, "policy")["steps"] == 40
    # the rule it maximised is the judge: better on held-out prompts, and registered
    assert summary["eval"]["judge_gain"] > 0.02 and summary["registered"]["registered"]
    assert "reward_score" not in summary["eval"] and summary["eval"]["rm_accuracy"] is None


@pytest.mark.slow  # see test_own_hh_pairs_and_collected_ones_train_the_reward_model_that_ppo_uses
def test_an_existing_reward_model_replaces_the_reward_stage(shapes):
    trained = shapes("rm_ppo_own_pairs")
    reward_model = str(Path(trained["stages"]["reward"]["output"]) / "model")
    summary = shapes("ppo_given_rm", f"reward_model.model={reward_model}")
    assert list(_statuses(summary)) == ["prepare", "sft", "policy", "evaluate", "register"]
    ppo = _metrics(summary, "policy")
    assert ppo["reward_last"] > ppo["reward_first"]
    assert "reward_score" in summary["eval"]  # the given model scores the evaluation


def test_a_shape_run_again_reuses_every_stage(shapes):
    first = shapes("dpo_own_pairs")
    again = shapes("dpo_own_pairs", "run.name=again")
    assert set(_statuses(again).values()) == {"cached"}
    assert again["registered"] == first["registered"]


@pytest.mark.slow  # 29 s on a slow day: under make test-all for make test's 20 minutes
def test_own_kto_style_rows_reach_kto_as_labelled(shapes, tmp_path_factory):
    """KTO-style unpaired rows (prompt, completion, label) in data.preferences go to KTO as they
    are, each with the label its author gave."""
    rows = []
    for pair in read_jsonl(EXAMPLES / "data" / "pairs.jsonl"):
        for side, label in (("chosen", True), ("rejected", False)):
            rows.append({"prompt": pair["prompt"], "completion": pair[side], "label": label})
    path = tmp_path_factory.mktemp("kto") / "kto.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = shapes(
        "dpo_own_pairs", f"data.preferences=[{{path: {path}}}]", "policy.algorithm=kto"
    )
    assert list(_statuses(summary)) == ["prepare", "sft", "policy", "evaluate", "register"]
    own = _own_pairs(summary)
    assert {"completion", "label"} <= set(own[0]) and "chosen" not in own[0]
    kto = _metrics(summary, "policy")
    train = [row for row in own if row["split"] == "train"]
    assert kto["user_train_rows"] == len(train) == kto["train_rows"]
    assert kto["desirable_rows"] == sum(row["label"] for row in train)
    assert kto["final_loss"] < kto["first_loss"]
