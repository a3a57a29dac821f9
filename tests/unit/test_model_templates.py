"""Which chat template a model trains with: a pretrained model's own, or the built-in named by
model.chat_template (its tokens added, embeddings grown, EOS at the end of a turn); and the tiny
model's own template, which writes function calls as ChatML does."""

from __future__ import annotations

from typing import get_args

import pytest

from alignflow.config import ConfigError, ModelConfig, TinyModelConfig, load_config
from alignflow.data.templates import TEMPLATES
from alignflow.models import (
    CHAT_TEMPLATE,
    build_tiny_model,
    check_base_model,
    load_causal_lm,
    load_tokenizer,
    train_tokenizer,
)

TEXTS = ["Hello there, how are you?", "I am fine, thanks. What is the weather?", "It is sunny."] * 4
SPEC = TinyModelConfig(
    hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=128
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def save_model(directory, own_template: bool) -> str:
    """A tiny Llama and its tokenizer saved as a pretrained model folder."""
    tokenizer = train_tokenizer(TEXTS, 300)
    if not own_template:
        tokenizer.chat_template = None
    build_tiny_model(SPEC, tokenizer, seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def pretrained(path: str, chat_template: str | None = None) -> ModelConfig:
    return ModelConfig(source="pretrained", name_or_path=path, chat_template=chat_template)


def test_model_without_a_template_fails_the_check_naming_the_option(tmp_path):
    path = save_model(tmp_path, own_template=False)
    with pytest.raises(ValueError) as error:
        check_base_model(pretrained(path))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("model.chat_template:")
    assert all(name in message for name in TEMPLATES)


def test_named_built_in_loads_renders_and_grows_the_embeddings(tmp_path):
    path = save_model(tmp_path, own_template=False)
    check_base_model(pretrained(path, "chatml"))
    saved_size = len(load_tokenizer(path))
    tokenizer = load_tokenizer(path, chat_template="chatml")
    model = load_causal_lm(path, tokenizer=tokenizer)

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert len(tokenizer) == saved_size + 2  # <|im_start|> and <|im_end|>
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    # Generation stops where a reply ends; padding is not that token.
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"
    assert model.generation_config.eos_token_id[0] == tokenizer.eos_token_id
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == len(tokenizer)


def test_saved_model_with_its_own_template_keeps_it(tmp_path):
    path = save_model(tmp_path, own_template=True)
    check_base_model(pretrained(path))
    tokenizer = load_tokenizer(path)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    model = load_causal_lm(path, tokenizer=tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id  # untouched


def test_named_built_in_replaces_the_models_own(tmp_path):
    path = save_model(tmp_path, own_template=True)
    tokenizer = load_tokenizer(path, chat_template="llama3")
    assert tokenizer.chat_template == TEMPLATES["llama3"]
    assert tokenizer.eos_token == "<|eot_id|>"


def test_tiny_model_rejects_a_named_template():
    with pytest.raises(ValueError, match="model.chat_template is for model.source 'pretrained'"):
        check_base_model(ModelConfig(chat_template="chatml"))


def test_config_choices_are_the_built_in_templates():
    choices = get_args(ModelConfig.model_fields["chat_template"].annotation)[0]
    assert get_args(choices) == tuple(TEMPLATES)


def test_unknown_template_name_is_rejected_at_config_load():
    overrides = ["model.source=pretrained", "model.name_or_path=x", "model.chat_template=vicuna"]
    with pytest.raises(ConfigError, match="model.chat_template"):
        load_config(None, overrides)


# ---- the tiny model's own template --------------------------------------------------------------

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temp": 22}'},
    {"role": "assistant", "content": "It is 22 C."},
]


def masked_text(tokenizer, messages, **kwargs) -> str:
    output = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs
    )
    ids, mask = output["input_ids"], output["assistant_masks"]
    return tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])


def test_tiny_template_writes_function_calls_as_chatml_does():
    tokenizer = train_tokenizer(TEXTS, 300)
    assert tokenizer.apply_chat_template(TOOL_CONVERSATION, tokenize=False) == (
        "<|user|>\nWeather in Paris?\n"
        '<|assistant|>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call></s>"
        '<|tool|>\n{"temp": 22}\n'
        "<|assistant|>\nIt is 22 C.</s>"
    )
    assert masked_text(tokenizer, TOOL_CONVERSATION) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call></s>'
        "It is 22 C.</s>"
    )


def test_tiny_template_lists_tools_in_a_system_turn():
    tools = [{"name": "get_weather", "parameters": {"type": "object"}}]
    messages = [{"role": "system", "content": "Be brief."}, *TOOL_CONVERSATION]
    text = train_tokenizer(TEXTS, 300).apply_chat_template(messages, tools=tools, tokenize=False)
    assert text.startswith("<|system|>\nBe brief.\n\n# Tools\n\n")
    assert '<tools>\n{"name": "get_weather", "parameters": {"type": "object"}}\n</tools>' in text
    assert text.count("Be brief.") == 1


def test_tiny_template_leaves_zero_weight_turns_untrained():
    tokenizer = train_tokenizer(TEXTS, 300)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there", "loss_weight": 0.0},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "It is sunny"},
    ]
    assert masked_text(tokenizer, messages) == "It is sunny</s>"


def test_trl_sees_the_tiny_templates_stop_token_trained():
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    assert is_chat_template_stop_token_trained(train_tokenizer(TEXTS, 300))


def _save_with_template(directory, template: str) -> str:
    path = save_model(directory, own_template=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(path)
    return path


def test_a_known_family_template_without_markers_is_patched_by_trl(tmp_path):
    from importlib.resources import files

    stock = (files("trl") / "chat_templates" / "qwen2_5.jinja").read_text()
    assert "{% generation %}" not in stock and "{%- generation %}" not in stock
    path = _save_with_template(tmp_path, stock)
    check_base_model(pretrained(path))
    tokenizer = load_tokenizer(path)
    assert "{% generation %}" in tokenizer.chat_template or "{%- generation %}" in (
        tokenizer.chat_template
    )
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [
        t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m
    ]
    assert "sunny" in tokenizer.decode(trained) and "Hello" not in tokenizer.decode(trained)


def test_an_unknown_template_without_markers_fails_before_any_work(tmp_path):
    # no markers, and no end-of-turn token after a reply: nothing says where a reply ends
    path = _save_with_template(tmp_path, "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(
        ValueError,
        match=r"has no \{% generation %\} markers and its replies cannot be located .* no "
        r"end-of-turn token",
    ):
        check_base_model(pretrained(path))
