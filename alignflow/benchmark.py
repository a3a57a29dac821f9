"""Benchmark accuracy of a policy held in memory, by lm-evaluation-harness (lm-eval): the
"accuracy" column of the held-out evaluation.

A task is one of lm-eval's own (mmlu, arc_easy, ...: read from the Hugging Face hub) or one a user
defines in a task YAML under `include_path` (read offline: `dataset_path: json` with `data_files`,
relative paths being read from the YAML's folder, as lm-eval reads `include:`). Each task yields
its main metric per document, so that the evaluation's bootstrap interval can be drawn over them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

INCLUDE_PATH_KEY = "evaluate.metrics benchmark include_path"
# A task's main metric: the first of these it reports, else its first numeric per-document one.
# acc_norm first: acc sums log-likelihoods over a choice's tokens, so it favours short choices.
# All three are lm-eval means over documents, so the mean of per_sample is lm-eval's own figure.
MAIN_METRICS = ("acc_norm", "acc", "exact_match")


@dataclass
class BenchmarkResult:
    metric: str  # the task's main metric (MAIN_METRICS)
    value: float  # mean of per_sample
    n: int  # documents scored
    per_sample: list[float]  # the metric per document, in lm-eval's document order


def run_benchmark(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    seed: int = 1234,
) -> dict[str, BenchmarkResult]:
    """Score an already-loaded causal LM (and its tokenizer) on lm-eval `tasks`, by task name;
    the model object itself is scored (lm-eval's HFLM wraps it, puts it in eval mode).

    A group (mmlu) or tag pools its tasks' documents: its value is then their size-weighted mean,
    as lm-eval reports mmlu. `limit` caps the documents of each task; `num_fewshot` None keeps
    each task's own (0 if it sets none), and a task that sets 0 keeps 0. `seed` draws the few-shot
    examples and any sampling in generation tasks; the caller's torch RNG is left as it was.
    """
    import torch
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    folder = include_folder(include_path)
    with _quiet_lm_eval():
        manager = _task_manager(tasks, folder)
        if folder is not None:
            _read_data_beside_yaml(manager, folder)
        # Built here (their data read) to know which tasks each requested name stands for.
        leaves = {name: manager.load(name)["tasks"] for name in tasks}
        all_tasks = {
            task_name: task for named in leaves.values() for task_name, task in named.items()
        }
        _set_fewshot(all_tasks.values(), num_fewshot, seed)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            # bootstrap_iters=0: lm-eval's stderr is skipped, our interval comes from per_sample.
            out = evaluate(lm=lm, task_dict={"tasks": all_tasks}, limit=limit, bootstrap_iters=0)
    return {name: _result(out, list(named)) for name, named in leaves.items()}


def _set_fewshot(tasks, num_fewshot: int | None, seed: int) -> None:
    """As lm-eval's simple_evaluate: `num_fewshot` overrides a task's own unless that is 0 (a
    task without few-shot examples), None keeps it (0 if unset); `seed` draws the examples."""
    for task in tasks:
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)


def include_folder(include_path: str | None) -> Path | None:
    """`include_path` as an absolute folder (None stays None); a ValueError naming the key when
    it is not a folder."""
    if include_path is None:
        return None
    folder = Path(include_path).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(
            f"{INCLUDE_PATH_KEY}: {include_path} is not a folder; set it to the folder holding "
            "your lm-eval task YAMLs"
        )
    return folder


def _task_manager(tasks: list[str], folder: Path | None):
    """lm-eval's task index: the folder's tasks, with lm-eval's own unless every name is a task
    of the folder (indexing lm-eval's ~15k YAMLs takes seconds)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    if folder is not None:
        local = TaskManager(include_path=str(folder), include_defaults=False)
        entries = [local.task_index.get(name) for name in tasks]
        if all(entry and entry.kind in (Kind.TASK, Kind.PY_TASK) for entry in entries):
            return local
    manager = TaskManager(include_path=str(folder) if folder else None)
    unknown = [name for name in tasks if name not in manager.task_index]
    if unknown:
        name = unknown[0]
        if folder is None:
            raise ValueError(
                f"unknown lm-eval task {name!r}: not one of lm-eval's own tasks, groups or tags; "
                f"for a task of your own, set {INCLUDE_PATH_KEY} to the folder of its YAML"
            )
        ours = sorted(n for n, e in manager.task_index.items() if _under(e.yaml_path, folder))
        raise ValueError(
            f"unknown lm-eval task {name!r}: neither lm-eval's own nor defined under "
            f"{INCLUDE_PATH_KEY} {folder}, whose YAMLs define {ours} (lm-eval skips a YAML it "
            "cannot read)"
        )
    return manager


def _under(path: Path | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder)


def _read_data_beside_yaml(manager, folder: Path) -> None:
    """Make the relative `data_files`/`data_dir` of the folder's tasks relative to their YAML
    (datasets would read them from the working directory), however a task is named: by itself,
    in a group or by a tag. The manager's index then holds their configs, read here."""
    from lm_eval.tasks._index import Entry, Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    for name, entry in list(manager.task_index.items()):
        if entry.kind is not Kind.TASK or not _under(entry.yaml_path, folder):
            continue
        config = load_yaml(entry.yaml_path)
        dataset_kwargs = config.get("dataset_kwargs") or {}
        for key in ("data_files", "data_dir"):
            if key in dataset_kwargs:
                dataset_kwargs[key] = _beside(dataset_kwargs[key], Path(entry.yaml_path).parent)
        manager.task_index[name] = Entry(name, Kind.TASK, None, cfg=config, tags=entry.tags)


def _beside(value, folder: Path):
    """`value` (a path, a list of them, or a split -> paths dict) with relative paths in `folder`."""
    if isinstance(value, dict):
        return {key: _beside(item, folder) for key, item in value.items()}
    if isinstance(value, list):
        return [_beside(item, folder) for item in value]
    if "://" in value or Path(value).is_absolute():
        return value
    return str(folder / value)


def _metric_filters(results: dict, sample: dict) -> dict[str, str]:
    """Metric -> its first filter, for one task's metrics with a number per document."""
    found: dict[str, str] = {}
    for key in results:
        metric, _, filter_name = key.partition(",")
        if filter_name and isinstance(sample.get(metric), int | float):
            found.setdefault(metric, filter_name)
    return found


def _result(out: dict, task_names: list[str]) -> BenchmarkResult:
    """The main metric of `task_names` (one task, or a group's) pooled over their documents."""
    filters = [
        _metric_filters(out["results"][task], out["samples"][task][0]) for task in task_names
    ]
    common = [metric for metric in filters[0] if all(metric in f for f in filters)]
    if not common:
        raise ValueError(f"lm-eval tasks {task_names} have no per-document metric in common")
    metric = next((m for m in MAIN_METRICS if m in common), common[0])
    per_sample = []
    for task, task_filters in zip(task_names, filters, strict=True):
        samples = [s for s in out["samples"][task] if s["filter"] == task_filters[metric]]
        per_sample += [float(s[metric]) for s in sorted(samples, key=lambda s: s["doc_id"])]
    return BenchmarkResult(metric, sum(per_sample) / len(per_sample), len(per_sample), per_sample)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every step at INFO and WARNING; keep its errors only."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
