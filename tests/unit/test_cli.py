"""The real `alignflow` CLI on bad input: it stops before the pipeline with one `error:` line per
problem and exit code 2. No test here runs the pipeline; a stub flow fails loudly if one tried."""

import sys
import types
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from alignflow.app.cli import app
from alignflow.config import load_config

REPO_ROOT = Path(__file__).parents[2]
TINY = str(REPO_ROOT / "configs" / "tiny.yaml")


@pytest.fixture
def runner(monkeypatch) -> CliRunner:
    """A runner whose `run` cannot start the real flow: `flows.rlhf` is replaced by a stub."""

    def rlhf(config):
        raise AssertionError("the pipeline flow was started by a test that expected a config error")

    monkeypatch.setitem(sys.modules, "flows", types.ModuleType("flows"))
    monkeypatch.setitem(sys.modules, "flows.rlhf", types.SimpleNamespace(rlhf=rlhf))
    return CliRunner()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_run_with_unknown_key_exits_2_with_one_error_line_naming_it(runner, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("policy:\n  ppo:\n    learnig_rate: 1.0e-5\n")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    # click >= 8.2 keeps stderr apart; `output` is what a terminal shows (both streams).
    assert result.stdout == ""
    assert _error_lines(result.stderr) == [
        f"error: {config}: policy.ppo.learnig_rate: unknown key; did you mean learning_rate or "
        "value_learning_rate?"
    ]


def test_run_with_wrong_type_exits_2_naming_key_and_value(runner):
    result = runner.invoke(app, ["run", TINY, "--set", "sft.epochs=abc"])
    assert result.exit_code == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1
    assert "sft.epochs" in lines[0]
    assert "'abc'" in lines[0]


def test_run_with_malformed_set_exits_2(runner):
    result = runner.invoke(app, ["run", TINY, "--set", "policy.ppo.updates"])
    assert result.exit_code == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1
    assert "policy.ppo.updates" in lines[0]
    assert "section.key=value" in lines[0]


def test_run_with_missing_config_file_exits_2_naming_it(runner, tmp_path):
    missing = tmp_path / "absent.yaml"
    result = runner.invoke(app, ["run", str(missing)])
    assert result.exit_code == 2
    assert _error_lines(result.stderr) == [f"error: {missing}: no such config file"]


def test_run_lists_every_problem_above_one_last_error_line(runner):
    result = runner.invoke(
        app, ["run", TINY, "--set", "policy.ppo.learnig_rate=1", "--set", "sft.epochs=abc"]
    )
    assert result.exit_code == 2
    *problems, last = result.stderr.rstrip().splitlines()
    assert _error_lines(result.stderr) == [last]
    assert last.startswith("error: 2 problems in the config (above); the first: ")
    assert len(problems) == 2 and all(problem.startswith("  ") for problem in problems)
    assert {"policy.ppo.learnig_rate", "sft.epochs"} == {
        key
        for problem in problems
        for key in ("policy.ppo.learnig_rate", "sft.epochs")
        if key in problem
    }


def test_show_config_prints_resolved_yaml_with_override(runner):
    result = runner.invoke(app, ["show-config", TINY, "--set", "policy.ppo.updates=7"])
    assert result.exit_code == 0, result.output
    assert "    updates: 7" in result.stdout.splitlines()
    resolved = yaml.safe_load(result.stdout)
    assert resolved["policy"]["ppo"]["updates"] == 7
    assert resolved["run"]["name"] == "tiny-demo"


def test_show_config_with_unknown_key_exits_2(runner):
    result = runner.invoke(app, ["show-config", TINY, "--set", "policy.ppo.learnig_rate=1"])
    assert result.exit_code == 2
    assert _error_lines(result.stderr) == [
        f"error: {TINY}: policy.ppo.learnig_rate: unknown key; did you mean learning_rate or "
        "value_learning_rate?"
    ]


def test_help_lists_the_run_command(runner):
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    assert "Run the whole RLHF pipeline" in result.output
    assert any(line.strip(" │|").startswith("run ") for line in result.output.splitlines())


def test_data_check_lints_a_fixture_and_exits_0():
    fixture = (
        Path(__file__).parents[3] / "shared" / "fixtures" / "llamafactory" / "dpo_en_demo.json"
    )
    if not fixture.exists():
        pytest.skip(f"shared fixtures not found at {fixture}")
    result = CliRunner().invoke(app, ["data", "check", str(fixture)])
    assert result.exit_code == 0, result.output
    assert "sharegpt_pairwise" in result.output
    assert "300" in result.output


def test_data_check_exits_2_and_names_the_bad_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", "chosen":\n')
    result = CliRunner().invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:2" in result.output


def test_deploy_without_a_prefect_server_says_how_to_start_one(runner, monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))  # no profile naming a server either
    result = runner.invoke(app, ["deploy", "--no-worker"])
    assert result.exit_code == 1
    (line,) = _error_lines(result.stderr)
    assert "PREFECT_API_URL is not set" in line and "prefect server start" in line


def test_deploy_outside_a_checkout_names_alignflow_home(runner, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path))
    result = runner.invoke(app, ["deploy", "--no-worker"])
    assert result.exit_code == 1
    (line,) = _error_lines(result.stderr)
    assert f"no infra/prefect.yaml under {tmp_path}" in line and "ALIGNFLOW_HOME" in line


def test_a_runs_name_carries_its_overrides_but_not_where_it_goes():
    from alignflow.app.cli import _named_by_overrides

    sets = ["policy.ppo.updates=40", "run.artifacts_root=/tmp/x", "sft.learning_rate=1e-4"]
    cfg = _named_by_overrides(load_config(TINY, sets), sets)
    assert cfg.run.name == "tiny-demo [policy.ppo.updates=40, sft.learning_rate=1e-4]"
    assert _named_by_overrides(load_config(TINY, []), None).run.name == "tiny-demo"
    placed = ["run.artifacts_root=/tmp/x"]
    assert _named_by_overrides(load_config(TINY, placed), placed).run.name == "tiny-demo"
    many = [f"policy.ppo.updates={n}" for n in range(100)]
    assert len(_named_by_overrides(load_config(TINY, []), many).run.name) == 120


def test_summary_json_is_strict_json_with_unscored_figures_as_null(tmp_path):
    """summary.json holds NaN where an LLM judge scored nothing; `summary --json` prints null."""
    import json

    run = tmp_path / "latest"
    run.mkdir()
    (run / "summary.json").write_text(
        '{"run_id": "r", "eval": {"llm_grade": {"base": NaN, "policy": 7.5}, "x": [Infinity]}}'
    )
    result = CliRunner().invoke(app, ["summary", "--artifacts-root", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output, parse_constant=lambda name: pytest.fail(name))
    assert printed["eval"] == {"llm_grade": {"base": None, "policy": 7.5}, "x": [None]}
