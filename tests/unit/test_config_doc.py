"""Every config key documented once (alignflow/config.py), and that text everywhere a user looks:
the Prefect run form, `alignflow keys`, `show-config --doc`, docs/config.md."""

from __future__ import annotations

import subprocess
import sys

import yaml

from alignflow.config import build_config, load_config
from alignflow.config_doc import commented_yaml, keys, markdown
from tests.conftest import REPO


def test_every_key_of_every_section_has_a_description():
    undocumented = [key.key for key in keys() if not key.description]
    assert undocumented == []
    names = {key.key for key in keys()}
    # nested sections, list items and mapping values are all reached
    assert {"policy.ppo.kl.coef", "collect.labelers[].kind", "compute.<name>.nproc",
            "data.sft[].path", "collect.labelers[].llm_judge.base_url"} <= names  # fmt: skip


def test_docs_config_md_is_the_generated_reference():
    """docs/config.md is `alignflow keys --markdown`: regenerate it after changing a field."""
    assert (REPO / "docs" / "config.md").read_text() == markdown()


def test_show_config_doc_is_the_same_config_with_each_key_described_above_it():
    cfg = load_config(REPO / "configs" / "micro.yaml", ["compute.sft.nproc=2"])
    text = commented_yaml(cfg)
    assert build_config(yaml.safe_load(text)) == cfg  # comments only: the same config
    described = {key.key: key.description for key in keys()}
    lines = text.splitlines()
    coef = next(i for i, line in enumerate(lines) if line.strip().startswith("coef:"))
    assert lines[coef - 1].strip() == f"# {described['policy.ppo.kl.coef']}"
    nproc = next(i for i, line in enumerate(lines) if line.strip() == "nproc: 2")
    assert lines[nproc - 1].strip() == f"# {described['compute.<name>.nproc']}"


def test_the_prefect_run_form_shows_each_fields_description():
    """The flow parameter's JSON schema (what the Prefect UI renders as the run form) carries
    the descriptions of nested sections' fields."""
    from prefect.utilities.callables import parameter_schema

    from flows.rlhf import rlhf

    schema = parameter_schema(rlhf.fn).model_dump_for_openapi()
    definitions = schema.get("definitions") or schema.get("$defs")
    described = {key.key: key.description for key in keys()}
    kl = definitions["KLConfig"]["properties"]["coef"]
    assert " ".join(kl["description"].split()) == described["policy.ppo.kl.coef"]
    undocumented = [
        f"{name}.{field}"
        for name, definition in definitions.items()
        for field, spec in definition.get("properties", {}).items()
        if not spec.get("description")
    ]
    assert undocumented == []


def test_alignflow_keys_lists_a_sections_keys_and_refuses_an_unknown_prefix():
    command = [sys.executable, "-m", "alignflow.app.cli", "keys"]
    listed = subprocess.run([*command, "policy.ppo.kl"], capture_output=True, text=True, cwd=REPO)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    coef = lines.index(next(line for line in lines if line.startswith("policy.ppo.kl.coef ")))
    assert lines[coef].startswith("policy.ppo.kl.coef (float) = 0.05")
    assert lines[coef + 1].strip().startswith("Coefficient of the per-token KL penalty")
    unknown = subprocess.run([*command, "polcy"], capture_output=True, text=True, cwd=REPO)
    assert unknown.returncode == 2
    assert (
        unknown.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: no config key starts with 'polcy'; the sections: collect, compute, data"
        )
    )
