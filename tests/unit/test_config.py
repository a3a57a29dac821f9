"""Loading, overriding and validating the pipeline config: errors name the file and the dotted key."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from alignflow.config import (
    ConfigError,
    PipelineConfig,
    dump_config,
    load_config,
    parse_overrides,
)

REPO_ROOT = Path(__file__).parents[2]
CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
TINY = REPO_ROOT / "configs" / "tiny.yaml"


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path | None, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


# --- loading ------------------------------------------------------------------------------------


def test_tiny_yaml_loads_with_its_own_values():
    cfg = load_config(TINY)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.run.name == "tiny-demo"
    assert cfg.model.source == "tiny"
    assert cfg.policy.ppo.rollout_batch_size == 32
    assert cfg.policy.ppo.minibatch_size == 16
    assert cfg.sft.learning_rate == pytest.approx(2e-3)


def test_no_path_gives_the_declared_defaults():
    assert load_config(None) == PipelineConfig()


def test_empty_file_gives_the_declared_defaults(tmp_path):
    loaded = load_config(_write(tmp_path, "# nothing here\n"))
    # and the file's folder as the place its own rules are imported from
    assert loaded.run.code_dir == str(tmp_path.resolve())
    assert loaded == PipelineConfig(run={"code_dir": str(tmp_path.resolve())})


def test_a_file_value_overrides_only_that_default(tmp_path):
    cfg = load_config(_write(tmp_path, "policy:\n  ppo:\n    updates: 3\n"))
    assert cfg.policy.ppo.updates == 3
    assert cfg.policy.ppo.learning_rate == PipelineConfig().policy.ppo.learning_rate


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda path: path.name)
def test_every_config_file_starts_with_the_command_that_runs_it(config_path):
    first_line = config_path.read_text().splitlines()[0]
    assert first_line.startswith("#")
    assert f"alignflow run configs/{config_path.name}" in first_line


def test_the_configs_folder_is_not_empty():
    # Guards the parametrized test above from silently collecting nothing.
    assert TINY in CONFIGS


# --- dotted overrides ---------------------------------------------------------------------------


def test_overrides_parse_yaml_scalars_into_typed_values():
    cfg = load_config(
        None,
        [
            "policy.ppo.learning_rate=1e-5",
            "policy.ppo.whiten_rewards=true",
            "policy.ppo.missing_eos_score=null",
        ],
    )
    assert cfg.policy.ppo.learning_rate == pytest.approx(1e-5)
    assert isinstance(cfg.policy.ppo.learning_rate, float)
    assert cfg.policy.ppo.whiten_rewards is True
    assert cfg.policy.ppo.missing_eos_score is None


def test_parse_overrides_reads_booleans_nulls_and_numbers():
    assert parse_overrides(["a.b=true", "a.c=null", "a.d=7", "a.e=2.5e-3", "a.f=text"]) == [
        ("a.b", True),
        ("a.c", None),
        ("a.d", 7),
        ("a.e", 2.5e-3),
        ("a.f", "text"),
    ]


def test_parse_overrides_reads_exponent_without_a_dot_as_a_float():
    assert parse_overrides(["policy.ppo.learning_rate=1e-5"]) == [
        ("policy.ppo.learning_rate", 1e-5)
    ]


def test_nested_override_changes_one_value_and_keeps_its_file_siblings():
    cfg = load_config(TINY, ["policy.ppo.kl.adaptive=true"])
    assert cfg.policy.ppo.kl.adaptive is True
    assert cfg.policy.ppo.kl.coef == pytest.approx(0.05)
    assert cfg.policy.ppo.kl.estimator == "k1"
    assert cfg.policy.ppo.updates == 60


def test_override_wins_over_the_file():
    assert load_config(TINY, ["policy.ppo.updates=7"]).policy.ppo.updates == 7


def test_later_override_of_the_same_key_wins():
    assert (
        load_config(None, ["policy.ppo.updates=7", "policy.ppo.updates=9"]).policy.ppo.updates == 9
    )


def test_override_without_equals_sign_is_rejected():
    message = _error(None, ["policy.ppo.updates"])
    assert "policy.ppo.updates" in message
    assert "section.key=value" in message


def test_override_into_a_scalar_is_rejected():
    message = _error(TINY, ["run.name.first=x"])
    assert "run.name.first" in message
    assert "'name' is a value" in message


# --- validation errors --------------------------------------------------------------------------


def test_unknown_top_level_key_is_one_line_naming_file_and_key(tmp_path):
    path = _write(tmp_path, "run:\n  seed: 1\nbogus: 3\n")
    assert _error(path) == f"{path}: bogus: unknown key; `alignflow keys` lists them"


def test_unknown_nested_key_is_one_line_naming_file_and_dotted_key(tmp_path):
    path = _write(tmp_path, "policy:\n  ppo:\n    learnig_rate: 1.0e-5\n")
    assert _error(path) == (
        f"{path}: policy.ppo.learnig_rate: unknown key; did you mean learning_rate or "
        "value_learning_rate?"
    )


def test_unknown_key_from_an_override_names_the_config_file():
    assert _error(TINY, ["policy.ppo.kl.coeff=0.1"]) == (
        f"{TINY}: policy.ppo.kl.coeff: unknown key; did you mean coef?"
    )


def test_each_problem_gets_its_own_line(tmp_path):
    path = _write(tmp_path, "policy:\n  ppo:\n    learnig_rate: 1.0e-5\nsft:\n  epochs: abc\n")
    lines = _error(path).splitlines()
    assert len(lines) == 2
    assert any("policy.ppo.learnig_rate: unknown key" in line for line in lines)
    assert any("sft.epochs" in line for line in lines)
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_wrong_type_names_the_key_and_the_bad_value():
    message = _error(TINY, ["sft.epochs=abc"])
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{TINY}: sft.epochs: ")
    assert "'abc'" in message


def test_out_of_range_value_names_the_key():
    message = _error(None, ["sft.epochs=0"])
    assert message.startswith("defaults: sft.epochs: ")
    assert "greater than 0" in message


def test_minibatch_that_does_not_divide_rollout_batch_is_rejected_naming_both():
    message = _error(None, ["policy.ppo.rollout_batch_size=32", "policy.ppo.minibatch_size=5"])
    assert len(message.splitlines()) == 1
    assert "policy.ppo.minibatch_size (5)" in message
    assert "policy.ppo.rollout_batch_size (32)" in message


def test_minibatch_that_divides_rollout_batch_is_accepted():
    cfg = load_config(None, ["policy.ppo.rollout_batch_size=48", "policy.ppo.minibatch_size=12"])
    assert (cfg.policy.ppo.rollout_batch_size, cfg.policy.ppo.minibatch_size) == (48, 12)


def test_pretrained_model_without_name_or_path_is_rejected():
    message = _error(None, ["model.source=pretrained"])
    assert "model.name_or_path" in message


def test_pretrained_model_with_name_or_path_is_accepted():
    cfg = load_config(None, ["model.source=pretrained", "model.name_or_path=Qwen/Qwen2.5-0.5B"])
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-0.5B"


def test_invalid_yaml_reports_file_and_line(tmp_path):
    # Line 3 has a second ':' where YAML expects a plain value.
    path = _write(tmp_path, "run:\n  name: ok\n  seed: a: b\n")
    message = _error(path)
    assert message.startswith(f"{path}:3: invalid YAML")
    assert len(message.splitlines()) == 1


def test_missing_file_is_reported_by_path(tmp_path):
    path = tmp_path / "absent.yaml"
    assert _error(path) == f"{path}: no such config file"


def test_a_top_level_list_is_rejected(tmp_path):
    path = _write(tmp_path, "- run\n- sft\n")
    assert "expected a mapping" in _error(path)


# --- immutability and round trip ----------------------------------------------------------------


def test_config_sections_are_frozen():
    cfg = load_config(TINY)
    with pytest.raises(ValidationError):
        cfg.policy.ppo.updates = 3
    with pytest.raises(ValidationError):
        cfg.policy.ppo = cfg.policy.ppo.model_copy()
    assert cfg.policy.ppo.updates == 60


def test_dump_config_round_trips_through_load_config(tmp_path):
    cfg = load_config(
        TINY, ["policy.ppo.kl.adaptive=true", "policy.ppo.missing_eos_score=null", "sft.epochs=2.5"]
    )
    path = _write(tmp_path, dump_config(cfg), "resolved.yaml")
    assert load_config(path) == cfg


def test_retrain_judge_is_a_rule_path_or_the_reward_model():
    assert load_config(None, ["retrain.judge=reward_model"]).retrain.judge == "reward_model"
    assert load_config(None, ["retrain.judge=pkg.mod:score"]).retrain.judge == "pkg.mod:score"
    with pytest.raises(ConfigError, match="retrain.judge"):
        load_config(None, ["retrain.judge=oracle"])
    with pytest.raises(ConfigError, match="retrain.confidence"):
        load_config(None, ["retrain.confidence=1.0"])


def test_the_mlflow_store_is_the_configs_then_alignflows_variable_never_mlflows(
    monkeypatch, tmp_path
):
    from alignflow.pipeline import tracking_uri

    cfg = load_config(None, [f"run.artifacts_root={tmp_path}"])
    # MLflow exports MLFLOW_TRACKING_URI on every set_tracking_uri: reading it would leak stores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("ALIGNFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(cfg) == "http://127.0.0.1:5000"
    own = load_config(None, [f"run.artifacts_root={tmp_path}", "run.mlflow_tracking_uri=http://x"])
    assert tracking_uri(own) == "http://x"
