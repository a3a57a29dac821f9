"""The bad-input corpus (tests/bad_input/corpus.yaml) through the real `alignflow` command.

Every case must fail the way a person can act on: its exit code, one `error:` line (for `data
check`, one problem line in the report) that names the file or key and matches the case, last on
stderr, no traceback, no line longer than the cap, and nothing written beside its inputs. A case
that succeeds is a failure too. `run` cannot start the pipeline here: `flows.rlhf` is replaced by
a flow that fails the test if a case ever got that far.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from alignflow.app.cli import main

CORPUS = Path(__file__).parents[1] / "bad_input" / "corpus.yaml"
EVERY_CASE = yaml.safe_load(CORPUS.read_text())
CASES = [
    case for case in EVERY_CASE if case.get("kind") != "http"
]  # http: tests/flow/test_serve.py
MAX_LINE = 400  # the error line itself is cut at 300 characters; report lines name long paths


def _yaml_bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    names = "abcdefghij"
    for previous, name in zip(names, names[1 : levels + 1], strict=False):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + f"\nrun:\n  name: *{names[levels]}\n"


def _generate(name: str, tmp: Path) -> tuple[list[str], str | None]:
    """(args, data path) for inputs too large to write into the corpus."""
    config = tmp / "config.yaml"
    if name == "yaml_bomb":
        config.write_text(_yaml_bomb())
        return ["run", str(config)], None
    if name == "yaml_bomb_set":
        config.write_text("{}\n")
        bomb = _yaml_bomb().replace("\nrun:\n  name: ", "\nvalue: ")
        return ["run", str(config), "--set", f"run.name={bomb}"], None
    if name == "deep_yaml":
        config.write_text("run: " + "[" * 100_000 + "\n")
        return ["run", str(config)], None
    if name == "long_value":
        config.write_text("run: {seed: '" + "9x" * 50_000 + "'}\n")
        return ["run", str(config)], None
    if name == "deep_jsonl":
        data = tmp / "data.jsonl"
        data.write_text('{"a": ' + "[" * 100_000 + "\n")
        return ["data", "check", str(data)], str(data)
    if name == "deep_json":
        data = tmp / "data.json"
        deep = "[" * 100_000 + "]" * 100_000
        data.write_text(f'[{{"instruction": "a", "output": "b"}}, {{"x": {deep}}}]')
        return ["data", "check", str(data)], str(data)
    raise AssertionError(f"unknown generator {name}")


def _inputs(case: dict, tmp: Path) -> list[str]:
    """Write the case's files into `tmp` and return its arguments with placeholders filled."""
    if "generate" in case:
        args, _ = _generate(case["generate"], tmp)
        return args
    config = tmp / "config.yaml"
    (tmp / "plain.txt").write_text("a file, not a folder\n")
    pickled = tmp / "pickled-model"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "llama"}\n')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")  # what torch.save writes first
    data = tmp / case.get("data_name", "data.jsonl")
    fill = {"{tmp}": str(tmp), "{file}": str(tmp / "plain.txt"), "{pickled}": str(pickled)}
    if "config_hex" in case:
        config.write_bytes(bytes.fromhex(case["config_hex"]))
    else:
        text = case.get("config", "{}\n")
        for key, value in fill.items():
            text = text.replace(key, value)
        config.write_text(text)
    if "data_hex" in case:
        data.write_bytes(bytes.fromhex(case["data_hex"]))
    elif "data" in case:
        data.write_text(case["data"] + ("\n" if case["data"] else ""))
    fill |= {"{config}": str(config), "{data}": str(data)}
    default = ["data", "check", "{data}"] if case.get("kind") == "data" else ["run", "{config}"]
    args = []
    for arg in case.get("args", default):
        for key, value in fill.items():
            arg = arg.replace(key, value)
        args.append(arg)
    return args


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
def no_pipeline(monkeypatch):
    def rlhf(config):
        raise AssertionError("a bad-input case reached the pipeline flow")

    monkeypatch.setitem(sys.modules, "flows", types.ModuleType("flows"))
    monkeypatch.setitem(sys.modules, "flows.rlhf", types.SimpleNamespace(rlhf=rlhf))


def test_the_corpus_is_large_its_ids_unique_and_every_surface_covered():
    ids = [case["id"] for case in EVERY_CASE]
    assert len(ids) >= 100
    assert len(set(ids)) == len(ids)
    surfaces = {case_id.split("-")[0] for case_id in ids}
    assert surfaces == {"config", "set", "cli", "data", "http"}
    assert all(case["id"].startswith("http-") for case in EVERY_CASE if case.get("kind") == "http")


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_bad_input_fails_in_one_line(case, tmp_path, capsys, monkeypatch, no_pipeline):
    monkeypatch.chdir(tmp_path)
    tmp = tmp_path / "case"
    tmp.mkdir()
    args = _inputs(case, tmp)
    before = _files(tmp_path)

    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()

    assert exited.value.code == case.get("exit", 2), (out, err)
    assert "Traceback" not in out + err
    assert all(len(line) <= MAX_LINE for line in (out + err).splitlines()), "an overlong line"
    pattern = re.compile(case["error"])
    if case.get("kind") == "data":  # the report: one problem line, then the verdict
        lines = out.splitlines()
        assert lines[-1].startswith("INVALID:"), out
        start = next(i for i, line in enumerate(lines) if line.startswith("problems:")) + 1
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  "))
        problems = lines[start:end]
        assert len(problems) == 1, out
        assert pattern.search(problems[0]), problems[0]
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines, out
        assert lines[-1].startswith("error: "), err
        assert [line for line in lines if line.startswith("error:")] == [lines[-1]], err
        assert pattern.search(lines[-1]), lines[-1]
    assert _files(tmp_path) == before, "the case left files behind"
