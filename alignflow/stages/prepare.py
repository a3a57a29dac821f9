"""Stage 1: load, validate, clean and split the datasets through `alignflow.data`, and for
`model.source: tiny` build the base model (tokenizer + random init) locally."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from alignflow import demo, tracking
from alignflow.config import DatasetConfig, PipelineConfig
from alignflow.data.errors import DataError
from alignflow.data.prepare import prepare_datasets, report_dict
from alignflow.shape import DATA_ROLES, required_roles
from alignflow.stages import BASE_MODEL_DIR, DATA_REPORT, dataset_file
from alignflow.stages.upstream import base_model_in
from alignflow.store import write_json_atomic, write_jsonl

log = logging.getLogger(__name__)


def _write_demo_sources(cfg: PipelineConfig, raw: Path) -> dict[str, list[DatasetConfig]]:
    """Write the demo task's files, as a user would bring theirs, and the dataset list naming them."""
    task_cfg = cfg.data.demo
    seed, held = task_cfg.seed, task_cfg.heldout_product_fraction
    files = {
        "sft": demo.sft_rows(seed, task_cfg.sft_examples, task_cfg.unsafe_fraction, held),
        "preference_prompts": demo.prompt_rows(
            seed, task_cfg.preference_prompts, task_cfg.unsafe_fraction, held, 1
        ),
        "rl_prompts": demo.prompt_rows(
            seed, task_cfg.rl_prompts, task_cfg.unsafe_fraction, held, 2
        ),
        "heldout": (
            {**demo.prompt_row(prompt), demo.REFERENCE: demo.reference_answer(prompt)}
            for prompt in demo.heldout_prompts(
                seed,
                task_cfg.heldout_review_prompts,
                task_cfg.heldout_unsafe_prompts,
                held,
                task_cfg.heldout_products,
            )  # fmt: skip
        ),
    }
    raw.mkdir(parents=True, exist_ok=True)
    datasets = {}
    for role, rows in files.items():
        write_jsonl(raw / dataset_file(role), list(rows))
        keep = [] if role == "sft" else demo.KEEP_COLUMNS
        keep = [*keep, demo.REFERENCE] if role == "heldout" else keep
        datasets[role] = [DatasetConfig(path=str(raw / dataset_file(role)), keep_columns=keep)]
    return datasets


def _length_fn(cfg: PipelineConfig, work: Path) -> Callable[[str], int] | None:
    """Token counts by the base model's tokenizer, when data.clean.max_tokens asks for them."""
    if cfg.data.clean.max_tokens is None:
        return None
    from alignflow.models import load_tokenizer

    tokenizer = load_tokenizer(base_model_in(cfg, work), cfg.model.trust_remote_code)
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def _prepare_data(cfg: PipelineConfig, work: Path) -> dict[str, float]:
    data = cfg.data
    if data.source == "demo":
        datasets = _write_demo_sources(cfg, work / "raw")
    else:
        # only what this config's shape reads: an unused role neither stops a run nor costs time
        needed = required_roles(cfg)
        datasets = {role: getattr(data, role) for role in DATA_ROLES if role in needed}
    pair_split = (cfg.reward_model.eval_fraction, str(cfg.run.seed))  # as the collect stage splits
    reports = prepare_datasets(data, datasets, work, _length_fn(cfg, work), pair_split)
    _check_references(cfg, work / dataset_file("heldout"))
    metrics: dict[str, float] = {}
    warnings = []
    for report in reports.values():
        for line in report.lines():
            log.info("%s", line)
        for line in report.warnings():
            log.warning("%s", line)
            warnings.append(line)
        metrics |= report.metrics()
    write_json_atomic(work / DATA_REPORT, report_dict(reports))
    tracking.log_dict(report_dict(reports), DATA_REPORT)
    return metrics, warnings


def _check_references(cfg: PipelineConfig, heldout: Path) -> None:
    """A reference metric needs every held-out row's gold answer: fail here, before any training."""
    column = cfg.evaluate.reference_column()
    if column is not None:
        from alignflow.metrics import check_references
        from alignflow.store import read_jsonl

        check_references(read_jsonl(heldout), column, str(heldout))


def _build_tiny(cfg: PipelineConfig, work: Path) -> dict[str, int]:
    from alignflow.models import build_tiny_model, train_tokenizer

    texts = demo.corpus(cfg.data.demo.seed, cfg.data.demo.heldout_product_fraction)
    tokenizer = train_tokenizer(texts, cfg.model.tiny.vocab_size)
    model = build_tiny_model(cfg.model.tiny, tokenizer, cfg.run.seed)
    model.save_pretrained(work / BASE_MODEL_DIR)
    tokenizer.save_pretrained(work / BASE_MODEL_DIR)
    return {"vocab_size": len(tokenizer), "parameters": model.num_parameters()}


def _dequantize_gguf(cfg: PipelineConfig, work: Path) -> dict[str, int]:
    """model.gguf_file as a safetensors folder, checked like any pretrained model's template."""
    from alignflow.gguf import convert_gguf
    from alignflow.models import check_chat_template

    out = work / BASE_MODEL_DIR
    parameters = convert_gguf(str(cfg.model.name_or_path), str(cfg.model.gguf_file), out)
    if cfg.model.chat_template is None:
        check_chat_template(str(out), cfg.model.trust_remote_code)
    return {"parameters": parameters}


def run(cfg: PipelineConfig, work: Path) -> dict:
    """Check the model and rewards, build the tiny model or dequantize a GGUF, and write every
    data role this config reads into `work`; returns the stage's metrics."""
    from alignflow.models import check_base_model
    from alignflow.rl.rewards import check_rewards

    check_base_model(cfg.model)
    check_rewards(cfg)  # here too: a flow started from the Prefect UI skips the CLI
    metrics = _build_tiny(cfg, work) if cfg.model.source == "tiny" else {}
    if cfg.model.gguf_file:
        metrics = _dequantize_gguf(cfg, work)
    try:
        data_metrics, warnings = _prepare_data(cfg, work)
    except DataError:
        shutil.rmtree(work)  # nothing half-written: a data error leaves no stage output
        work.mkdir()
        raise
    metrics |= data_metrics
    tracking.log_metrics(metrics)
    return {**metrics, "warnings": warnings} if warnings else metrics
