"""Every config the README shows is a valid config, and the own-data shapes it shows are the
example files that tests/flow/test_pipeline_shapes.py runs, word for word."""

from __future__ import annotations

import re

import pytest
import yaml

from alignflow.config import build_config
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
BLOCKS = [
    (README[: match.start()].count("\n") + 1, match.group(1))
    for match in re.finditer(r"```yaml\n(.*?)```", README, re.S)
]


@pytest.mark.parametrize(("line", "block"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_every_readme_yaml_block_is_a_valid_config(line, block):
    build_config(yaml.safe_load(block) or {}, f"README.md:{line}")


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_every_example_config_is_in_the_readme_as_written(example):
    text = (REPO / "examples" / example).read_text()
    assert any(block == text for _, block in BLOCKS), f"examples/{example} is not in the README"
    assert text.startswith("# ") and "alignflow run examples/" + example in text.splitlines()[0]
