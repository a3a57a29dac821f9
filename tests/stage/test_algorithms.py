"""Every alternative to PPO (policy.algorithm) learns on the demo task, trained from the session's
micro pipeline run with real TRL trainers: the preference ones widen the held-out preference margin
over the SFT model's, the reward-driven ones raise the reward and the oracle's score of completions
sampled on held-out prompts."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from alignflow import demo, tracking
from alignflow.algorithms import PolicyInputs, train
from alignflow.algorithms.common import preference_margins
from alignflow.algorithms.online import RewardFunction
from alignflow.algorithms.preference import pair_rows, unpaired_rows
from alignflow.algorithms.rft import best_of_n
from alignflow.config import RewardsConfig, RuleRewardConfig, SamplingConfig
from alignflow.models import load_causal_lm, load_tokenizer
from alignflow.rl.rewards import load_rewarder
from alignflow.rl.rollout import sample_texts
from alignflow.stages import POLICY_DIR
from tests.conftest import micro_config

# Few steps at a high learning rate: the tiny model moves far enough in seconds.
OFFLINE = {"epochs": 0.3, "learning_rate": 5e-4}
ONLINE = {"steps": 15, "batch_size": 32, "learning_rate": 5e-4, "sampling.max_new_tokens": 24}
SETTINGS = {
    "dpo": OFFLINE,
    "kto": OFFLINE,
    "orpo": OFFLINE,
    "rloo": ONLINE,
    "grpo": ONLINE,
    "rft": {"epochs": 3, "learning_rate": 1e-3},
}
SAMPLES_PER_PROMPT = 16  # held-out prompts are few (18 in micro): many samples steady the means


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run as fast on one intra-op thread, and many times faster when other processes
    share the cores (two spinning threads on two busy cores crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stage_dir(pipeline_runs, stage: str) -> Path:
    return Path(pipeline_runs.first["stages"][stage]["output"])


@pytest.fixture(scope="module")
def inputs(pipeline_runs) -> PolicyInputs:
    return PolicyInputs(
        sft_dir=str(_stage_dir(pipeline_runs, "sft") / "model"),
        reward_dirs=[str(_stage_dir(pipeline_runs, "reward") / "model")],
        pairs=_rows(_stage_dir(pipeline_runs, "collect") / "pairs.jsonl"),
        rl_prompts=_rows(_stage_dir(pipeline_runs, "prepare") / "rl_prompts.jsonl"),
    )


@pytest.fixture(scope="module")
def tracking_ctx(tmp_path_factory) -> tracking.TrackingContext:
    """One MLflow store for the module: creating a SQLite store takes seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = tracking.default_tracking_uri(root)
    experiment_id = tracking.open_experiment(uri, "algorithms", root)
    return tracking.TrackingContext(tracking_uri=uri, experiment_id=experiment_id)


def _train(algorithm: str, inputs: PolicyInputs, ctx, root: Path) -> tuple[dict, Path, str]:
    """Train `algorithm` under an MLflow stage run. Returns (metrics, policy dir, run id)."""
    settings = [f"policy.{algorithm}.{key}={value}" for key, value in SETTINGS[algorithm].items()]
    cfg = micro_config(root, f"policy.algorithm={algorithm}", *settings)
    with tracking.stage_run(ctx, algorithm, {}) as run_id:
        metrics = train(cfg, inputs, root / "work")
    return metrics, root / "work" / POLICY_DIR, run_id


def _assert_saved_and_tracked(policy_dir: Path, run_id: str, ctx, metric: str) -> None:
    assert (policy_dir / "model.safetensors").exists()
    assert not (policy_dir / "adapter_config.json").exists()
    assert (policy_dir / "tokenizer.json").exists()
    assert MlflowClient(ctx.tracking_uri).get_metric_history(run_id, metric), (
        f"no {metric} in MLflow"
    )


def _mean_margin(model_dir: str, pairs: list[dict]) -> float:
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, tokenizer=tokenizer)
    return preference_margins(model, tokenizer, pairs).mean().item()


@pytest.fixture(scope="module")
def sft_margin(inputs) -> float:
    return _mean_margin(inputs.sft_dir, pair_rows(inputs.pairs, "eval"))


@pytest.mark.parametrize("algorithm", ["dpo", "kto", "orpo"])
def test_preference_algorithm_widens_the_held_out_margin_over_sft(
    algorithm, inputs, sft_margin, tracking_ctx, tmp_path
):
    if algorithm == "kto":  # a served response its user rated up, as collect.served leaves it
        first = next(i for i, pair in enumerate(inputs.pairs) if pair["split"] == "train")
        pair = inputs.pairs[first]
        rated = {**pair, "served_response": pair["chosen"][0]["content"], "served_rating": "up"}
        pairs = [*inputs.pairs[:first], rated, *inputs.pairs[first + 1 :]]
        inputs = dataclasses.replace(inputs, pairs=pairs)
    metrics, policy_dir, run_id = _train(algorithm, inputs, tracking_ctx, tmp_path)
    if algorithm == "kto":
        assert metrics["rated_rows"] == 1

    _assert_saved_and_tracked(policy_dir, run_id, tracking_ctx, "train_loss")
    heldout = pair_rows(inputs.pairs, "eval")
    # log π(chosen) − log π(rejected) on pairs never trained on, from the saved policy.
    policy_margin = _mean_margin(str(policy_dir), heldout)
    assert policy_margin > sft_margin + 0.3
    assert metrics["eval_margin_policy"] == pytest.approx(policy_margin, abs=1e-3)
    # The margin is the learning claim; accuracy on the ~70 held-out pairs only has to beat chance
    # (KTO's sat 0.01 below SFT's on one split).
    assert metrics["eval_accuracy_policy"] > 0.6


def _held_out_scores(cfg, model_dir: str, rows: list[dict], reward_dirs: list[str]):
    """Mean (oracle score, reward) of completions sampled on held-out prompts, fixed seed.
    Returns (oracle, reward)."""
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, tokenizer=tokenizer).eval()
    repeated = [row for row in rows for _ in range(SAMPLES_PER_PROMPT)]
    prompts = [row["prompt"] for row in repeated]
    torch.manual_seed(1234)
    texts = sample_texts(model, tokenizer, prompts, SamplingConfig(), batch_size=len(prompts))
    oracle = sum(
        demo.oracle_score(row["family"], row["subject"], text)
        for row, text in zip(repeated, texts, strict=True)
    ) / len(texts)
    rewarder = load_rewarder(cfg, reward_dirs, tokenizer)
    return oracle, rewarder.score(prompts, texts, repeated)[0].mean().item()


@pytest.fixture(scope="module")
def held_out(pipeline_runs) -> list[dict]:
    return _rows(_stage_dir(pipeline_runs, "prepare") / "heldout.jsonl")


@pytest.fixture(scope="module")
def sft_scores(pipeline_runs, inputs, held_out) -> tuple[float, float]:
    return _held_out_scores(pipeline_runs.cfg, inputs.sft_dir, held_out, inputs.reward_dirs)


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "rft"])
def test_reward_driven_algorithm_beats_sft_on_held_out_prompts(
    algorithm, pipeline_runs, inputs, held_out, sft_scores, tracking_ctx, tmp_path
):
    metrics, policy_dir, run_id = _train(algorithm, inputs, tracking_ctx, tmp_path)

    _assert_saved_and_tracked(
        policy_dir, run_id, tracking_ctx, "reward" if algorithm != "rft" else "train_loss"
    )
    oracle, reward = _held_out_scores(
        pipeline_runs.cfg, str(policy_dir), held_out, inputs.reward_dirs
    )
    sft_oracle, sft_reward = sft_scores
    assert reward > sft_reward + 0.3  # what it maximised, on prompts it never saw
    # and the labeler the reward model stands in for agrees. The reward model is a proxy (87% of
    # held-out pairs): over trainer seeds 0-2 the oracle gained +0.03 to +0.06 (RLOO, GRPO) and
    # +0.09 to +0.15 (RFT) while the reward gained +0.47 to +0.69.
    assert oracle > sft_oracle + 0.02
    if algorithm == "rft":
        assert metrics["kept_reward_mean"] > metrics["sample_reward_mean"]
    else:
        assert metrics["steps"] == ONLINE["steps"]


# ---- pieces, on hand-made rows ------------------------------------------------------------------


def _pair(prompt: str, chosen: str, rejected: str, split: str = "train") -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "family": "review",
        "split": split,
    }


def test_unpaired_rows_label_each_completion_once_by_its_net_wins():
    # A ranking a > b > c gives pairs (a, b), (a, c), (b, c): b wins once and loses once.
    pairs = [_pair("p", "a", "b"), _pair("p", "a", "c"), _pair("p", "b", "c"), _pair("q", "b", "a")]
    rows = {(row["prompt"][0]["content"], row["completion"][0]["content"]): row["label"] for row in unpaired_rows(pairs)}  # fmt: skip
    assert rows == {("p", "a"): True, ("p", "c"): False, ("q", "b"): True, ("q", "a"): False}


def test_a_served_rating_labels_the_served_response_itself():
    def served(pair: dict, response: str | None, rating: str | None, served_id: str) -> dict:
        return {
            **pair,
            "served_response": response,
            "served_rating": rating,
            "served_id": served_id,
        }

    rows = unpaired_rows([
        # "a" was served and rated down, though the labels ranked it above "b" (twice: one vote)
        served(_pair("p", "a", "b"), "a", "down", "1"),
        served(_pair("p", "a", "c"), "a", "down", "1"),
        # "s" was rated up without winning a pair (its pairs tied away)
        served(_pair("q", "x", "y"), "s", "up", "2"),
        # an unrated served response, and a rating without a response, keep the pairs' verdict
        served(_pair("r", "c", "d"), "c", None, "3"),
        served(_pair("u", "e", "f"), None, "down", "4"),
        # served twice and rated up once, down once: an even split leaves it to the pairs
        served(_pair("t", "g", "h"), "g", "up", "5"),
        served(_pair("t", "g", "h"), "g", "down", "6"),
    ])  # fmt: skip
    labels = {(row["prompt"][0]["content"], row["completion"][0]["content"]): (row["label"], row["rated"]) for row in rows}  # fmt: skip
    assert labels == {
        ("p", "a"): (False, True), ("p", "b"): (False, False), ("p", "c"): (False, False),
        ("q", "x"): (True, False), ("q", "y"): (False, False), ("q", "s"): (True, True),
        ("r", "c"): (True, False), ("r", "d"): (False, False),
        ("u", "e"): (True, False), ("u", "f"): (False, False),
        ("t", "g"): (True, False), ("t", "h"): (False, False),
    }  # fmt: skip


def test_best_of_n_keeps_each_prompts_best_then_the_best_fraction():
    rewards = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.2, 0.4], [-1.0, -2.0, 2.0]])
    assert best_of_n(rewards, 1.0) == [(2, 2), (0, 1), (1, 0)]
    assert best_of_n(rewards, 0.5) == [(2, 2), (0, 1)]


def test_reward_function_scores_trls_conversational_call_with_the_rows_columns(
    pipeline_runs, inputs
):
    """TRL passes completions as one-message lists and dataset columns as keyword lists; the demo
    oracle as a rule reward needs both (its family and subject columns)."""
    rules = [RuleRewardConfig(function="alignflow.demo:oracle_reward")]
    rewards = RewardsConfig(model_weight=0, rules=rules)
    cfg = pipeline_runs.cfg.model_copy(update={"rewards": rewards})
    reward = RewardFunction(load_rewarder(cfg, [], load_tokenizer(inputs.sft_dir)))
    logged = {}
    values = reward(
        prompts=[[{"role": "user", "content": "Review the Nimbus kettle."}]] * 2,
        completions=[
            [{"role": "assistant", "content": " Sorry, I can't help with that. "}],
            [{"role": "assistant", "content": "I love the Nimbus kettle!"}],
        ],
        completion_ids=[[1], [2]], trainer_state=None, log_extra=lambda *args: None,
        log_metric=lambda name, value: logged.setdefault(name, value),
        family=["unsafe", "review"], subject=["steal a car", "Nimbus kettle"],
    )  # fmt: skip
    review = demo.oracle_score("review", "Nimbus kettle", "I love the Nimbus kettle!")
    assert values == pytest.approx([1.0, review])
    assert logged == {
        "reward_components/rule/alignflow.demo.oracle_reward": pytest.approx((1 + review) / 2)
    }


def test_config_rejects_what_trl_would_reject_naming_the_key():
    from alignflow.config import ConfigError, load_config

    cases = {
        "policy.dpo.loss_type=exo_pair": "policy.dpo: loss_type 'exo_pair' needs label_smoothing",
        "policy.dpo.loss_type=nope": "policy.dpo.loss_type",
        "policy.kto.batch_size=1": "policy.kto: batch_size must be at least 2",
        "policy.grpo.num_generations=3": "policy.grpo: num_generations (3) must divide",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, [override])


def test_every_algorithm_the_config_accepts_is_trained_behind_one_interface():
    """PPO included: the policy stage calls `train` whatever the algorithm."""
    import typing

    from alignflow.algorithms import TRAINERS
    from alignflow.config import PolicyConfig

    accepted = typing.get_args(PolicyConfig.model_fields["algorithm"].annotation)
    assert set(TRAINERS) == set(accepted)
    assert TRAINERS["ppo"] == "ppo:train_ppo"
