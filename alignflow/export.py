"""`alignflow export`: a policy from the MLflow registry, a pipeline run or a folder, as one folder
that plain `transformers` and vLLM load: safetensors weights (a LoRA adapter merged), the tokenizer
with its chat template, a generation config, and a model card saying where the model came from."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
PROVENANCE_FILE = "alignflow.json"


class ExportError(ValueError):
    """The reference or the destination will not do; the message says which and why."""


def registry_parts(ref: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` -> (NAME, ALIAS, None); `models:/NAME/VERSION` -> (NAME, None, VERSION)."""
    name, _, alias = ref.removeprefix("models:/").partition("@")
    if alias:
        return name, alias, None
    name, _, version = name.partition("/")
    return name, None, version


def _registry_source(ref: str, tracking_uri: str, scratch: Path) -> tuple[Path, dict[str, Any]]:
    """Download `models:/name@alias` (or `models:/name/version`); provenance from its runs."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from alignflow import tracking

    name, alias, number = registry_parts(ref)
    if not name or not (alias or number):
        raise ExportError(f"{ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    store = tracking_uri.removeprefix("sqlite:///")
    if tracking_uri.startswith("sqlite:///") and not Path(store).is_file():
        raise ExportError(f"{ref}: no MLflow store at {tracking_uri}")
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        else:
            version = client.get_model_version(name, number)
        model = Path(tracking.download_model(ref, str(scratch)))
    except MlflowException as error:
        raise ExportError(
            f"{ref}: not in the registry at {tracking_uri} ({error.message})"
        ) from None
    except ValueError as error:  # downloaded, but not a transformers model
        raise ExportError(f"{ref}: {error}") from None
    facts: dict[str, Any] = {
        "registered_model": f"{name} v{version.version}",
        "mlflow": tracking_uri,
    }
    facts |= _run_facts(client, version.run_id)
    return model, facts


def _run_facts(client, register_run_id: str | None) -> dict[str, Any]:
    """What the pipeline's MLflow runs say about the model: its parent run's params and metrics,
    its stage runs' data digests, and the evaluation table."""
    if not register_run_id:
        return {}
    run = client.get_run(register_run_id)
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return {"mlflow_run": register_run_id}
    parent = client.get_run(parent_id)
    stages = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    facts: dict[str, Any] = {
        "mlflow_run": parent_id,
        "prefect_flow_run": parent.data.tags.get("prefect.flow_run_id"),
        "params": parent.data.params,
        "digests": {
            stage.data.tags.get("stage"): stage.data.tags["alignflow.preference_digest"]
            for stage in stages
            if "alignflow.preference_digest" in stage.data.tags
        },
    }
    for stage in stages:
        if stage.data.tags.get("stage") == "evaluate":
            path = client.download_artifacts(stage.info.run_id, "eval.md")
            facts["evaluation"] = Path(path).read_text()
    return facts


def _run_dir_source(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A pipeline run directory (runs/<run_id>): its policy stage output and its summary."""
    import yaml

    from alignflow import tracking

    summary = json.loads((run_dir / "summary.json").read_text())
    policy = summary.get("stages", {}).get("policy")
    if not policy or policy.get("status") == "failed":
        raise ExportError(f"{run_dir}: this run has no completed policy stage")
    config = (
        yaml.safe_load((run_dir / "config.yaml").read_text())
        if (run_dir / "config.yaml").exists()
        else {}
    )
    facts = {
        "run": summary["run_id"],
        "mlflow_run": summary.get("mlflow_run_id"),
        "params": tracking.flatten(config or {}),
        "evaluation": _evaluation_table(summary),
    }
    return Path(policy["output"]) / "policy", facts


def _evaluation_table(summary: dict) -> str | None:
    evaluate = summary.get("stages", {}).get("evaluate")
    path = Path(evaluate["output"], "eval.md") if evaluate else None
    return path.read_text() if path and path.exists() else None


def resolve(ref: str, tracking_uri: str, scratch: Path) -> tuple[Path, dict[str, Any]]:
    """The model folder `ref` names and what is known about it."""
    if ref.startswith("models:/"):
        return _registry_source(ref, tracking_uri, scratch)
    path = Path(ref)
    if (path / "summary.json").is_file():
        return _run_dir_source(path)
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        from alignflow.models import check_safetensors

        try:
            check_safetensors(path)
        except ValueError as error:
            raise ExportError(str(error)) from None
        return path, {"source": str(path.resolve())}
    raise ExportError(
        f"{ref}: not a model folder (config.json or adapter_config.json), a run directory "
        "(summary.json) or a registry URI (models:/NAME@ALIAS, models:/NAME/VERSION)"
    )


def _load_merged(folder: Path, trust_remote_code: bool):
    """The model in `folder`, with a LoRA adapter merged into its base when it is one."""
    from transformers import AutoModelForCausalLM

    if (folder / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(
            folder, trust_remote_code=trust_remote_code
        )
        return model.merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=trust_remote_code, use_safetensors=True
    )


KEY_PARAMS = (
    "model.source", "model.name_or_path", "policy.algorithm", "run.seed", "sft.epochs",
    "sft.learning_rate", "policy.ppo.updates", "policy.ppo.learning_rate", "policy.ppo.kl.coef", "data.source",
)  # fmt: skip


def model_card(facts: dict[str, Any], ref: str) -> str:
    params = facts.get("params", {})
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [alignflow, rlhf]", "---",
        "", f"# Aligned policy exported by alignflow from `{ref}`", "",
    ]  # fmt: skip
    for label, key in (
        ("registered model", "registered_model"), ("pipeline run", "run"),
        ("MLflow tracking URI", "mlflow"), ("MLflow run", "mlflow_run"),
        ("Prefect flow run", "prefect_flow_run"), ("source folder", "source"),
    ):  # fmt: skip
        if facts.get(key):
            lines.append(f"- {label}: `{facts[key]}`")
    base = params.get("model.name_or_path") if params.get("model.source") == "pretrained" else None
    lines.append(f"- base model: `{base or params.get('model.source', 'unknown')}`")
    for stage, digest in facts.get("digests", {}).items():
        lines.append(f"- {stage} data digest: `{digest}`")
    chosen = {key: params[key] for key in KEY_PARAMS if key in params}
    if chosen:
        lines += ["", "## Key hyper-parameters", "", "| param | value |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in chosen.items()]
    if facts.get("evaluation"):
        lines += ["", "## Held-out evaluation", "", facts["evaluation"].strip()]
    lines += ["", "Load: `transformers.pipeline('text-generation', model=THIS_FOLDER)`; serve:",
              "`alignflow serve THIS_FOLDER` or `vllm serve THIS_FOLDER`.", ""]  # fmt: skip
    return "\n".join(lines)


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _text_only(folder: Path) -> None:
    """Drop a `processor_class` the tokenizer inherited from a multimodal sibling (Gemma-3's
    tokenizer names `Gemma3Processor`) when the export has no processor files: loaders that start
    from AutoProcessor (`transformers serve`) would look for an image processor and fail."""
    config_path = folder / "tokenizer_config.json"
    has_processor = any((folder / name).exists() for name in PROCESSOR_FILES)
    if has_processor or not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    if config.pop("processor_class", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _shareable(folder: Path) -> None:
    """Give every file the mode the user's umask gives a new file (0644 under the usual 022):
    transformers writes model.safetensors through a private temporary file (0600), which other
    users of a shared model folder, or a serving container's user, could not read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def export(
    ref: str, out: Path, tracking_uri: str, trust_remote_code: bool = False, force: bool = False
) -> Path:
    """Write the export of `ref` to `out` (atomically: a partial folder renamed at the end)."""
    from transformers import AutoTokenizer, GenerationConfig

    from alignflow.rl.rollout import stop_token_ids

    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: exists and is not empty (--force replaces it)")
    with tempfile.TemporaryDirectory(prefix="alignflow-export-") as scratch:
        source, facts = resolve(ref, tracking_uri, Path(scratch))
        partial = out.with_name(f".{out.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        model = _load_merged(source, trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if not tokenizer.chat_template:
            raise ExportError(f"{ref}: the tokenizer has no chat template; chat serving needs one")
        generation = GenerationConfig.from_model_config(model.config)
        # every stop the trained model had (Llama-3: <|eot_id|> and <|end_of_text|>), EOS first
        eos, stops = tokenizer.eos_token_id, stop_token_ids(model)
        stops = [eos, *(stop for stop in stops if stop != eos)]
        generation.eos_token_id = stops if len(stops) > 1 else eos
        generation.pad_token_id = tokenizer.pad_token_id
        model.generation_config = generation
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        _text_only(partial)
        (partial / CARD_FILE).write_text(model_card(facts, ref))
        (partial / PROVENANCE_FILE).write_text(json.dumps(facts, indent=2, default=str))
        _shareable(partial)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
