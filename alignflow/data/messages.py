"""Field and message checks shared by the format normalizers: each raises `DataError` naming the
field, and returns canonical messages (`{"role", "content"}`, content always a string)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
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


def require_field(record: Mapping[str, Any], name: str) -> Any:
    if record.get(name) is None:
        raise DataError(name, "is missing", f"a {name!r} field", reason="missing field")
    return record[name]


def optional_field(record: Mapping[str, Any], name: str) -> Any:
    """An optional field; None and "" (an empty CSV cell) both mean absent."""
    value = record.get(name)
    return None if value is None or value == "" else value


def as_text(value: Any, name: str, required: bool = True) -> str:
    if not isinstance(value, str):
        raise DataError(name, f"is a {type(value).__name__}", "a string", reason="wrong type")
    if required and not value.strip():
        problem = "is empty" if value == "" else "is whitespace-only"
        raise DataError(name, problem, "non-empty text", reason="empty text")
    return value


def as_list(value: Any, name: str, what: str) -> list:
    if not isinstance(value, list) or not value:
        problem = "is empty" if value == [] else f"is a {type(value).__name__}"
        raise DataError(name, problem, f"a non-empty list of {what}", reason="wrong type")
    return value


def as_content(value: Any, name: str, required: bool = True) -> str:
    """A string, or a list of `{"type": "text", "text": ...}` parts (concatenated)."""
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise DataError(
                    f"{name}[{i}]",
                    f"is {part!r:.60}",
                    '{"type": "text", "text": ...}',
                    reason="wrong type",
                )
            texts.append(as_text(part.get("text"), f"{name}[{i}].text", required=False))
        value = "".join(texts)
    return as_text(value, name, required)


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
            f"is a {type(turn).__name__}",
            '{"role": ..., "content": ...}',
            reason="wrong type",
        )
    role = known_role(turn.get("role"), ROLES, f"{name}.role")
    if role == "assistant" and turn.get("tool_calls"):
        calls = parse_tool_calls(turn["tool_calls"], f"{name}.tool_calls")
        content = as_content(turn.get("content") or "", f"{name}.content", required=False)
        return {"role": role, "content": content, "tool_calls": calls}
    return {"role": role, "content": as_content(turn.get("content"), f"{name}.content")}


def as_message_list(value: Any, name: str) -> list[Message]:
    return [
        as_message(turn, f"{name}[{i}]") for i, turn in enumerate(as_list(value, name, "messages"))
    ]


def as_messages(value: Any, name: str, role: str) -> list[Message]:
    """A plain string becomes one `role` turn; a list is read as messages."""
    if isinstance(value, str):
        return [{"role": role, "content": as_text(value, name)}]
    return as_message_list(value, name)


def sharegpt_turn(turn: Any, name: str) -> Message:
    if not isinstance(turn, Mapping):
        raise DataError(
            name, f"is a {type(turn).__name__}", '{"from": ..., "value": ...}', reason="wrong type"
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


def sharegpt_turns(value: Any, name: str) -> list[Message]:
    turns = as_list(value, name, "{from, value} turns")
    return [sharegpt_turn(turn, f"{name}[{i}]") for i, turn in enumerate(turns)]


def with_system(record: Mapping[str, Any], messages: list[Message]) -> list[Message]:
    system = optional_field(record, "system")
    if system is None:
        return messages
    return [{"role": "system", "content": as_text(system, "system")}, *messages]


def preference_pair(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> Row:
    if chosen == rejected:
        raise DataError(
            "chosen",
            "is identical to rejected",
            "two different responses",
            reason="chosen == rejected",
        )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def split_shared_prefix(chosen: list[Message], rejected: list[Message]) -> Row:
    """Implicit prompt: the leading turns chosen and rejected share; the rest are the responses."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if chosen == rejected:
        return preference_pair(chosen, chosen, rejected)  # raises the identical-pair error
    if shared == 0:
        raise DataError(
            "chosen",
            "shares no leading turns with rejected",
            "both to start with the same prompt",
            reason="no shared prompt",
        )
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if len(side) == shared:
            raise DataError(
                name,
                "has nothing after the prompt it shares",
                "a response after the shared prompt",
                reason="no response",
            )
    return preference_pair(chosen[:shared], chosen[shared:], rejected[shared:])


def hh_transcript(value: Any, name: str) -> list[Message]:
    """`"\\n\\nHuman: ...\\n\\nAssistant: ..."` → alternating user/assistant messages."""
    text = "\n\n" + as_text(value, name).lstrip("\n")
    before, *chunks = text.split("\n\nHuman:")
    if before.strip() or not chunks:
        raise DataError(
            name,
            f"starts with {text.strip()!r:.40}",
            'a transcript starting "\\n\\nHuman:"',
            reason="bad transcript",
        )
    messages: list[Message] = []
    for chunk in chunks:
        user, *replies = chunk.split("\n\nAssistant:")
        messages.append({"role": "user", "content": user.strip()})
        messages.extend({"role": "assistant", "content": reply.strip()} for reply in replies)
    for i, message in enumerate(messages):
        if not message["content"]:
            turn = "Human" if message["role"] == "user" else "Assistant"
            raise DataError(
                f"{name} (turn {i + 1}, {turn})", "is empty", "non-empty text", reason="empty text"
            )
    return messages
