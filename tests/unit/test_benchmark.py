"""run_benchmark on a user's local lm-eval task (tests/data/benchmark), offline, with a tiny random
Llama held in memory: every document scored by the main metric, as computed by hand; and the
errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignflow.benchmark import BenchmarkResult, run_benchmark

TASKS = Path(__file__).resolve().parents[1] / "data" / "benchmark"
QUESTIONS = [json.loads(line) for line in (TASKS / "alignflow_mc_demo.jsonl").open()]


@pytest.fixture(scope="module")
def tiny():
    from alignflow.config import TinyModelConfig
    from alignflow.models import build_tiny_model, train_tokenizer

    texts = [f"Question: {q['question']}\nAnswer: {' '.join(q['choices'])}" for q in QUESTIONS]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    spec = TinyModelConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    return build_tiny_model(spec, tokenizer, seed=0).eval(), tokenizer


@pytest.fixture(scope="module")
def scored(tiny, tmp_path_factory):
    # From another working directory: the task's data_files are read beside its YAML.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("elsewhere"))
        return run_benchmark(*tiny, ["alignflow_mc_demo"], include_path=str(TASKS), batch_size=4)


def _acc_norm_by_hand(model, tokenizer, question: dict) -> float:
    """lm-eval's acc_norm: the choice of highest log-likelihood per character is the answer."""
    import torch

    context = f"Question: {question['question']}\nAnswer:"
    context_ids = tokenizer(context)["input_ids"]
    per_char = []
    for choice in question["choices"]:
        ids = tokenizer(f"{context} {choice}")["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        targets = range(len(context_ids), len(ids))
        per_char.append(sum(logprobs[t - 1, ids[t]].item() for t in targets) / len(choice))
    return float(per_char.index(max(per_char)) == question["answer"])


def test_a_local_task_scores_every_document_by_acc_norm_as_computed_by_hand(tiny, scored):
    result = scored["alignflow_mc_demo"]
    assert result.metric == "acc_norm"
    assert result.n == len(QUESTIONS) == 12
    assert result.per_sample == [_acc_norm_by_hand(*tiny, q) for q in QUESTIONS]
    assert set(result.per_sample) <= {0.0, 1.0}
    assert result.value == pytest.approx(sum(result.per_sample) / 12)
    assert 0.0 <= result.value <= 1.0


def test_limit_scores_the_first_documents_only(tiny, scored):
    result = run_benchmark(*tiny, ["alignflow_mc_demo"], include_path=str(TASKS), limit=5)
    assert result["alignflow_mc_demo"].n == 5
    assert result["alignflow_mc_demo"].per_sample == scored["alignflow_mc_demo"].per_sample[:5]


# slow (10 s: a group makes lm-eval index its own ~15k task YAMLs); runs under make test-all
@pytest.mark.slow
def test_a_group_pools_its_tasks_documents(tiny, scored, tmp_path):
    """A group of the folder's tasks (one of them read through `include:`), its data read beside
    the YAMLs as when named alone."""
    for name in ("alignflow_mc_demo.yaml", "alignflow_mc_demo.jsonl"):
        (tmp_path / name).write_text((TASKS / name).read_text())
    (tmp_path / "again.yaml").write_text(
        "include: alignflow_mc_demo.yaml\ntask: alignflow_mc_demo_again\n"
    )
    (tmp_path / "group.yaml").write_text(
        "group: alignflow_demo_group\ntask: [alignflow_mc_demo, alignflow_mc_demo_again]\n"
    )
    result = run_benchmark(*tiny, ["alignflow_demo_group"], include_path=str(tmp_path))
    alone = scored["alignflow_mc_demo"]
    assert result["alignflow_demo_group"] == BenchmarkResult(
        "acc_norm", alone.value, 24, alone.per_sample * 2
    )


# slow (7 s: naming the unknown task makes lm-eval index its own ~15k task YAMLs)
@pytest.mark.slow
def test_an_unknown_task_is_named_with_the_folder_searched(tiny):
    with pytest.raises(ValueError) as error:
        run_benchmark(*tiny, ["alignflow_mc_dmeo"], include_path=str(TASKS))
    message = str(error.value)
    assert "\n" not in message
    assert "unknown lm-eval task 'alignflow_mc_dmeo'" in message
    assert f"evaluate.metrics benchmark include_path {TASKS}" in message
    assert "['alignflow_mc_demo']" in message  # what the folder does define


def test_a_missing_include_path_folder_names_the_config_key(tiny, tmp_path):
    with pytest.raises(ValueError) as error:
        run_benchmark(*tiny, ["alignflow_mc_demo"], include_path=str(tmp_path / "absent"))
    assert str(error.value).startswith("evaluate.metrics benchmark include_path: ")
    assert "is not a folder" in str(error.value)
