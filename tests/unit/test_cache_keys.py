"""A stage's cache key covers what its settings name by path: editing the user's rule module or
lm-eval task folder reruns the stages that use them, and only those."""

from __future__ import annotations

from alignflow.config import load_config
from alignflow.pipeline import stage_keys

RULE = "def {name}(prompts, completions, **_):\n    return [{value} for _ in completions]\n"


def test_editing_a_rule_module_or_a_task_folder_changes_the_keys_of_the_stages_that_use_them(
    tmp_path,
):
    code = tmp_path / "code"
    code.mkdir()
    rules = code / "my_rules_cache_keys.py"
    rules.write_text(RULE.format(name="short", value=1.0) + RULE.format(name="kind", value=0.5))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "task.yaml").write_text("task: mine\n")
    cfg = load_config(None, [
        f"run.artifacts_root={tmp_path / 'runs'}", f"run.code_dir={code}",
        "rewards.rules=[{function: 'my_rules_cache_keys:short'}]",
        "evaluate.judge=my_rules_cache_keys:kind", "evaluate.champion=false",
        f"evaluate.metrics=[{{kind: benchmark, tasks: [mine], include_path: '{tasks}'}}]",
    ])  # fmt: skip
    before = stage_keys(cfg)
    assert stage_keys(cfg) == before  # nothing edited, nothing rerun

    rules.write_text(RULE.format(name="short", value=2.0) + RULE.format(name="kind", value=0.5))
    edited_rule = stage_keys(cfg)
    changed = {stage for stage in before if edited_rule[stage] != before[stage]}
    # the policy trains on the rule and everything after it follows; the data and the models
    # before it are kept
    assert {"policy", "evaluate", "register"} <= changed
    assert not changed & {"prepare", "sft", "collect", "reward"}

    (tasks / "task.yaml").write_text("task: mine\nnum_fewshot: 1\n")
    edited_task = stage_keys(cfg)
    changed = {stage for stage in before if edited_task[stage] != edited_rule[stage]}
    assert "evaluate" in changed and not changed & {"prepare", "sft", "collect", "reward", "policy"}
