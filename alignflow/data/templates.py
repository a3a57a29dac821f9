"""Chat templates: the model's own when it has one, else built-in ChatML, Llama-3 or ChatGLM3.

Each built-in wraps what the assistant must learn to produce, its end-of-turn token included, in
`{% generation %}` markers, so assistant-only SFT loss also teaches the model to stop. Messages are
`{"role", "content"}` with string content; roles are system, user, assistant and tool. An assistant
turn with `"loss_weight": 0` is rendered the same but without the markers: context, not trained on.

Function calling follows each family. An assistant turn's `tool_calls` (`[{"type": "function",
"function": {"name": ..., "arguments": {...}}}]`, as `alignflow.data.messages.parse_tool_calls`
writes them) are rendered inside its generation block, since the model must learn to emit the call;
`apply_chat_template(messages, tools=[...])` lists the function schemas where the family puts them.

Templates without markers (a model's own) are not rewritten here: TRL's
`trl.chat_template_utils.get_training_chat_template` patches the known model families.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# `reply` inside generation markers unless the turn's loss_weight is 0 (LLaMA-Factory's per-turn
# weight: 0 = context only). Built by concatenation: Jinja macros would hide the markers from
# transformers' assistant-mask tracking.
TRAINED_IF_WEIGHTED = (
    "{%- if message['loss_weight'] is defined and message['loss_weight'] == 0 %}"
    "{{- reply }}"
    "{%- else %}"
    "{%- generation %}{{- reply }}{%- endgeneration %}"
    "{%- endif %}"
)

# Opens a loop over the turn's calls, setting `function` and `arguments` (JSON text). A `datasets`
# table gives every message `tool_calls: None`, hence `or []`; a bare {"name", "arguments"} and
# arguments already written as a JSON string (OpenAI's form) are accepted too.
_EACH_FUNCTION_CALL = (
    "{%- for tool_call in message['tool_calls'] or [] %}"
    "{%- set function = tool_call['function'] if tool_call['function'] is defined else tool_call %}"
    "{%- set arguments = function['arguments'] if function['arguments'] is string"
    " else function['arguments'] | tojson %}"
)

# Sets `reply` to the turn's text, then each call as Qwen2.5 writes it, one per line:
# <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
QWEN_REPLY = (
    "{%- set turn = namespace(text=message['content'] or '') %}"
    + _EACH_FUNCTION_CALL
    + "{%- set turn.text = turn.text + ('\n' if turn.text else '') + '<tool_call>\n{\"name\": '"
    " + function['name'] | tojson + ', \"arguments\": ' + arguments + '}\n</tool_call>' %}"
    "{%- endfor %}"
    "{%- set reply = turn.text %}"
)

# The body of Qwen2.5's system turn when `tools` is given: the conversation's own system prompt
# first, if it opens with one (the template then skips that message), then the schemas.
QWEN_TOOLS_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] + '\n\n' }}"
    "{%- endif %}"
    "{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + tool | tojson }}{%- endfor %}"
    "{{- '\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\' }}'
)

# ChatML as Qwen2.5 writes it: tool results go back in a user turn as <tool_response> blocks, and
# consecutive tool results share that turn. The "\n" after <|im_end|> is outside the generation
# block: the model stops at <|im_end|>.
CHATML = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}" + QWEN_TOOLS_SYSTEM + "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{#- already written in the tools block #}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' }}"
    + QWEN_REPLY
    + "{%- set reply = reply + '<|im_end|>' %}"
    + TRAINED_IF_WEIGHTED
    + "{{- '\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}"
    "{{- '<|im_start|>user' }}"
    "{%- endif %}"
    "{{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Llama 3: content is trimmed as Meta's template does; tool results use Llama 3.1's `ipython` role.
# <|begin_of_text|> is written out because our tokenizers have no BOS token to stand for it.
# With `tools`, Llama 3.1's conventions: the system turn opens with its "Environment: ipython" header
# (a system turn is written even without a system prompt), the schemas open the first user turn,
# and a call is the assistant's text `{"name": ..., "parameters": {...}}`. Meta's template takes
# one call per turn and drops any text beside it; here calls go one per line after the text.
LLAMA3 = (
    "{{- '<|begin_of_text|>' }}"
    "{%- set tools_state = namespace(pending=true if tools else false) %}"
    "{%- if tools %}"
    "{%- set tools_header = 'Environment: ipython\nCutting Knowledge Date: December 2023\n"
    "Today Date: ' + (date_string if date_string is defined else '26 Jul 2024') + '\n\n' %}"
    "{%- if not (messages and messages[0]['role'] == 'system') %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' + tools_header + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\n\n' }}"
    "{%- set text = (message['content'] or '') | trim %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set turn = namespace(text=text) %}"
    + _EACH_FUNCTION_CALL
    + "{%- set turn.text = turn.text + ('\n' if turn.text else '') + '{\"name\": '"
    " + function['name'] | tojson + ', \"parameters\": ' + arguments + '}' %}"
    "{%- endfor %}"
    "{%- set reply = turn.text + '<|eot_id|>' %}" + TRAINED_IF_WEIGHTED + "{%- else %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{{- tools_header }}"
    "{%- elif tools_state.pending and message['role'] == 'user' %}"
    "{{- 'Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\nRespond in the format "
    '{"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n' }}"
    "{%- for tool in tools %}{{- tool | tojson(indent=4) + '\n\n' }}{%- endfor %}"
    "{%- set tools_state.pending = false %}"
    "{%- endif %}"
    "{{- text + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)

# ChatGLM3: `[gMASK]sop<|role|>\n content`, with no end-of-turn token: the model stops by emitting
# the next role token (<|user|>, <|observation|>) or </s>. So that token belongs to the assistant's
# generation block and the next message does not repeat it. The "\n " after <|assistant|> is
# generated too, since ChatGLM3's generation prompt is the bare <|assistant|> token.
# Function calling as ChatGLM3's own fine-tuning code writes it: the schemas in a system turn of
# their own, first; each call an assistant turn `<|assistant|>name\n ```python\ntool_call(k=v)\n````
# (values as JSON literals, as in ChatGLM3's PROMPT.md), ended by the <|observation|> that follows.
CHATGLM = (
    "{%- set role_tokens = {'system': '<|system|>', 'user': '<|user|>', "
    "'assistant': '<|assistant|>', 'tool': '<|observation|>'} %}"
    "{{- '[gMASK]sop' }}"
    "{%- if tools %}"
    "{{- '<|system|>\n Answer the following questions as best as you can. "
    "You have access to the following tools:\n' + tools | tojson(indent=4) }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in role_tokens %}"
    "{{- raise_exception('chatglm template: unknown role ' + message['role']) }}"
    "{%- endif %}"
    "{%- set after_assistant = not loop.first"
    " and messages[loop.index0 - 1]['role'] == 'assistant' %}"
    "{%- if not after_assistant %}{{- role_tokens[message['role']] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set stop = '</s>' if loop.last else role_tokens[messages[loop.index0 + 1]['role']] %}"
    "{%- set turn = namespace(text='', kwargs='') %}"
    "{%- if message['content'] or not message['tool_calls'] %}"
    "{%- set turn.text = '\n ' + (message['content'] or '') %}"
    "{%- endif %}" + _EACH_FUNCTION_CALL + "{%- if function['arguments'] is not mapping %}"
    "{{- raise_exception('chatglm template: tool call arguments must be a JSON object') }}"
    "{%- endif %}"
    "{%- set turn.kwargs = '' %}"
    "{%- for key, value in function['arguments'].items() %}"
    "{%- set turn.kwargs = turn.kwargs + (', ' if turn.kwargs else '') + key + '=' + value | tojson %}"
    "{%- endfor %}"
    "{%- set turn.text = turn.text + ('<|assistant|>' if turn.text else '') + function['name']"
    " + '\n ```python\ntool_call(' + turn.kwargs + ')\n```' %}"
    "{%- endfor %}"
    "{%- set reply = turn.text + stop %}" + TRAINED_IF_WEIGHTED + "{%- else %}"
    "{{- '\n ' + message['content'] }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}"
)

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

TEMPLATES: dict[str, str] = {"chatml": CHATML, "llama3": LLAMA3, "chatglm": CHATGLM}

_SPECIAL_TOKENS: dict[str, list[str]] = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "chatglm": [
        "[gMASK]",
        "sop",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|observation|>",
        "</s>",
    ],
}

# The token a finished reply ends with, which generation must stop at: ChatGLM3 also stops at the
# next role token, but a reply that ends the conversation ends with </s>.
_END_OF_TURN: dict[str, str] = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "chatglm": "</s>"}


def _check_name(name: str) -> None:
    if name not in TEMPLATES:
        raise ValueError(
            f"unknown chat template {name!r}; the built-in ones are: {', '.join(TEMPLATES)}"
        )


def special_tokens(name: str) -> list[str]:
    """The tokens template `name` writes that must each stay one token (added to a tokenizer)."""
    _check_name(name)
    return list(_SPECIAL_TOKENS[name])


def end_of_turn_token(name: str) -> str:
    """The token built-in template `name` ends a reply with: the tokenizer's EOS when it is used."""
    _check_name(name)
    return _END_OF_TURN[name]


def has_generation_markers(template: str | None) -> bool:
    """Whether `template` marks assistant spans, which assistant-only loss masking needs."""
    return template is not None and _GENERATION_TAG.search(template) is not None


def resolve_chat_template(tokenizer: PreTrainedTokenizerBase, preferred: str | None = None) -> str:
    """The chat template to train with: the built-in `preferred` when named, else the tokenizer's own.

    Raises ValueError when `preferred` is not a built-in, or when neither exists.
    """
    if preferred is not None:
        _check_name(preferred)
        return TEMPLATES[preferred]
    own = tokenizer.chat_template
    if isinstance(own, str) and own:
        return own
    raise ValueError(
        f"tokenizer {tokenizer.name_or_path!r} has no chat template; "
        f"set one of the built-in templates: {', '.join(TEMPLATES)}"
    )


def apply_template(tokenizer: PreTrainedTokenizerBase, name: str) -> list[str]:
    """Set built-in template `name` on `tokenizer`, adding the special tokens it lacks.

    Returns the tokens added; when any were, the caller resizes the model's embeddings
    (`model.resize_token_embeddings(len(tokenizer))`).
    """
    from tokenizers import AddedToken

    _check_name(name)
    present = set(tokenizer.get_added_vocab())
    missing = [token for token in _SPECIAL_TOKENS[name] if token not in present]
    if missing:
        # single_word keeps ChatGLM's "sop" from splitting words like "Aesop" in ordinary text.
        tokenizer.add_tokens(
            [
                AddedToken(t, special=True, normalized=False, single_word=t == "sop")
                for t in missing
            ],
            special_tokens=True,
        )
    tokenizer.chat_template = TEMPLATES[name]
    return missing
