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


# ---- function calling: the call is what the model must learn to emit ----------------------------

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]

# Glaive-like: user → assistant function call (no text) → tool result → assistant answer.
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temp": 22}'},
    {"role": "assistant", "content": "It is 22 C."},
]

# Written by hand from Qwen2.5's template, Llama 3.1's JSON tool calling and ChatGLM3's PROMPT.md.
EXPECTED_CALL_TURN = {
    "chatml": "<|im_start|>assistant\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    '<|im_start|>user\n<tool_response>\n{"temp": 22}\n</tool_response><|im_end|>\n',
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"
    '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
    '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 22}<|eot_id|>',
    "chatglm": '<|assistant|>get_weather\n ```python\ntool_call(city="Paris")\n```'
    '<|observation|>\n {"temp": 22}<|assistant|>',
}

EXPECTED_CALL_MASKED = {
    "chatml": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call><|im_end|>It is 22 C.<|im_end|>",
    "llama3": '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
    "It is 22 C.<|eot_id|>",
    "chatglm": 'get_weather\n ```python\ntool_call(city="Paris")\n```<|observation|>'
    "\n It is 22 C.</s>",
}


@pytest.mark.parametrize("name", TEMPLATES)
def test_function_call_turn_renders_the_call_and_the_tool_result(name):
    text = templated(name).apply_chat_template(TOOL_CONVERSATION, tokenize=False)
    assert EXPECTED_CALL_TURN[name] in text


@pytest.mark.parametrize("name", TEMPLATES)
def test_assistant_mask_covers_the_function_call_and_its_stop_token(name):
    tokenizer = templated(name)
    ids, mask = assistant_masked_ids(tokenizer, TOOL_CONVERSATION)
    assert (
        tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        == (EXPECTED_CALL_MASKED[name])
    )


@pytest.mark.parametrize("name", TEMPLATES)
def test_zero_weight_function_call_is_context_only(name):
    tokenizer = templated(name)
    messages = [TOOL_CONVERSATION[0], {**TOOL_CONVERSATION[1], "loss_weight": 0.0}]
    ids, mask = assistant_masked_ids(tokenizer, messages)
    assert "get_weather" in tokenizer.decode(ids)
    assert sum(mask) == 0


@pytest.mark.parametrize("name", TEMPLATES)
def test_null_tool_calls_from_a_datasets_table_render_like_none_at_all(name):
    tokenizer = templated(name)
    # `datasets` gives every message every key: tool_calls and loss_weight None where absent.
    nulled = [{"tool_calls": None, "loss_weight": None, **m} for m in CONVERSATION]
    assert assistant_masked_ids(tokenizer, nulled) == assistant_masked_ids(tokenizer, CONVERSATION)


def test_chatml_writes_text_then_each_call_on_its_own_line():
    second = {"type": "function", "function": {"name": "get_time", "arguments": {}}}
    messages = [{"role": "assistant", "content": "Checking.", "tool_calls": [CALL, second]}]
    assert templated("chatml").apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>assistant\nChecking.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call><|im_end|>\n'
    )


def test_chatml_and_llama3_write_json_string_arguments_as_they_are():
    call = {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    messages = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    assert '{"name": "f", "arguments": {"x": 1}}' in templated("chatml").apply_chat_template(
        messages, tokenize=False
    )
    assert '{"name": "f", "parameters": {"x": 1}}' in templated("llama3").apply_chat_template(
        messages, tokenize=False
    )


def test_chatglm_rejects_arguments_it_cannot_write_as_keywords():
    from jinja2.exceptions import TemplateError

    call = {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    with pytest.raises(TemplateError, match="arguments must be a JSON object"):
        templated("chatglm").apply_chat_template(
            [{"role": "assistant", "content": "", "tool_calls": [call]}], tokenize=False
        )


def test_chatml_lists_tools_in_the_system_turn_after_the_system_prompt():
    messages = [{"role": "system", "content": "Be brief."}, *TOOL_CONVERSATION]
    text = templated("chatml").apply_chat_template(messages, tools=TOOLS, tokenize=False)
    assert text.startswith(
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions"
    )
    assert '<tools>\n{"name": "get_weather", "description": "Current weather", ' in text
    assert text.count("Be brief.") == 1  # the system prompt is not repeated as its own turn
    assert text.index("</tools>") < text.index("<|im_start|>user\nWeather in Paris?")


def test_llama3_lists_tools_in_the_first_user_turn_with_the_ipython_environment():
    text = templated("llama3").apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False)
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call"
    )
    assert '{\n    "name": "get_weather",\n' in text
    assert "}\n\nWeather in Paris?<|eot_id|>" in text
    assert text.count("Given the following functions") == 1


def test_chatglm_lists_tools_in_a_system_turn_of_their_own_first():
    text = templated("chatglm").apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False)
    assert text.startswith(
        "[gMASK]sop<|system|>\n Answer the following questions as best as you can. "
        'You have access to the following tools:\n[\n    {\n        "name": "get_weather",'
    )
    assert text.index("]<|user|>\n Weather in Paris?") > 0


@pytest.mark.parametrize("name", TEMPLATES)
def test_tools_do_not_change_what_is_trained(name):
    tokenizer = templated(name)
    plain = assistant_masked_ids(tokenizer, TOOL_CONVERSATION)
    output = tokenizer.apply_chat_template(
        TOOL_CONVERSATION,
        tools=TOOLS,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    with_tools = (output["input_ids"], output["assistant_masks"])
    assert [t for t, m in zip(*plain, strict=True) if m] == [
        t for t, m in zip(*with_tools, strict=True) if m
    ]


def masked_runs(mask: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of 1s in an assistant mask."""
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("name", TEMPLATES)
def test_glaive_rows_train_every_assistant_turn_on_something_it_says(name):
    from alignflow.data.load import load_dataset_rows
    from tests.conftest import FIXTURES

    fixture = FIXTURES / "llamafactory" / "glaive_toolcall_en_demo.json"
    if not fixture.exists():
        pytest.skip(f"shared fixtures not found at {fixture}")
    rows, _ = load_dataset_rows(fixture)
    calling = [r for r in rows if any(m.get("tool_calls") for m in r["messages"])][:12]
    plain = [r for r in rows if not any(m.get("tool_calls") for m in r["messages"])][:3]
    assert len(calling) == 12
    tokenizer = templated(name)
    for row in calling + plain:
        output = tokenizer.apply_chat_template(
            row["messages"],
            tools=row.get("tools"),
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, runs = output["input_ids"], masked_runs(output["assistant_masks"])
        replies = [m for m in row["messages"] if m["role"] == "assistant"]
        assert len(runs) == len(replies)
        for (start, end), reply in zip(runs, replies, strict=True):
            said = tokenizer.decode(ids[start:end], skip_special_tokens=True).strip()
            assert said, f"an empty trained assistant turn in {row['messages'][0]['content']!r}"
            for call in reply.get("tool_calls") or []:
                assert call["function"]["name"] in said
                for key in call["function"]["arguments"]:
                    assert key in said
