"""Built-in chat templates render each family's real format and mask exactly what the model says."""

from __future__ import annotations

import pytest

from alignflow.data.templates import (
    TEMPLATES,
    apply_template,
    has_generation_markers,
    resolve_chat_template,
    special_tokens,
)
from alignflow.models import CHAT_TEMPLATE, train_tokenizer

TEXTS = ["Hello there, how are you?", "I am fine, thanks. What is the weather?", "It is sunny."] * 4

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "It is sunny"},
]

# Written by hand from each family's published format.
EXPECTED = {
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello there<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\nIt is sunny<|im_end|>\n"
    ),
    "llama3": (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello there<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nIt is sunny<|eot_id|>"
    ),
    "chatglm": (
        "[gMASK]sop<|system|>\n Be brief.<|user|>\n Hi<|assistant|>\n Hello there"
        "<|user|>\n Weather?<|assistant|>\n It is sunny</s>"
    ),
}

# What assistant-only loss trains on: each reply and the token that ends it. ChatGLM3 has no
# end-of-turn token: its model generates "\n " after <|assistant|> and stops on the next role token.
EXPECTED_MASKED = {
    "chatml": "Hello there<|im_end|>It is sunny<|im_end|>",
    "llama3": "Hello there<|eot_id|>It is sunny<|eot_id|>",
    "chatglm": "\n Hello there<|user|>\n It is sunny</s>",
}

GENERATION_PROMPT = {
    "chatml": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatglm": "<|user|>\n Hi<|assistant|>",
}

TOOL_TURN = {
    "chatml": "<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n",
    "llama3": "<|start_header_id|>ipython<|end_header_id|>\n\n42<|eot_id|>",
    "chatglm": "<|observation|>\n 42",
}


def templated(name: str):
    """A fresh tokenizer per test: apply_template mutates it."""
    tokenizer = train_tokenizer(TEXTS, 400)
    apply_template(tokenizer, name)
    return tokenizer


@pytest.mark.parametrize("name", TEMPLATES)
def test_two_turn_conversation_renders_the_family_format(name):
    tokenizer = templated(name)
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == EXPECTED[name]


@pytest.mark.parametrize("name", TEMPLATES)
def test_generation_prompt_ends_with_the_assistant_header(name):
    tokenizer = templated(name)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith(GENERATION_PROMPT[name])


@pytest.mark.parametrize("name", TEMPLATES)
def test_assistant_mask_covers_replies_and_their_stop_token_only(name):
    tokenizer = templated(name)
    output = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(output["input_ids"], output["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == EXPECTED_MASKED[name]


@pytest.mark.parametrize("name", TEMPLATES)
def test_trl_sees_the_stop_token_trained(name):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    assert is_chat_template_stop_token_trained(templated(name))


@pytest.mark.parametrize("name", TEMPLATES)
def test_tool_turn_renders_in_the_family_format(name):
    tokenizer = templated(name)
    messages = [
        {"role": "user", "content": "Sum?"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "It is 42"},
    ]
    assert TOOL_TURN[name] in tokenizer.apply_chat_template(messages, tokenize=False)


def test_chatml_groups_consecutive_tool_results_in_one_user_turn():
    tokenizer = templated("chatml")
    messages = [{"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\n<tool_response>\n1\n</tool_response>\n"
        "<tool_response>\n2\n</tool_response><|im_end|>\n"
    )


def test_chatglm_output_starts_with_gmask_sop():
    tokenizer = templated("chatglm")
    messages = [{"role": "user", "content": "Hi"}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["[gMASK]", "sop"]


def test_chatglm_sop_token_leaves_words_containing_it_intact():
    tokenizer = templated("chatglm")
    assert "sop" not in tokenizer.tokenize("Aesop wrote fables")


def test_apply_template_adds_only_missing_special_tokens_and_returns_them():
    tokenizer = train_tokenizer(TEXTS, 400)
    size = len(tokenizer)
    # Our tokenizer already has <|system|>, <|user|>, <|assistant|> and </s>.
    assert apply_template(tokenizer, "chatglm") == ["[gMASK]", "sop", "<|observation|>"]
    assert len(tokenizer) == size + 3
    assert apply_template(tokenizer, "chatglm") == []
    for token in special_tokens("chatglm"):
        assert tokenizer.tokenize(token) == [token]


def test_unknown_template_name_lists_the_built_ins():
    with pytest.raises(ValueError, match="chatml, llama3, chatglm"):
        special_tokens("vicuna")


def test_resolve_prefers_the_tokenizers_own_template():
    assert resolve_chat_template(train_tokenizer(TEXTS, 400)) == CHAT_TEMPLATE


def test_resolve_uses_the_named_built_in():
    tokenizer = train_tokenizer(TEXTS, 400)
    tokenizer.chat_template = None
    assert resolve_chat_template(tokenizer, preferred="llama3") == TEMPLATES["llama3"]


def test_resolve_rejects_an_unknown_preferred_name():
    with pytest.raises(ValueError, match="unknown chat template 'zephyr'"):
        resolve_chat_template(train_tokenizer(TEXTS, 400), preferred="zephyr")


def test_resolve_without_any_template_raises_one_line_error_naming_built_ins():
    tokenizer = train_tokenizer(TEXTS, 400)
    tokenizer.chat_template = None
    with pytest.raises(ValueError) as error:
        resolve_chat_template(tokenizer)
    message = str(error.value)
    assert "\n" not in message
    assert "no chat template" in message
    assert all(name in message for name in TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATES)
def test_built_in_templates_have_generation_markers(name):
    assert has_generation_markers(TEMPLATES[name])


def test_plain_template_has_no_generation_markers():
    plain = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}"
    assert not has_generation_markers(plain)
    assert not has_generation_markers(None)
    assert has_generation_markers(CHAT_TEMPLATE)


# ---- per-turn loss_weight: a 0-weight assistant turn is context, not trained on ----------------

WEIGHTED = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there", "loss_weight": 0.0},
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "It is sunny", "loss_weight": 1.0},
]

# Only the weighted reply (and its stop token) is trained; the 0-weight one is context.
EXPECTED_WEIGHTED_MASKED = {
    "chatml": "It is sunny<|im_end|>",
    "llama3": "It is sunny<|eot_id|>",
    "chatglm": "\n It is sunny</s>",
}


def assistant_masked_ids(tokenizer, messages) -> tuple[list[int], list[int]]:
    output = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return output["input_ids"], output["assistant_masks"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_zero_weight_assistant_turn_gets_mask_0_and_weighted_turn_mask_1(name):
    tokenizer = templated(name)
    ids, mask = assistant_masked_ids(tokenizer, WEIGHTED)
    masked = [token for token, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(masked) == EXPECTED_WEIGHTED_MASKED[name]
    # The 0-weight reply's own tokens are all in the sequence, every one with mask 0.
    reply = tokenizer.encode("Hello there", add_special_tokens=False)
    start = next(i for i in range(len(ids)) if ids[i : i + len(reply)] == reply)
    assert mask[start : start + len(reply)] == [0] * len(reply)
    assert sum(mask) == len(masked) > 0


@pytest.mark.parametrize("name", TEMPLATES)
def test_loss_weight_changes_the_mask_but_not_the_rendered_text(name):
    tokenizer = templated(name)
    plain = [{k: v for k, v in m.items() if k != "loss_weight"} for m in WEIGHTED]
    text = tokenizer.apply_chat_template(WEIGHTED, tokenize=False)
    assert text == tokenizer.apply_chat_template(plain, tokenize=False)
    ids, mask = assistant_masked_ids(tokenizer, WEIGHTED)
    plain_ids, plain_mask = assistant_masked_ids(tokenizer, plain)
    assert ids == plain_ids and sum(mask) < sum(plain_mask)


@pytest.mark.parametrize("weight", [1.0, 0.5, 2])
def test_any_nonzero_loss_weight_keeps_the_turn_trained(weight):
    tokenizer = templated("chatml")
    messages = [WEIGHTED[0], {**WEIGHTED[1], "loss_weight": weight}]
    ids, mask = assistant_masked_ids(tokenizer, messages)
    assert tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]) == (
        "Hello there<|im_end|>"
    )


def test_all_zero_weight_turns_leave_nothing_to_train():
    tokenizer = templated("llama3")
    messages = [WEIGHTED[0], WEIGHTED[1]]
    _, mask = assistant_masked_ids(tokenizer, messages)
    assert sum(mask) == 0


def test_loaded_llamafactory_v1_rows_mask_by_their_loss_weight(tmp_path):
    import json

    from alignflow.data.load import load_dataset_rows

    def turn(role: str, text: str, weight: float) -> dict:
        return {"role": role, "content": [{"type": "text", "value": text}], "loss_weight": weight}

    record = {
        "messages": [
            turn("user", "Hi", 0.0),
            turn("assistant", "Hello there", 0.0),
            turn("user", "Weather?", 0.0),
            turn("assistant", "It is sunny", 1.0),
        ]
    }
    path = tmp_path / "v1.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    rows, _ = load_dataset_rows(path)
    tokenizer = templated("chatml")
    ids, mask = assistant_masked_ids(tokenizer, rows[0]["messages"])
    assert tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]) == (
        "It is sunny<|im_end|>"
    )
