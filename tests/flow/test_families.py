"""The family matrix (#19): a tiny random-init model of each family's real architecture class
(`Qwen3ForCausalLM`, `LlamaForCausalLM` for Llama-3.1 and SmolLM2, `Gemma3ForCausalLM`,
`DeepseekV3ForCausalLM`) with the family's real tokenizer and chat template, through the whole
pipeline as a user runs it (`model.source: pretrained` on a local folder, a real Prefect flow and
MLflow store): SFT -> collect -> reward -> PPO -> evaluate -> register, then DPO and GRPO on the same
cached stages, then export and serve. Each test checks one thing that breaks in practice on real
families: the reward read at the wrong token, generation that never stops, log-probs of tokens
that were not sampled, an export that renders another template."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from alignflow import real
from tests.conftest import micro_config

FAMILIES = os.environ.get("FAMILIES", " ".join(real.FAMILIES)).split()
# For make test's 20 minutes, only Qwen3's tiny pipeline (its thinking template, two stop tokens,
# a pad token of its own) runs in make test; the other families' run under `make test-all`, while
# make test keeps each one's tokenizer, template and SFT masks (tests/stage/test_real_models.py),
# Gemma-3's and SmolLM2's shared trunk (tests/stage/test_shared_trunk.py) and the real SmolLM2's
# LoRA PPO, DPO and fluency (tests/stage/test_real_models.py):
# - SmolLM2: a Llama with a ChatML template, both covered by the others;
# - Llama-3.1 (60 s): its architecture class is SmolLM2's, trained for real in make test;
# - DeepSeek-V3 (70 s): MLA and routed experts, a template ending replies at its EOS;
# - Gemma-3 (113 s: its 262k-token vocabulary).
SLOW_FAMILIES = {"smollm2", "llama3_1", "deepseek_v3", "gemma3"}
PARAMS = [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW_FAMILIES else name
    for name in FAMILIES
]

# The micro pipeline, smaller still: the families' vocabularies are 49k-262k tokens wide.
OVERRIDES = [
    "data.demo.sft_examples=16",
    "data.demo.preference_prompts=16",
    "data.demo.rl_prompts=8",
    "data.demo.heldout_review_prompts=2",
    "data.demo.heldout_unsafe_prompts=1",
    "data.min_examples=2",
    "sft.epochs=1",
    "sft.batch_size=4",
    "sft.max_length=256",
    "collect.samples_per_prompt=4",
    "collect.sampling.max_new_tokens=12",
    "reward_model.epochs=1",
    "reward_model.batch_size=4",
    "reward_model.max_length=256",
    "policy.ppo.updates=2",
    "policy.ppo.rollout_batch_size=4",
    "policy.ppo.minibatch_size=4",
    "policy.ppo.ppo_epochs=1",
    "policy.ppo.checkpoint_every=1",
    "policy.ppo.sampling.max_new_tokens=12",
    "evaluate.samples_per_prompt=1",
    # the random-init base never ends a reply: at the default 40 tokens, sampling base, SFT and
    # policy over a 150k vocabulary was most of the pipeline's time
    "evaluate.sampling.max_new_tokens=12",
]
ALGORITHM_OVERRIDES = {
    "ppo": [],
    "dpo": ["policy.algorithm=dpo", "policy.dpo.epochs=4", "policy.dpo.batch_size=2",
            "policy.dpo.warmup_ratio=0", "policy.dpo.max_length=256"],
    "grpo": ["policy.algorithm=grpo", "policy.grpo.steps=2", "policy.grpo.num_generations=2",
             "policy.grpo.batch_size=4", "policy.grpo.sampling.max_new_tokens=12"],
}  # fmt: skip


@dataclass
class Family:
    name: str
    model: Path  # the tiny model folder, as a user's own
    root: Path
    summary: dict = field(default_factory=dict)  # the PPO pipeline's
    policies: dict[str, Path] = field(default_factory=dict)  # algorithm -> policy folder
    seconds: dict[str, float] = field(default_factory=dict)

    def config(self, algorithm: str = "ppo"):
        return micro_config(
            self.root,
            "model.source=pretrained",
            f"model.name_or_path={self.model}",
            *OVERRIDES,
            *ALGORITHM_OVERRIDES[algorithm],
        )

    def stage(self, name: str):
        from alignflow.store import StageResult

        result = Path(self.summary["stages"][name]["output"]) / "result.json"
        return StageResult.model_validate_json(result.read_text())

    def stage_dir(self, name: str) -> Path:
        return Path(self.summary["stages"][name]["output"])


class _Matrix(dict):
    """Each family through the PPO pipeline (a Prefect flow), then DPO and GRPO as the policy
    stage on that run's prepare, SFT, collect and reward stages; built when a test first asks for
    it, so a family whose tests are deselected costs nothing."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root  # one MLflow store; each family's own cache keys

    def __missing__(self, name: str) -> Family:
        from alignflow.pipeline import tracking_context
        from alignflow.stages import POLICY_DIR
        from flows.rlhf import rlhf
        from tasks.policy import run_policy

        started = time.monotonic()
        family = Family(name, real.tiny_family_model(name, self.root / f"{name}-model"), self.root)
        family.summary = rlhf(config=family.config())
        family.seconds["ppo"] = time.monotonic() - started
        upstream = [family.stage(stage) for stage in ("prepare", "sft", "collect", "reward")]
        for algorithm in ("dpo", "grpo"):
            started = time.monotonic()
            cfg = family.config(algorithm)
            result = run_policy(cfg, tracking_context(cfg, tags={}), *upstream)
            family.policies[algorithm] = result.path(POLICY_DIR)
            family.seconds[algorithm] = time.monotonic() - started
        self[name] = family
        return family


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        built = _Matrix(tmp_path_factory.mktemp("families"))
        yield built
    for family in built.values():  # the seconds each family adds: pytest -s prints them
        print(
            f"family {family.name}: {json.dumps({k: round(v) for k, v in family.seconds.items()})}"
        )


@pytest.mark.parametrize("family", PARAMS)
def test_every_stage_runs_for_the_family(matrix, family):
    runs = matrix[family]
    assert {
        name: stage["status"] for name, stage in runs.summary["stages"].items()
    } == dict.fromkeys(
        ["prepare", "sft", "collect", "reward", "policy", "evaluate", "register"], "completed"
    )
    assert runs.summary["eval"]["algorithm"] == "ppo" and "registered" in runs.summary
    # SFT learned the replies: their loss under the SFT model is below the user's model's
    assert replies_loss(runs, runs.stage_dir("sft") / "model") < replies_loss(runs, runs.model)


def replies_loss(runs: Family, folder) -> float:
    """Mean loss on the assistant tokens of the SFT rows, as SFT masks them."""
    import torch

    from alignflow.models import load_causal_lm, load_tokenizer, tokenize_conversations
    from alignflow.store import read_jsonl

    tokenizer = load_tokenizer(str(runs.stage_dir("sft") / "model"))
    model = load_causal_lm(str(folder)).eval()
    rows = read_jsonl(runs.stage_dir("prepare") / "sft.jsonl")[:8]
    dataset, _ = tokenize_conversations(tokenizer, rows)
    losses = []
    for row in dataset:
        ids = torch.tensor([row["input_ids"]])
        labels = ids.masked_fill(torch.tensor([row["assistant_masks"]]) == 0, -100)
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


@pytest.mark.parametrize("family", PARAMS)
def test_the_reward_is_read_at_the_end_of_turn_token_in_training_ppo_and_evaluation(matrix, family):
    """One scorer: the ids the reward model trains on are the ids the evaluation and PPO score, and
    the score TRL's RewardTrainer optimises (transformers' pooling at the last non-pad token) is
    the one read at the reply's end-of-turn token."""
    import torch

    from alignflow.judges import reward_model_scores
    from alignflow.models import load_scalar_head_model, load_tokenizer
    from alignflow.rl.rollout import encode_completions
    from alignflow.stages import member_dir
    from alignflow.stages.reward import preference_ids
    from alignflow.store import read_jsonl

    runs = matrix[family]
    folder = str(runs.stage_dir("reward") / member_dir(0))
    tokenizer = load_tokenizer(folder)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    model = load_scalar_head_model(folder, pad_token_id=tokenizer.pad_token_id).eval()
    pairs = read_jsonl(runs.stage_dir("collect") / "pairs.jsonl")[:6]
    trained = preference_ids(tokenizer, pairs)
    prompts = [pair["prompt"] for pair in pairs]
    replies = [pair["chosen"][-1]["content"] for pair in pairs]
    sequence, attention, q, mask = encode_completions(tokenizer, prompts, replies)
    for row, ids in enumerate(trained):
        scored = sequence[row][attention[row].bool()].tolist()
        assert scored == ids["chosen_ids"]  # the same tokens, prompt and reply
        assert ids["chosen_ids"][-1] == tokenizer.eos_token_id  # ... ending at the end of turn
    # the training view: right-padded ids, transformers' own pooling
    width = max(len(ids["chosen_ids"]) for ids in trained)
    padded = torch.tensor([
        ids["chosen_ids"] + [tokenizer.pad_token_id] * (width - len(ids["chosen_ids"]))
        for ids in trained
    ])  # fmt: skip
    lengths = torch.tensor([len(ids["chosen_ids"]) for ids in trained])
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        as_trained = model(input_ids=padded, attention_mask=attention_mask).logits[:, 0]
    as_evaluated = torch.tensor(reward_model_scores(model, tokenizer, prompts, replies))
    torch.testing.assert_close(as_trained, as_evaluated, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", PARAMS)
def test_rollouts_stop_at_any_of_the_familys_stop_tokens_and_pad_after(matrix, family):
    """A batch where one reply ends at once with the family's last stop token (forced by the
    generation config's own `sequence_bias`, keyed on that row's prompt) while the other runs on:
    the rollout's response mask ends each reply at its stop, the rest is padding."""
    import torch

    from alignflow.config import SamplingConfig
    from alignflow.models import load_causal_lm, load_tokenizer
    from alignflow.rl.rollout import prompt_ids, sample_with_logprobs, stop_token_ids

    runs = matrix[family]
    folder = str(runs.stage_dir("sft") / "model")
    tokenizer = load_tokenizer(folder, padding_side="left")
    model = load_causal_lm(folder, tokenizer=tokenizer).eval()
    stops = stop_token_ids(model)
    assert stops[0] == tokenizer.eos_token_id != tokenizer.pad_token_id
    last = stops[-1]  # Llama-3.1: <|end_of_text|>, Qwen3: <|endoftext|>, Gemma-3: <eos>
    prompts = [[{"role": "user", "content": "Stop now"}], [{"role": "user", "content": "Go on"}]]
    model.generation_config.sequence_bias = [[prompt_ids(tokenizer, prompts[0]) + [last], 1e4]]
    torch.manual_seed(0)
    sampled = sample_with_logprobs(
        model, model, tokenizer, prompts, SamplingConfig(max_new_tokens=8)
    )
    assert sampled.response.shape[1] > 1 and sampled.mask[1].sum() > 1  # the other row ran on
    assert sampled.response[0, 0] == last and sampled.mask[0].tolist()[:2] == [1, 0]
    assert (sampled.response[0, 1:] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize("family", PARAMS)
def test_log_probs_are_taken_on_exactly_the_sampled_tokens(matrix, family):
    """The rollout's log-probs are the sampling distribution's entries at the sampled ids (no
    decode -> encode round trip), checked against a plain forward pass of the same model."""
    import torch

    from alignflow.config import SamplingConfig
    from alignflow.models import load_causal_lm, load_tokenizer
    from alignflow.rl.rollout import position_ids, sample_with_logprobs

    runs = matrix[family]
    folder = str(runs.stage_dir("sft") / "model")
    tokenizer = load_tokenizer(folder, padding_side="left")
    model = load_causal_lm(folder, tokenizer=tokenizer).eval()
    prompts = [[{"role": "user", "content": "Review the Nimbus kettle."}],
               [{"role": "user", "content": "Hi"}]]  # fmt: skip
    torch.manual_seed(0)
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.7)
    sampled = sample_with_logprobs(model, model, tokenizer, prompts, sampling)
    q = sampled.query_len
    assert torch.equal(sampled.sequence[:, q:], sampled.response)
    with torch.no_grad():
        logits = model(
            input_ids=sampled.sequence,
            attention_mask=sampled.attention_mask,
            position_ids=position_ids(sampled.attention_mask),
        ).logits
    expected = (logits[:, q - 1 : -1] / 0.7).log_softmax(-1)
    expected = expected.gather(-1, sampled.response.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(sampled.logprobs * sampled.mask, expected * sampled.mask)
    torch.testing.assert_close(sampled.logprobs, sampled.ref_logprobs)  # same model: KL 0


@pytest.mark.parametrize("family", PARAMS)
def test_dpo_and_grpo_train_the_family(matrix, family):
    """DPO widens its pairs' margins over the SFT model's; GRPO's policy moved off the SFT model
    and stayed finite. (Their learning on a task is tested on the tiny model, tests/stage.)"""
    import torch

    from alignflow.algorithms.common import preference_margins
    from alignflow.models import load_causal_lm, load_tokenizer
    from alignflow.store import read_jsonl

    runs = matrix[family]
    sft = runs.stage_dir("sft") / "model"
    tokenizer = load_tokenizer(str(sft))
    pairs = read_jsonl(runs.stage_dir("collect") / "pairs.jsonl")

    def margins(folder: Path) -> float:
        model = load_causal_lm(str(folder), tokenizer=tokenizer).eval()
        return preference_margins(model, tokenizer, pairs).mean().item()

    assert margins(runs.policies["dpo"]) > margins(sft)
    grpo = load_causal_lm(str(runs.policies["grpo"])).state_dict()
    start = load_causal_lm(str(sft)).state_dict()
    assert all(torch.isfinite(tensor).all() for tensor in grpo.values())
    assert any(not torch.equal(grpo[name], start[name]) for name in start)


@contextlib.contextmanager
def serving(folder: Path, name: str, log_path: Path):
    """`alignflow serve FOLDER --model-name NAME` (transformers engine) on a free 127.0.0.1 port:
    an openai client, the server stopped on exit."""
    from openai import OpenAI

    from alignflow.launch import free_port
    from tests.conftest import REPO

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "alignflow.app.cli", "serve", str(folder), "--port", str(port),
               "--engine", "transformers", "--model-name", name]  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                assert process.poll() is None, log_path.read_text()[-2000:]
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health", timeout=2).is_success:
                        break
                time.sleep(0.5)
            yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        finally:
            process.terminate()
            process.wait(timeout=60)
    # SIGTERM stopped the engine it started too: no `transformers serve` left behind
    deadline = time.monotonic() + 30
    while _engines(folder) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _engines(folder)


def _engines(folder: Path) -> list[int]:
    """Processes serving `folder` (their command line names it), from /proc."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().split(b"\0")
            if b"serve" in words and str(folder).encode() in words:
                pids.append(int(cmdline.parent.name))
    return pids


CONVERSATION = [
    {"role": "system", "content": "You review kitchen products."},
    {"role": "user", "content": "Review the Nimbus X2 kettle."},
]


# One family's export in make test (qwen3); the others' under make test-all, for the CI budget
# (together ~70 s: an export, a plain-transformers load and a served engine each).
# export and serve of every family under make test-all (Qwen3's: 21 s); make test exports and
# serves the micro model (tests/flow/test_export.py, tests/flow/test_serve.py)
EXPORT_PARAMS = [pytest.param(name, marks=pytest.mark.slow) for name in FAMILIES]


@pytest.mark.parametrize("family", EXPORT_PARAMS)
def test_the_export_loads_in_plain_transformers_and_serves_in_the_familys_format(
    matrix, family, tmp_path
):
    """`alignflow export` of the run: plain transformers loads it, its template renders the
    conversation as the family's own does, generation stops at the family's stops; `alignflow
    serve` answers the official openai client with what plain transformers generates greedily
    from that rendering."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from typer.testing import CliRunner

    from alignflow.app.cli import app

    runs = matrix[family]
    out = tmp_path / f"{family}-export"
    done = CliRunner().invoke(app, ["export", runs.summary["run_dir"], str(out)])
    assert done.exit_code == 0, done.output
    tokenizer = AutoTokenizer.from_pretrained(out)
    shipped = AutoTokenizer.from_pretrained(runs.model)
    rendered = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )
    assert rendered == shipped.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    stops = GenerationConfig.from_pretrained(runs.model).eos_token_id  # as the family ships them
    assert model.generation_config.eos_token_id == (stops if len(stops) > 1 else stops[0])
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        greedy = model.generate(**ids, max_new_tokens=8, do_sample=False)
    expected = tokenizer.decode(greedy[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    with serving(out, family, tmp_path / "serve.log") as client:
        reply = client.chat.completions.create(
            model=family, messages=CONVERSATION, max_tokens=8, temperature=0
        )
    # the server splits a reasoning family's <think> text out of the content (Qwen3, DeepSeek)
    served = (reply.choices[0].message.model_extra or {}).get("reasoning_content") or ""
    served += reply.choices[0].message.content or ""
    assert re.sub(r"</?think>|\s", "", served) == re.sub(r"</?think>|\s", "", expected)
