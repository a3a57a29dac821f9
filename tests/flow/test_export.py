"""`alignflow export` on the session's pipeline run: the registered champion becomes a folder that
plain `transformers` loads and that generates what the pipeline's evaluation recorded."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignflow.app.cli import app
from alignflow.pipeline import tracking_uri
from alignflow.store import read_jsonl


def _export(*args: str):
    return CliRunner().invoke(app, ["export", *args])


@pytest.fixture(scope="module")
def exported(pipeline_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "champion"
    done = _export("models:/alignflow-policy@champion", str(out),
                   "--tracking-uri", tracking_uri(pipeline_runs.cfg))  # fmt: skip
    assert done.exit_code == 0, done.output
    return out


def test_the_exported_champion_generates_the_evaluations_greedy_responses(pipeline_runs, exported):
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(exported))
    evaluate = Path(pipeline_runs.first["stages"]["evaluate"]["output"])
    rows = read_jsonl(evaluate / "samples.jsonl")
    max_new_tokens = pipeline_runs.cfg.policy.ppo.sampling.max_new_tokens
    for row in rows[:4]:
        (out,) = generate(row["prompt"], max_new_tokens=max_new_tokens, do_sample=False)
        reply = out["generated_text"][-1]
        assert reply["role"] == "assistant"
        assert reply["content"].strip() == row["policy_greedy"], row["prompt"]


def test_the_export_holds_safetensors_tokenizer_generation_config_and_a_model_card(
    pipeline_runs, exported
):
    names = {path.name for path in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pkl"))]
    umask = os.umask(0)
    os.umask(umask)
    files = [path for path in exported.rglob("*") if path.is_file()]
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)  # readable as the umask allows, not 0600
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tokenizer_config.get("chat_template") or (exported / "chat_template.jinja").exists()
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] is not None and generation["pad_token_id"] is not None

    card = (exported / "README.md").read_text()
    summary = pipeline_runs.first
    assert "alignflow-policy v1" in card
    assert summary["mlflow_run_id"] in card  # the pipeline's parent run
    assert "| policy.algorithm | ppo |" in card
    assert "## Held-out evaluation" in card and "win-rate PPO vs SFT" in card
    collect = Path(summary["stages"]["collect"]["output"])
    digest = json.loads((collect / "result.json").read_text())["metrics"]["preference_digest"]
    assert f"collect data digest: `{digest}`" in card


def test_a_run_directory_exports_its_policy(pipeline_runs, tmp_path):
    run_dir = pipeline_runs.root / pipeline_runs.first["run_id"]
    done = _export(str(run_dir), str(tmp_path / "out"))
    assert done.exit_code == 0, done.output
    card = (tmp_path / "out" / "README.md").read_text()
    assert pipeline_runs.first["run_id"] in card and "## Held-out evaluation" in card


def test_bad_references_and_a_non_empty_destination_are_one_line_errors(pipeline_runs, tmp_path):
    done = _export(str(tmp_path / "nothing-here"), str(tmp_path / "out"))
    assert done.exit_code == 2
    assert "not a model folder" in done.stderr
    done = _export("models:/no-such-model@champion", str(tmp_path / "out"),
                   "--tracking-uri", tracking_uri(pipeline_runs.cfg))  # fmt: skip
    assert done.exit_code == 2 and "not in the registry" in done.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    run_dir = pipeline_runs.root / pipeline_runs.first["run_id"]
    done = _export(str(run_dir), str(tmp_path / "full"))
    assert done.exit_code == 2 and "--force" in done.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_a_lora_adapter_is_exported_merged_into_its_base(pipeline_runs, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft = Path(pipeline_runs.first["stages"]["sft"]["output"]) / "model"
    tuned = get_peft_model(
        AutoModelForCausalLM.from_pretrained(sft),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    )
    torch.manual_seed(0)
    for name, weight in tuned.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter change something
            weight.data.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    tuned.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(sft).save_pretrained(adapter)

    done = _export(str(adapter), str(tmp_path / "merged"))
    assert done.exit_code == 0, done.output
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", use_safetensors=True)
    base = AutoModelForCausalLM.from_pretrained(sft)
    ids = torch.tensor([[1, 5, 9, 14, 22]])
    with torch.no_grad():
        expected = tuned.eval()(ids).logits
        assert torch.allclose(merged.eval()(ids).logits, expected, atol=1e-4)
        assert not torch.allclose(base.eval()(ids).logits, expected, atol=1e-3)
