"""Stage cache keys and the write-then-rename stage directories."""

import json

from alignflow.config import load_config
from alignflow.pipeline import STAGES, stage_keys
from alignflow.store import (
    COMPLETE_MARKER,
    RESULT_FILE,
    StageDir,
    StageResult,
    cache_key,
    point_latest,
    write_json_atomic,
)

# --- cache keys ---------------------------------------------------------------------------------


def test_cache_key_is_stable_for_equal_settings():
    first = cache_key("sft", {"epochs": 6, "lr": 0.002}, ["abc"])
    # Key order in the settings does not matter.
    assert cache_key("sft", {"lr": 0.002, "epochs": 6}, ["abc"]) == first


def test_cache_key_changes_with_settings_upstream_and_stage():
    base = cache_key("sft", {"epochs": 6}, ["abc"])
    assert cache_key("sft", {"epochs": 7}, ["abc"]) != base
    assert cache_key("sft", {"epochs": 6}, ["abd"]) != base
    assert cache_key("sft", {"epochs": 6}, []) != base
    assert cache_key("reward", {"epochs": 6}, ["abc"]) != base


def _keys(tmp_path, *overrides: str) -> dict[str, str]:
    return stage_keys(load_config(None, [f"run.artifacts_root={tmp_path}", *overrides]))


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Stages whose key differs, or that run in only one of the two shapes."""
    return {stage for stage in STAGES if before.get(stage) != after.get(stage)}


def test_stage_keys_cover_every_stage_and_are_stable(tmp_path):
    keys = _keys(tmp_path)
    assert set(keys) == set(STAGES)
    assert len(set(keys.values())) == len(STAGES)
    assert _keys(tmp_path) == keys


def test_ppo_learning_rate_changes_only_ppo_and_downstream_keys(tmp_path):
    changed = _changed(_keys(tmp_path), _keys(tmp_path, "policy.ppo.learning_rate=1.0e-4"))
    assert changed == {"policy", "evaluate", "register"}


def test_policy_key_follows_the_chosen_algorithm_and_only_its_settings(tmp_path):
    ppo = _keys(tmp_path)
    # another algorithm's settings do not touch a PPO run's caches
    assert _changed(ppo, _keys(tmp_path, "policy.dpo.beta=0.5")) == set()
    # DPO trains no reward model: its stage is gone, the rest downstream changes
    assert _changed(ppo, _keys(tmp_path, "policy.algorithm=dpo")) == {
        "reward", "policy", "evaluate", "register"
    }  # fmt: skip
    dpo = _keys(tmp_path, "policy.algorithm=dpo")
    assert _changed(dpo, _keys(tmp_path, "policy.algorithm=dpo", "policy.dpo.beta=0.5")) == {
        "policy", "evaluate", "register"
    }  # fmt: skip
    # DPO learns from the pairs alone: the rewards section is not part of its key; GRPO's it is
    assert (
        _changed(dpo, _keys(tmp_path, "policy.algorithm=dpo", "rewards.length_penalty=0.1"))
        == set()
    )
    grpo = _keys(tmp_path, "policy.algorithm=grpo")
    assert "policy" in _changed(
        grpo, _keys(tmp_path, "policy.algorithm=grpo", "rewards.length_penalty=0.1")
    )


def test_sft_epochs_changes_sft_and_everything_downstream(tmp_path):
    changed = _changed(_keys(tmp_path), _keys(tmp_path, "sft.epochs=2"))
    assert changed == {"sft", "collect", "reward", "policy", "evaluate", "register"}


def test_run_name_changes_no_stage_key(tmp_path):
    assert _changed(_keys(tmp_path), _keys(tmp_path, "run.name=other")) == set()


# --- stage directories --------------------------------------------------------------------------


def _result(stage_dir: StageDir) -> StageResult:
    return StageResult(
        stage="sft",
        cache_key=stage_dir.final.name,
        output=str(stage_dir.final),
        metrics={"loss": 0.5},
    )


def test_stage_dir_lives_under_stages_by_cache_key(tmp_path):
    stage_dir = StageDir(tmp_path, "sft", "abc123")
    assert stage_dir.final == tmp_path / "stages" / "sft" / "abc123"
    assert stage_dir.partial == tmp_path / "stages" / "sft" / "abc123.partial"


def test_partial_dir_is_not_completed(tmp_path):
    stage_dir = StageDir(tmp_path, "sft", "abc123")
    work = stage_dir.begin()
    assert work == stage_dir.partial
    (work / "checkpoint.bin").write_text("weights")
    (work / COMPLETE_MARKER).write_text("ok\n")  # even a marker inside .partial does not count
    assert not stage_dir.completed()
    assert not stage_dir.final.exists()


def test_begin_keeps_an_existing_partial_dir_for_resuming(tmp_path):
    stage_dir = StageDir(tmp_path, "sft", "abc123")
    (stage_dir.begin() / "checkpoint-10").mkdir()
    assert (stage_dir.begin() / "checkpoint-10").is_dir()


def test_commit_renames_partial_to_final_with_marker_and_result(tmp_path):
    stage_dir = StageDir(tmp_path, "sft", "abc123")
    (stage_dir.begin() / "model.bin").write_text("weights")
    result = _result(stage_dir)
    stage_dir.commit(result)
    assert stage_dir.completed()
    assert not stage_dir.partial.exists()
    assert (stage_dir.final / COMPLETE_MARKER).is_file()
    assert (stage_dir.final / RESULT_FILE).is_file()
    assert (stage_dir.final / "model.bin").read_text() == "weights"
    assert stage_dir.load() == result


def test_commit_replaces_a_final_dir_left_without_marker(tmp_path):
    stage_dir = StageDir(tmp_path, "sft", "abc123")
    stage_dir.final.mkdir(parents=True)
    (stage_dir.final / "stale.bin").write_text("debris")
    assert not stage_dir.completed()
    (stage_dir.begin() / "model.bin").write_text("fresh")
    stage_dir.commit(_result(stage_dir))
    assert stage_dir.completed()
    assert not (stage_dir.final / "stale.bin").exists()
    assert (stage_dir.final / "model.bin").read_text() == "fresh"


# --- run pointers and atomic writes -------------------------------------------------------------


def test_point_latest_links_to_the_newest_run_each_time(tmp_path):
    first, second = tmp_path / "run-1", tmp_path / "run-2"
    for run_dir in (first, second):
        run_dir.mkdir()
        (run_dir / "summary.json").write_text(json.dumps({"run_id": run_dir.name}))
    latest = tmp_path / "latest"

    point_latest(tmp_path, first)
    assert latest.is_symlink()
    assert latest.resolve() == first.resolve()

    point_latest(tmp_path, second)
    assert latest.is_symlink()
    assert latest.resolve() == second.resolve()
    assert json.loads((latest / "summary.json").read_text()) == {"run_id": "run-2"}
    assert not (tmp_path / "latest.tmp").exists()


def test_write_json_atomic_writes_the_data_and_leaves_no_tmp_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
