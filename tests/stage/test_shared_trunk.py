"""PPO's shared trunk (alignflow.rl.trunk): with LoRA on the top layers only, policy, reference,
critic and reward model share the frozen layers below; they run once per rollout batch and every
later pass starts above them, with the same log-probs, values, gradients and training."""

from __future__ import annotations

import pytest
import torch

from alignflow import real
from alignflow.config import LoraConfig, PPOConfig, SamplingConfig
from alignflow.models import load_scalar_head_model, load_tokenizer
from alignflow.rl.lora import lora_policy, lora_value_model
from alignflow.rl.rollout import (
    encode_completions,
    encode_prompts,
    response_logprobs,
    sample_with_logprobs,
    token_scores,
)
from alignflow.rl.trainer import PPOTrainer
from alignflow.rl.trunk import layer_stack, recording, shared_depth, starting_at

PROMPTS = [[{"role": "user", "content": q}] for q in ("Review the Nimbus.", "Say hello.")]
REPLIES = ["The Nimbus is great, I love it.", "Hello!"]


def _cfg(**settings) -> PPOConfig:
    return PPOConfig(**{
        "updates": 2, "rollout_batch_size": 4, "minibatch_size": 2, "ppo_epochs": 2,
        "learning_rate": 1e-3, "checkpoint_every": 5,
        "lora": LoraConfig(r=4, alpha=8, top_layers=2),
        "sampling": SamplingConfig(max_new_tokens=8, temperature=1.0), **settings,
    })  # fmt: skip


def _models(folder, cfg: PPOConfig):
    torch.manual_seed(0)  # the critic's and reward model's score heads are new: one init per call
    tokenizer = load_tokenizer(str(folder))
    policy, reference = lora_policy(str(folder), cfg, False, "cpu")
    pad = tokenizer.pad_token_id
    critic = lora_value_model(str(folder), cfg, False, pad, "cpu")
    reward_model = load_scalar_head_model(str(folder), pad_token_id=pad).eval()
    reward_model.requires_grad_(False)  # as the Rewarder holds it
    return tokenizer, policy, reference, critic, reward_model


@pytest.mark.parametrize("family", ["smollm2", "qwen3", "gemma3"])
def test_passes_from_the_shared_trunk_equal_whole_passes(tmp_path, family):
    # qwen3 and gemma3 pick each layer's attention mask by its index (config.layer_types)
    folder = real.tiny_family_model(family, tmp_path / "tiny", layers=4)
    tokenizer, policy, reference, critic, reward_model = _models(folder, _cfg())
    assert shared_depth([policy, reference, critic, reward_model]) == 2
    sequence, attention, q, _ = encode_completions(tokenizer, PROMPTS, REPLIES)

    with recording(policy, 2) as recorded:
        whole, _ = response_logprobs(policy, sequence, attention, q, 1.0)
    (trunk,) = recorded
    assert trunk.hidden.shape[:2] == sequence.shape and not trunk.hidden.requires_grad
    for model in (policy, reference):
        want, _ = response_logprobs(model, sequence, attention, q, 1.0)
        got, _ = response_logprobs(model, sequence, attention, q, 1.0, trunk=trunk)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for model in (critic, reward_model):
        torch.testing.assert_close(
            token_scores(model, sequence, attention, trunk),
            token_scores(model, sequence, attention),
            rtol=1e-5, atol=1e-5,
        )  # fmt: skip
    # the rows of a minibatch: the trunk's rows go with them
    rows = torch.tensor([1])
    got, _ = response_logprobs(policy, sequence[rows], attention[rows], q, 1.0, trunk=trunk[rows])
    torch.testing.assert_close(got, whole[rows], rtol=1e-5, atol=1e-5)

    # the same gradients reach the adapters, and the bottom layers are not run at all
    def adapter_grads(trunk_states):
        policy.zero_grad()
        logprobs, _ = response_logprobs(policy, sequence, attention, q, 1.0, trunk=trunk_states)
        logprobs.sum().backward()
        return [p.grad.clone() for p in policy.parameters() if p.requires_grad]

    calls = []
    hook = layer_stack(policy)[0].register_forward_hook(lambda *args: calls.append(1))
    from_trunk = adapter_grads(trunk)
    assert calls == []
    whole_grads = adapter_grads(None)
    assert len(calls) == 1
    hook.remove()
    torch.testing.assert_close(from_trunk, whole_grads, rtol=1e-4, atol=1e-6)
    with starting_at(policy, trunk):  # the layers come back afterwards
        pass
    assert all(type(layer).__name__.endswith("DecoderLayer") for layer in layer_stack(policy))


@pytest.mark.parametrize("family", ["smollm2", "gemma3"])
def test_sampling_records_the_trunk_so_no_pass_over_the_bottom_layers_follows(tmp_path, family):
    folder = real.tiny_family_model(family, tmp_path / "tiny", layers=4)
    tokenizer, policy, reference, _, _ = _models(folder, _cfg())
    prompts = [*PROMPTS, [{"role": "user", "content": "Write a long story about a cat."}]]
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0)
    runs = []
    calls = []
    hook = layer_stack(policy)[0].register_forward_hook(lambda *args: calls.append(1))
    for depth in (2, 0):
        torch.manual_seed(7)
        runs.append(
            sample_with_logprobs(policy, reference, tokenizer, prompts, sampling, trunk_depth=depth)
        )
        if depth:  # generate's passes (prompt, then a token each), one for the last token; no more
            assert len(calls) == runs[0].response.shape[1] + 1
    hook.remove()
    shared, whole = runs
    assert torch.equal(shared.sequence, whole.sequence)  # the same tokens sampled
    assert shared.trunk.hidden.shape[:2] == shared.sequence.shape
    for got, want in ((shared.logprobs, whole.logprobs), (shared.ref_logprobs, whole.ref_logprobs)):
        torch.testing.assert_close(got * shared.mask, want * whole.mask, rtol=1e-4, atol=1e-4)
    # the states generate recorded are those of one pass over the whole sequence, up to each EOS
    with recording(policy, 2) as recorded:
        response_logprobs(policy, whole.sequence, whole.attention_mask, whole.query_len, 1.0)
    query, query_mask = encode_prompts(tokenizer, prompts)
    used = torch.cat([query_mask, shared.mask], dim=1).bool()
    torch.testing.assert_close(
        shared.trunk.hidden[used], recorded[0].hidden[used], rtol=1e-4, atol=1e-4
    )


def test_the_trunk_is_as_deep_as_the_layers_every_model_holds_frozen_and_equal(tmp_path):
    folder = real.tiny_family_model("smollm2", tmp_path / "tiny", layers=4)
    tokenizer, policy, reference, critic, reward_model = _models(folder, _cfg())
    with torch.no_grad():
        layer_stack(reward_model)[1].mlp.up_proj.weight[0, 0] += 1e-3
    assert shared_depth([policy, critic, reward_model]) == 1  # layer 1 differs
    with torch.no_grad():
        reward_model.get_input_embeddings().weight[5, 0] += 1e-3
    assert shared_depth([policy, critic, reward_model]) == 0  # the inputs differ
    # equal weights, another setting: the probe of a few tokens through both paths finds it
    _, policy, reference, critic, _ = _models(folder, _cfg())
    assert shared_depth([policy, reference, critic]) == 2
    critic.get_input_embeddings().weight.requires_grad_(True)  # any model training its inputs
    assert shared_depth([policy, reference, critic]) == 0
    critic.get_input_embeddings().weight.requires_grad_(False)
    layer_stack(critic)[0].input_layernorm.variance_epsilon = 0.5
    assert shared_depth([policy, reference, critic]) == 0
    # LoRA on every layer: nothing below is frozen
    everywhere = _cfg(lora=LoraConfig(r=4, alpha=8))
    _, policy, reference, critic, _ = _models(folder, everywhere)
    assert shared_depth([policy, reference, critic]) == 0


def _trainer(folder, out, other_reward_model: bool = False, **settings) -> PPOTrainer:
    cfg = _cfg(**settings)
    tokenizer, policy, reference, critic, reward_model = _models(folder, cfg)
    if other_reward_model:  # its bottom layers are not the policy's
        with torch.no_grad():
            layer_stack(reward_model)[0].mlp.up_proj.weight.mul_(1.5)
    prompts = [[{"role": "user", "content": f"Review product {i}."}] for i in range(4)]
    return PPOTrainer(
        cfg, policy, reference, reward_model, critic, tokenizer, prompts, seed=0, output_dir=out
    )


def test_ppo_trains_the_same_from_the_shared_trunk_and_runs_the_bottom_layers_once(tmp_path):
    folder = real.tiny_family_model("smollm2", tmp_path / "tiny", layers=4)
    shared = _trainer(folder, tmp_path / "shared")
    whole = _trainer(folder, tmp_path / "whole", shared_trunk=False)
    assert (shared.trunk_depth, whole.trunk_depth) == (2, 0)

    batch, _ = shared.rollout(shared._prompt_batch(0), 0)
    calls = []
    for model in (shared.policy, shared.value_model):
        layer_stack(model)[1].register_forward_hook(lambda *args: calls.append(1))
    shared.optimise(batch, 0)  # 2 epochs x 2 minibatches, policy and critic
    assert batch.trunk is not None and calls == []

    shared = _trainer(folder, tmp_path / "shared-again")
    history = shared.train()
    want = whole.train()
    assert len(history) == len(want) == 2
    for got, expected in zip(history, want, strict=True):
        for key in ("reward", "kl", "policy_loss", "value_loss", "approx_kl", "entropy"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def test_a_reward_model_that_shares_no_trunk_runs_whole_beside_the_others(tmp_path):
    folder = real.tiny_family_model("smollm2", tmp_path / "tiny", layers=4)
    shared = _trainer(folder, tmp_path / "shared", other_reward_model=True)
    whole = _trainer(folder, tmp_path / "whole", other_reward_model=True, shared_trunk=False)
    assert (shared.trunk_depth, shared.rewards_share_trunk) == (2, False)
    got, want = shared.step(), whole.step()
    for key in ("reward", "kl", "policy_loss", "value_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
