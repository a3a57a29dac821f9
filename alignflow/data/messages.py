"""Field, message and role-order checks shared by the format normalizers.

Each raises `DataError` naming the field and returns canonical messages: `{"role", "content"}` with
content always a string, plus `tool_calls` on an assistant turn that calls functions and
`loss_weight` (a float >= 0, 0 = context only) where the source gave one.

CSV cells are always strings, so where a field must be a list or object, a string holding that JSON
is parsed; a field that may be text *or* a message list is parsed only when it reads as messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from alignflow.data.errors import DataError

Message = dict[str, Any]
Row = dict[str, Any]

ROLES = ("system", "user", "assistant", "tool")
# sharegpt speaker tags → canonical roles (function_call and observation handled specially).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
}


# ---- field checks -----------------------------------------------------------------------------


def with_article(word: str) -> str:
    """`word` with its indefinite article, for messages: "an 'output' field", "a str"."""
    return f"an {word}" if word.strip("'\"")[:1].lower() in tuple("aeiou") else f"a {word}"


def require_field(record: Mapping[str, Any], name: str) -> Any:
    if record.get(name) is None:
        raise DataError(
            name, "is missing", f"{with_article(repr(name))} field", reason="missing field"
        )
    return record[name]


def optional_field(record: Mapping[str, Any], name: str) -> Any:
    """An optional field; None and "" (an empty CSV cell) both mean absent."""
    value = record.get(name)
    return None if value is None or value == "" else value


def as_text(value: Any, name: str, required: bool = True) -> str:
    if not isinstance(value, str):
        raise DataError(
            name, f"is {with_article(type(value).__name__)}", "a string", reason="wrong type"
        )
    if required and not value.strip():
        problem = "is empty" if value == "" else "is whitespace-only"
        raise DataError(name, problem, "non-empty text", reason="empty text")
    return value


def parse_json(value: Any, kind: type) -> Any:
    """`value` parsed when it is a string holding JSON of type `kind` (a CSV cell), else unchanged.

    Unchanged, a wrong value still gets its caller's wrong-type error.
    """
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, kind):
            return parsed
    return value


def as_list(value: Any, name: str, what: str) -> list:
    value = parse_json(value, list)
    if not isinstance(value, list) or not value:
        problem = "is empty" if value == [] else f"is {with_article(type(value).__name__)}"
        raise DataError(name, problem, f"a non-empty list of {what}", reason="wrong type")
    return value


TOOL_CALL_PARTS = ("tool_calls", "tool_call")  # LLaMA-Factory v1 writes both spellings


def content_parts(parts: list, name: str) -> tuple[str, list[dict]]:
    """(text, tool calls) of a list of content parts.

    Text parts are `{"type": "text", "value": ...}` (LLaMA-Factory v1) or `{"type": "text",
    "text": ...}` (OpenAI), concatenated as chat templates render them. Images, reasoning and other
    parts have no place in a canonical message, so they are an error rather than silently dropped.
    """
    texts, calls = [], []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            key = "value" if "value" in part else "text"
            texts.append(as_text(part.get(key), f"{name}[{i}].{key}", required=False))
        elif kind in TOOL_CALL_PARTS:
            calls += parse_tool_calls(part.get("value"), f"{name}[{i}].value")
        else:
            raise DataError(
                f"{name}[{i}]",
                f"is a part of type {kind!r}" if kind else f"is {part!r:.60}",
                '{"type": "text", "value": ...} (only text and tool_calls parts are supported)',
                reason="unsupported content" if kind else "wrong type",
            )
    return "".join(texts), calls


def as_content(value: Any, name: str, required: bool = True) -> str:
    """A string, or a list of text parts (concatenated)."""
    if isinstance(value, list):
        value, calls = content_parts(value, name)
        if calls:
            raise DataError(
                name,
                "has tool_calls parts",
                "tool calls only in an assistant turn",
                reason="unsupported content",
            )
    return as_text(value, name, required)


def as_loss_weight(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise DataError(
            name,
            f"is {value!r:.40}",
            "a finite number >= 0 (0 = context only, not trained on)",
            reason="bad loss weight",
        )
    return float(value)


def parse_tool_calls(value: Any, name: str) -> list[dict]:
    """Function calls as chat templates read them; accepts a JSON string, one call or a list."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise DataError(
                name,
                f"is not valid JSON ({error.msg})",
                '{"name": ..., "arguments": {...}}',
                reason="bad function call",
            ) from error
    calls = value if isinstance(value, list) else [value]
    parsed = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, Mapping) else None
        arguments = function.get("arguments") if isinstance(function, Mapping) else None
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not (isinstance(function, Mapping) and isinstance(function.get("name"), str)) or not (
            isinstance(arguments, Mapping)
        ):
            raise DataError(
                name,
                f"is {call!r:.60}",
                '{"name": ..., "arguments": {...}}',
                reason="bad function call",
            )
        parsed.append(
            {
                "type": "function",
                "function": {"name": function["name"], "arguments": dict(arguments)},
            }
        )
    return parsed


def parse_tools(value: Any, name: str = "tools") -> list | None:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as error:
            raise DataError(
                name,
                f"is not valid JSON ({error.msg})",
                "a JSON list of tool schemas",
                reason="bad tools",
            ) from error
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(tool, Mapping) for tool in value):
        raise DataError(name, f"is {value!r:.60}", "a list of tool schemas", reason="bad tools")
    return list(value) or None


# ---- messages ----------------------------------------------------------------------------------


def known_role(value: Any, allowed: Iterable[str], name: str) -> str:
    """`value` if it is one of `allowed`, else the one-line 'unknown role' error."""
    if value not in allowed:
        raise DataError(
            name, f"unknown role {value!r}", f"one of {', '.join(allowed)}", reason="unknown role"
        )
    return value


def as_message(turn: Any, name: str) -> Message:
    if not isinstance(turn, Mapping):
        raise DataError(
            name,
            f"is {with_article(type(turn).__name__)}",
            '{"role": ..., "content": ...}',
            reason="wrong type",
        )
    role = known_role(turn.get("role"), ROLES, f"{name}.role")
    content, calls = turn.get("content"), []
    if role == "assistant" and isinstance(content, list):
        content, calls = content_parts(content, f"{name}.content")
    if role == "assistant" and turn.get("tool_calls"):
        calls += parse_tool_calls(turn["tool_calls"], f"{name}.tool_calls")
    if calls:
        text = as_content(content or "", f"{name}.content", required=False)
        message: Message = {"role": role, "content": text, "tool_calls": calls}
    else:
        message = {"role": role, "content": as_content(content, f"{name}.content")}
    if turn.get("loss_weight") is not None:
        message["loss_weight"] = as_loss_weight(turn["loss_weight"], f"{name}.loss_weight")
    return message


def as_message_list(value: Any, name: str) -> list[Message]:
    return [
        as_message(turn, f"{name}[{i}]") for i, turn in enumerate(as_list(value, name, "messages"))
    ]


def as_messages(value: Any, name: str, role: str) -> list[Message]:
    """A plain string becomes one `role` turn; a list is read as messages.

    A string holding a JSON list of `{"role": ...}` objects (a CSV cell) is read as that list; any
    other string, JSON or not, is text.
    """
    if isinstance(value, str):
        parsed = parse_json(value, list)
        if not (
            isinstance(parsed, list)
            and parsed
            and all(isinstance(turn, Mapping) and "role" in turn for turn in parsed)
        ):
            return [{"role": role, "content": as_text(value, name)}]
        value = parsed
    return as_message_list(value, name)


def sharegpt_turn(turn: Any, name: str) -> Message:
    if not isinstance(turn, Mapping):
        raise DataError(
            name,
            f"is {with_article(type(turn).__name__)}",
            '{"from": ..., "value": ...}',
            reason="wrong type",
        )
    speaker = known_role(turn.get("from"), SHAREGPT_ROLES, f"{name}.from")
    value = as_text(turn.get("value"), f"{name}.value")
    if speaker == "function_call":
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": parse_tool_calls(value, f"{name}.value"),
        }
    return {"role": SHAREGPT_ROLES[speaker], "content": value}


def sharegpt_turns(value: Any, name: str, ends: tuple[str, ...]) -> list[Message]:
    """A sharegpt turn list, its role order checked (see check_turn_order) against `ends`."""
    turns = as_list(value, name, "{from, value} turns")
    messages = [sharegpt_turn(turn, f"{name}[{i}]") for i, turn in enumerate(turns)]
    labels = [turn["from"] for turn in turns]
    check_turn_order(messages, indexed(name, "from"), ends=ends, labels=labels)
    return messages


def with_system(record: Mapping[str, Any], messages: list[Message]) -> list[Message]:
    system = optional_field(record, "system")
    if system is None:
        return messages
    return [{"role": "system", "content": as_text(system, "system")}, *messages]


# ---- role order ----------------------------------------------------------------------------------

ROLE_ORDER = "alternating user/assistant turns after an optional system turn"
PROMPT_ENDS = ("user", "tool")  # where a prompt may stop: the model replies next
_ENDINGS = {
    ("assistant",): "a conversation ending with an assistant turn",
    PROMPT_ENDS: "a prompt ending with a user (or tool) turn",
}


def _order_expected(previous: Message | None, role: str) -> str | None:
    """What the order expects when a `role` turn cannot follow `previous`; None when it can."""
    before = previous["role"] if previous else None
    if role == "system":
        return None if before in (None, "system") else "system turns only at the start"
    if before in (None, "system"):
        return None if role == "user" else ROLE_ORDER
    if role == "tool":
        calls = before == "tool" or (previous or {}).get("tool_calls")
        return None if calls else "a tool turn right after an assistant turn with tool_calls"
    return ROLE_ORDER if role == before else None


def check_turn_order(
    messages: list[Message],
    turn_field: Callable[[int], str],
    *,
    ends: tuple[str, ...] = ("assistant",),
    after: Message | None = None,
    labels: list[str] | None = None,
) -> None:
    """Raise a "wrong role order" DataError at the first turn that breaks the chat's role order.

    Optional system turn(s) first, then user; never two user or two assistant turns in a row; a
    tool turn only after an assistant turn with tool_calls or another tool turn; the last turn's
    role in `ends`. With `after` (the last prompt turn) the messages are a reply and must start
    with an assistant turn.

    Args:
        turn_field: names turn i in errors, e.g. `lambda i: f"messages[{i}].role"`.
        labels: the roles as the source spelled them (sharegpt's "human"), for error messages.
    """
    labels = labels or [message["role"] for message in messages]
    previous, previous_label = after, after["role"] if after else ""
    for i, (message, label) in enumerate(zip(messages, labels, strict=True)):
        if i == 0 and after is not None and message["role"] != "assistant":
            raise DataError(
                turn_field(i),
                f"is {label!r}",
                "a reply starting with an assistant turn",
                reason="wrong role order",
            )
        expected = _order_expected(previous, message["role"])
        if expected is not None:
            opening = previous is None or previous["role"] == "system"
            where = "before any user turn" if opening else f"after {previous_label!r}"
            raise DataError(
                turn_field(i), f"is {label!r} {where}", expected, reason="wrong role order"
            )
        previous, previous_label = message, label
    if messages and messages[-1]["role"] not in ends:
        raise DataError(
            turn_field(len(messages) - 1),
            f"is {labels[-1]!r} at the end",
            _ENDINGS.get(ends, f"a last turn with role {' or '.join(ends)}"),
            reason="wrong role order",
        )


def indexed(name: str, key: str = "role") -> Callable[[int], str]:
    """Names turn i of list `name` as `name[i].key`."""
    return lambda i: f"{name}[{i}].{key}"
