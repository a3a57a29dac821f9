"""Data formats people already use, detected by their keys and normalized to canonical rows.

Canonical rows (DESIGN.md): SFT `{"messages": [...], "tools"?: [...]}` · preference `{"prompt", "chosen",
"rejected"}` (each a message list) · prompts `{"prompt"}` · unpaired `{"prompt", "completion", "label"}`.
A message is `{"role", "content"}` with role system/user/assistant/tool and `content` always a string
(a list of text parts is concatenated, as chat templates render it).

Function calls are parsed, not kept as text: a sharegpt `function_call` turn becomes
`{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": ...,
"arguments": {...}}}]}` (the shape transformers chat templates read), and `observation` becomes a `tool`
turn. `tools` given as a JSON string is parsed into a list; an empty list is left out.

Every problem raises `DataError` naming the field; `alignflow.data.load` adds file and line and either
raises or, with `on_error="skip"`, counts the record as skipped. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alignflow.data.errors import DataError
from alignflow.data.messages import (
    Message,
    Row,
    as_list,
    as_message_list,
    as_messages,
    as_text,
    hh_transcript,
    optional_field,
    parse_tools,
    preference_pair,
    require_field,
    sharegpt_turn,
    sharegpt_turns,
    split_shared_prefix,
    with_system,
)
from alignflow.data.preferences import ranking_to_pairs, unique_candidates

# ---- normalizers: record → canonical rows -------------------------------------------------------


def _alpaca(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    instruction = as_text(require_field(record, "instruction"), "instruction")
    extra = as_text(optional_field(record, "input") or "", "input", required=False)
    history = optional_field(record, "history") or []
    if not isinstance(history, list):
        raise DataError(
            "history",
            f"is a {type(history).__name__}",
            "a list of [user, assistant] pairs",
            reason="wrong type",
        )
    messages: list[Message] = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise DataError(
                f"history[{i}]", f"is {pair!r:.60}", "a [user, assistant] pair", reason="wrong type"
            )
        messages.append({"role": "user", "content": as_text(pair[0], f"history[{i}][0]")})
        messages.append({"role": "assistant", "content": as_text(pair[1], f"history[{i}][1]")})
    # LLaMA-Factory joins instruction and input with one newline; so do we.
    user = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages += [
        {"role": "user", "content": user},
        {"role": "assistant", "content": as_text(require_field(record, "output"), "output")},
    ]
    return [{"messages": with_system(record, messages)}]


def _sharegpt(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    messages = with_system(
        record, sharegpt_turns(require_field(record, "conversations"), "conversations")
    )
    tools = parse_tools(optional_field(record, "tools"))
    return [{"messages": messages, **({"tools": tools} if tools else {})}]


def _sharegpt_reply(value: Any, name: str) -> list[Message]:
    return (
        [{"role": "assistant", "content": as_text(value, name)}]
        if isinstance(value, str)
        else [sharegpt_turn(value, name)]
    )


def _sharegpt_pairwise(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    prompt = with_system(
        record, sharegpt_turns(require_field(record, "conversations"), "conversations")
    )
    chosen = _sharegpt_reply(require_field(record, "chosen"), "chosen")
    return [
        preference_pair(
            prompt, chosen, _sharegpt_reply(require_field(record, "rejected"), "rejected")
        )
    ]


def _messages_sft(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    tools = parse_tools(optional_field(record, "tools"))
    return [
        {
            "messages": as_message_list(require_field(record, "messages"), "messages"),
            **({"tools": tools} if tools else {}),
        }
    ]


def _prompt_completion(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    prompt = as_messages(require_field(record, "prompt"), "prompt", "user")
    return [
        {
            "messages": prompt
            + as_messages(require_field(record, "completion"), "completion", "assistant")
        }
    ]


def _preference(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    chosen_value, rejected_value = (
        require_field(record, "chosen"),
        require_field(record, "rejected"),
    )
    if optional_field(record, "prompt") is not None:
        prompt = as_messages(record["prompt"], "prompt", "user")
        chosen = as_messages(chosen_value, "chosen", "assistant")
        return [
            preference_pair(prompt, chosen, as_messages(rejected_value, "rejected", "assistant"))
        ]
    if isinstance(chosen_value, str):
        raise DataError(
            "prompt",
            "is missing and chosen is plain text",
            "a prompt field, or chosen/rejected as message lists",
            reason="missing field",
        )
    return [
        split_shared_prefix(
            as_message_list(chosen_value, "chosen"), as_message_list(rejected_value, "rejected")
        )
    ]


def _hh_rlhf(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    chosen = hh_transcript(require_field(record, "chosen"), "chosen")
    return [
        split_shared_prefix(chosen, hh_transcript(require_field(record, "rejected"), "rejected"))
    ]


def _scores(record: Mapping[str, Any], count: int) -> list[float]:
    """Per-response scores, higher = better; a rank (1 = best) is turned into its negation."""
    if "rank" in record and "scores" in record:
        raise DataError(
            "rank",
            "is given together with scores",
            "either rank or scores",
            reason="rank and scores",
        )
    name = "rank" if "rank" in record else "scores"
    values = record[name]
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise DataError(
            name, f"is {values!r:.60}", "a list of numbers, one per response", reason="wrong type"
        )
    if len(values) != count:
        raise DataError(
            name,
            f"has {len(values)} entries but responses has {count}",
            "one entry per response",
            reason="ranking length mismatch",
        )
    return [-v for v in values] if name == "rank" else [float(v) for v in values]


def _ranking(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    prompt = as_messages(require_field(record, "prompt"), "prompt", "user")
    raw = as_list(require_field(record, "responses"), "responses", "responses")
    responses = [as_messages(r, f"responses[{i}]", "assistant") for i, r in enumerate(raw)]
    if len(responses) < 2:
        raise DataError(
            "responses",
            "has one response",
            "at least two responses to rank",
            reason="too few responses",
        )
    keys = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in responses]
    if len(unique_candidates(keys)) != len(keys):
        raise DataError(
            "responses",
            "contains the same response twice",
            "distinct responses",
            reason="duplicate responses",
        )
    pairs, ties = ranking_to_pairs(_scores(record, len(responses)))
    stats["ties_skipped"] += ties
    return [preference_pair(prompt, responses[better], responses[worse]) for better, worse in pairs]


def _unpaired(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    label = require_field(record, "label")
    if not isinstance(label, bool):
        raise DataError("label", f"is {label!r:.40}", "true or false", reason="wrong type")
    if "messages" in record:
        messages = as_message_list(record["messages"], "messages")
        last = len(messages) - 1
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError(
                f"messages[{last}].role",
                f"is {messages[-1]['role']!r} in a {len(messages)}-turn list",
                "a prompt followed by a final assistant turn",
                reason="no completion",
            )
        prompt, completion = messages[:-1], messages[-1:]
    else:
        prompt = as_messages(require_field(record, "prompt"), "prompt", "user")
        completion = as_messages(require_field(record, "completion"), "completion", "assistant")
    return [{"prompt": prompt, "completion": completion, "label": label}]


def _prompt_only(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    return [{"prompt": as_messages(require_field(record, "prompt"), "prompt", "user")}]


# ---- detection by keys ---------------------------------------------------------------------------


def _keys(record: Mapping[str, Any]) -> set[str]:
    return {key for key, value in record.items() if value is not None}


def _is_pair(keys: set[str]) -> bool:
    return {"chosen", "rejected"} <= keys


def _is_hh(record: Mapping[str, Any]) -> bool:
    keys, chosen = _keys(record), record.get("chosen")
    return (
        _is_pair(keys)
        and not keys & {"prompt", "conversations"}
        and (isinstance(chosen, str) and chosen.lstrip("\n").startswith("Human:"))
    )


@dataclass(frozen=True)
class Format:
    """One input format: how to recognize a record of it and how to turn it into canonical rows."""

    name: str
    kind: str  # the canonical row it emits: sft | preference | prompt | unpaired
    keys: str  # what a record looks like, for error messages
    detect: Callable[[Mapping[str, Any]], bool]
    normalize: Callable[[Mapping[str, Any], Counter], list[Row]]


_PROMPT_ONLY_EXCLUDES = {
    "completion",
    "chosen",
    "rejected",
    "responses",
    "label",
    "messages",
    "conversations",
}
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "alpaca",
            "sft",
            "instruction, input, output[, system, history]",
            lambda r: {"instruction", "output"} <= _keys(r) and not _is_pair(_keys(r)),
            _alpaca,
        ),
        Format(
            "sharegpt",
            "sft",
            "conversations[{from, value}][, system, tools]",
            lambda r: "conversations" in _keys(r) and not _is_pair(_keys(r)),
            _sharegpt,
        ),
        Format(
            "sharegpt_pairwise",
            "preference",
            "conversations + chosen/rejected {from, value}",
            lambda r: "conversations" in _keys(r) and _is_pair(_keys(r)),
            _sharegpt_pairwise,
        ),
        Format(
            "messages",
            "sft",
            "messages[{role, content}][, tools]",
            lambda r: "messages" in _keys(r) and not _keys(r) & {"label", "chosen", "rejected"},
            _messages_sft,
        ),
        Format(
            "prompt_completion",
            "sft",
            "prompt, completion",
            lambda r: {"prompt", "completion"} <= _keys(r) and "label" not in _keys(r),
            _prompt_completion,
        ),
        Format(
            "preference",
            "preference",
            "[prompt,] chosen, rejected",
            lambda r: _is_pair(_keys(r)) and "conversations" not in _keys(r) and not _is_hh(r),
            _preference,
        ),
        Format(
            "hh_rlhf",
            "preference",
            'chosen/rejected "\\n\\nHuman: ...\\n\\nAssistant: ..."',
            _is_hh,
            _hh_rlhf,
        ),
        Format(
            "ranking",
            "preference",
            "prompt, responses, rank (1 = best) or scores",
            lambda r: "responses" in _keys(r) and bool(_keys(r) & {"rank", "scores"}),
            _ranking,
        ),
        Format(
            "unpaired",
            "unpaired",
            "messages or prompt/completion, plus label (bool)",
            lambda r: (
                "label" in _keys(r)
                and ("messages" in _keys(r) or {"prompt", "completion"} <= _keys(r))
            ),
            _unpaired,
        ),
        Format(
            "prompt",
            "prompt",
            "prompt only",
            lambda r: "prompt" in _keys(r) and not _keys(r) & _PROMPT_ONLY_EXCLUDES,
            _prompt_only,
        ),
    )
}


def known_formats() -> str:
    return "; ".join(f"{f.name} ({f.keys})" for f in FORMATS.values())


def detect_format(records: Iterable[Mapping[str, Any]]) -> str:
    """The one format a sample of records is in.

    Records no format recognizes are ignored here (normalizing them reports what they lack), but if
    none is recognized, or two formats are seen, it raises a DataError listing the known formats.
    """
    seen: Counter[str] = Counter()
    unknown_keys: list[str] = []
    records = list(records)
    if not records:
        raise DataError("records", "none found", "at least one record", reason="no records")
    for record in records:
        matches = [f.name for f in FORMATS.values() if f.detect(record)]
        if len(matches) > 1:
            raise DataError(
                "format",
                f"a record matches several formats ({', '.join(matches)})",
                "one; name it with format:",
            )
        if matches:
            seen[matches[0]] += 1
        elif not unknown_keys:
            unknown_keys = sorted(record)
    if len(seen) > 1:
        mix = ", ".join(f"{name} x{count}" for name, count in seen.most_common())
        raise DataError(
            "format",
            f"records look like several formats ({mix})",
            "one format per dataset; name it with format:",
        )
    if not seen:
        raise DataError(
            "format",
            f"no known format matches keys {unknown_keys}",
            f"one of: {known_formats()}",
            reason="unknown format",
        )
    return next(iter(seen))
