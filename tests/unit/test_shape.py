"""alignflow.shape: which stages a config runs, which datasets it needs, and the cache keys of
each shape."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignflow.config import ConfigError, load_config
from alignflow.pipeline import stage_keys
from alignflow.shape import active_stages, collect_mode, required_roles
from tests.conftest import REPO

D = {"path": "d.jsonl", "keep_columns": ["family", "subject"]}  # the demo oracle reads them
ORACLE = "alignflow.demo:oracle_reward"  # named: a files config has no judge or labeler by default


def _files(tmp_path, *overrides: str, **data):
    """A files config with the given datasets (each a one-file list) and dotted overrides."""
    import yaml

    tree = {
        "data": {"source": "files", **{role: [D] for role in data}},
        "evaluate": {"judge": ORACLE},
        "collect": {"labelers": [{"kind": "rule", "function": ORACLE}]},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(path, list(overrides))


ALL = ("prepare", "sft", "collect", "reward", "policy", "evaluate", "register")


@pytest.mark.parametrize(
    ("overrides", "roles", "stages"),
    [
        # the default: SFT, pairs labelled here, a reward model, PPO
        ((), ("sft", "preference_prompts", "rl_prompts", "heldout"), ALL),
        # own pairs -> reward model -> PPO (collect.mode defaults to off)
        ((), ("sft", "preferences", "rl_prompts", "heldout"),
         ("prepare", "sft", "reward", "policy", "evaluate", "register")),
        # own pairs -> DPO: no reward model, no RL prompts
        (("policy.algorithm=dpo",), ("sft", "preferences", "heldout"),
         ("prepare", "sft", "policy", "evaluate", "register")),
        # an instruct model as it ships -> DPO
        (("policy.algorithm=dpo", "sft.enabled=false"), ("preferences", "heldout"),
         ("prepare", "policy", "evaluate", "register")),
        # rule rewards only -> GRPO
        (("policy.algorithm=grpo", "rewards.model_weight=0",
          "rewards.rules=[{function: 'a.b:c'}]"), ("sft", "rl_prompts", "heldout"),
         ("prepare", "sft", "policy", "evaluate", "register")),
        # an existing reward model -> PPO
        (("reward_model.model=some/rm",), ("sft", "rl_prompts", "heldout"),
         ("prepare", "sft", "policy", "evaluate", "register")),
        # both: own pairs and collected ones
        (("collect.mode=both",), ("sft", "preferences", "preference_prompts", "rl_prompts",
                                  "heldout"), ALL),
    ],
)  # fmt: skip
def test_each_shape_runs_its_stages_and_needs_only_its_datasets(tmp_path, overrides, roles, stages):
    cfg = _files(tmp_path, *overrides, **dict.fromkeys(roles))
    assert active_stages(cfg) == stages
    assert set(required_roles(cfg)) == set(roles)
    assert set(stage_keys(cfg)) == set(stages)
    for missing in roles:  # every one of them is needed, and the error says which and why
        left = dict.fromkeys(r for r in roles if r != missing)
        with pytest.raises(ConfigError, match=rf"data\.{missing}\b"):
            _files(tmp_path, *overrides, **left)


def test_collect_mode_needs_own_pairs_and_defaults_by_their_presence(tmp_path):
    with pytest.raises(ConfigError, match="collect.mode 'off' trains on your own pairs"):
        load_config(None, ["collect.mode=off"])
    assert collect_mode(load_config(None)) == "on"
    cfg = _files(tmp_path, sft=1, preferences=1, rl_prompts=1, heldout=1)
    assert collect_mode(cfg) == "off"


def test_a_reward_model_nothing_reads_is_refused(tmp_path):
    with pytest.raises(
        ConfigError, match="reward_model.model is set, but nothing reads a reward model"
    ):
        load_config(None, ["policy.algorithm=dpo", "reward_model.model=some/rm"])


def test_cache_keys_follow_the_pairs_origin_and_the_given_reward_model(tmp_path):
    roles = dict.fromkeys(("sft", "preferences", "preference_prompts", "rl_prompts", "heldout"))
    both = stage_keys(_files(tmp_path, "collect.mode=both", **roles))
    on = stage_keys(_files(tmp_path, "collect.mode=on", **roles))
    assert both["collect"] == on["collect"] and both["sft"] == on["sft"]
    assert both["reward"] != on["reward"]  # the same collected pairs, plus the user's
    given = [
        stage_keys(_files(tmp_path, f"reward_model.model={m}", **roles))["policy"] for m in "ab"
    ]
    assert given[0] != given[1]


def test_a_rule_module_beside_the_config_is_found_from_any_directory(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_judges_xyz.py").write_text(
        "def kind(prompts, completions, **_):\n    return [1.0 for _ in completions]\n"
    )
    (folder / "config.yaml").write_text("evaluate: {judge: 'my_judges_xyz:kind'}\n")
    check = (
        "from alignflow.config import load_config; from alignflow.rl.rewards import check_rewards;"
        f"check_rewards(load_config({str(folder / 'config.yaml')!r})); print('found')"
    )
    # run from the repository, where the module is not on the path by any other means
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "found", done.stderr[-2000:]


def test_combinations_that_would_fail_mid_run_fail_at_load(tmp_path):
    with pytest.raises(ConfigError, match="model.chat_template is applied by the SFT stage"):
        load_config(None, ["sft.enabled=false", "model.source=pretrained",
                           "model.name_or_path=some/model", "model.chat_template=chatml"])  # fmt: skip
    # collect.mode off where nothing reads pairs is just explicit, not an error
    rules = [
        "policy.algorithm=grpo",
        "rewards.model_weight=0",
        "rewards.rules=[{function: 'a.b:c'}]",
    ]
    assert "collect" not in active_stages(load_config(None, [*rules, "collect.mode=off"]))
    # a retraining round judged by a reward model needs one: trained here, or given
    dpo = ["policy.algorithm=dpo", "retrain.judge=reward_model"]
    assert "reward" in active_stages(load_config(None, dpo))
    assert "reward" not in active_stages(load_config(None, [*dpo, "reward_model.model=some/rm"]))


def test_too_few_rows_names_the_setting_and_the_unpaired_rows_it_cannot_read():
    from alignflow.shape import NotEnoughData, require

    require(16, 16, "training pairs", "reward")  # enough
    with pytest.raises(NotEnoughData) as raised:
        require(16, 0, "training pairs", "reward", unpaired=40)
    assert str(raised.value) == (
        "reward: 0 training pairs to train on (40 KTO-style unpaired rows of data.preferences are "
        "read by policy.algorithm kto alone), fewer than data.min_examples (16): bring more data, "
        "or lower data.min_examples"
    )
