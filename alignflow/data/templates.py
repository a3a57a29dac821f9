"""Chat templates: the model's own when it has one, else built-in ChatML, Llama-3 or ChatGLM3.

Each built-in wraps what the assistant must learn to produce, its end-of-turn token included, in
`{% generation %}` markers, so assistant-only SFT loss also teaches the model to stop. Messages are
`{"role", "content"}` with string content; roles are system, user, assistant and tool. An assistant
turn with `"loss_weight": 0` is rendered the same but without the markers: context, not trained on.

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
_TRAINED_IF_WEIGHTED = (
    "{%- if message['loss_weight'] is defined and message['loss_weight'] == 0 %}"
    "{{- reply }}"
    "{%- else %}"
    "{%- generation %}{{- reply }}{%- endgeneration %}"
    "{%- endif %}"
)

# ChatML as Qwen2.5 writes it: tool results go back in a user turn as <tool_response> blocks, and
# consecutive tool results share that turn. The "\n" after <|im_end|> is outside the generation
# block: the model stops at <|im_end|>.
CHATML = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' }}"
    "{%- set reply = message['content'] + '<|im_end|>' %}" + _TRAINED_IF_WEIGHTED + "{{- '\n' }}"
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
LLAMA3 = (
    "{%- for message in messages %}"
    "{%- if loop.first %}{{- '<|begin_of_text|>' }}{%- endif %}"
    "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\n\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set reply = message['content'] | trim + '<|eot_id|>' %}"
    + _TRAINED_IF_WEIGHTED
    + "{%- else %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
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
CHATGLM = (
    "{%- set role_tokens = {'system': '<|system|>', 'user': '<|user|>', "
    "'assistant': '<|assistant|>', 'tool': '<|observation|>'} %}"
    "{{- '[gMASK]sop' }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in role_tokens %}"
    "{{- raise_exception('chatglm template: unknown role ' + message['role']) }}"
    "{%- endif %}"
    "{%- set after_assistant = not loop.first"
    " and messages[loop.index0 - 1]['role'] == 'assistant' %}"
    "{%- if not after_assistant %}{{- role_tokens[message['role']] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set stop = '</s>' if loop.last else role_tokens[messages[loop.index0 + 1]['role']] %}"
    "{%- set reply = '\n ' + message['content'] + stop %}" + _TRAINED_IF_WEIGHTED + "{%- else %}"
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


def _check_name(name: str) -> None:
    if name not in TEMPLATES:
        raise ValueError(
            f"unknown chat template {name!r}; the built-in ones are: {', '.join(TEMPLATES)}"
        )


def special_tokens(name: str) -> list[str]:
    """The tokens template `name` writes that must each stay one token (added to a tokenizer)."""
    _check_name(name)
    return list(_SPECIAL_TOKENS[name])


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
