"""Data formats people already use, detected by their keys and normalized to canonical rows.

Canonical rows (DESIGN.md): SFT `{"messages": [...], "tools"?: [...]}` · preference `{"prompt", "chosen",
"rejected"}` (each a message list) · prompts `{"prompt"}` · unpaired `{"prompt", "completion", "label"}`.
A message is `{"role", "content"}` with role system/user/assistant/tool and `content` always a string
(a list of text parts is concatenated, as chat templates render it).

Function calls are parsed, not kept as text: a sharegpt `function_call` turn becomes
`{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": ...,
"arguments": {...}}}]}` (the shape transformers chat templates read), and `observation` becomes a `tool`
turn. `tools` given as a JSON string is parsed into a list; an empty list is left out.

Every problem raises `DataError` naming the field; `load_dataset_rows` adds file and line and either
raises or, with `on_error="skip"`, counts the record as skipped. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

from alignflow.data.errors import DataError
from alignflow.data.preferences import ranking_to_pairs, unique_candidates
from alignflow.data.sources import expand_paths, read_records

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
DETECT_SAMPLE = 100  # records read to detect a format; enough to see a mix, cheap on any file


# ---- field checks -----------------------------------------------------------------------------


def _require(record: Mapping[str, Any], name: str) -> Any:
    if record.get(name) is None:
        raise DataError(name, "is missing", f"a {name!r} field", reason="missing field")
    return record[name]


def _optional(record: Mapping[str, Any], name: str) -> Any:
    """An optional field; None and "" (an empty CSV cell) both mean absent."""
    value = record.get(name)
    return None if value is None or value == "" else value


def _text(value: Any, name: str, required: bool = True) -> str:
    if not isinstance(value, str):
        raise DataError(name, f"is a {type(value).__name__}", "a string", reason="wrong type")
    if required and not value.strip():
        problem = "is empty" if value == "" else "is whitespace-only"
        raise DataError(name, problem, "non-empty text", reason="empty text")
    return value


def _list(value: Any, name: str, what: str) -> list:
    if not isinstance(value, list) or not value:
        problem = "is empty" if value == [] else f"is a {type(value).__name__}"
        raise DataError(name, problem, f"a non-empty list of {what}", reason="wrong type")
    return value


def _content(value: Any, name: str, required: bool = True) -> str:
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
            texts.append(_text(part.get("text"), f"{name}[{i}].text", required=False))
        value = "".join(texts)
    return _text(value, name, required)


def _tool_calls(value: Any, name: str) -> list[dict]:
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


def _tools(value: Any, name: str = "tools") -> list | None:
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


def _message(turn: Any, name: str) -> Message:
    if not isinstance(turn, Mapping):
        raise DataError(
            name,
            f"is a {type(turn).__name__}",
            '{"role": ..., "content": ...}',
            reason="wrong type",
        )
    role = turn.get("role")
    if role not in ROLES:
        raise DataError(
            f"{name}.role",
            f"unknown role {role!r}",
            f"one of {', '.join(ROLES)}",
            reason="unknown role",
        )
    if role == "assistant" and turn.get("tool_calls"):
        calls = _tool_calls(turn["tool_calls"], f"{name}.tool_calls")
        content = _content(turn.get("content") or "", f"{name}.content", required=False)
        return {"role": role, "content": content, "tool_calls": calls}
    return {"role": role, "content": _content(turn.get("content"), f"{name}.content")}


def _messages(value: Any, name: str) -> list[Message]:
    return [_message(turn, f"{name}[{i}]") for i, turn in enumerate(_list(value, name, "messages"))]


def _as_messages(value: Any, name: str, role: str) -> list[Message]:
    """A plain string becomes one `role` turn; a list is read as messages."""
    if isinstance(value, str):
        return [{"role": role, "content": _text(value, name)}]
    return _messages(value, name)


def _sharegpt_turn(turn: Any, name: str) -> Message:
    if not isinstance(turn, Mapping):
        raise DataError(
            name, f"is a {type(turn).__name__}", '{"from": ..., "value": ...}', reason="wrong type"
        )
    speaker = turn.get("from")
    if speaker not in SHAREGPT_ROLES:
        raise DataError(
            f"{name}.from",
            f"unknown role {speaker!r}",
            f"one of {', '.join(SHAREGPT_ROLES)}",
            reason="unknown role",
        )
    value = _text(turn.get("value"), f"{name}.value")
    if speaker == "function_call":
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": _tool_calls(value, f"{name}.value"),
        }
    return {"role": SHAREGPT_ROLES[speaker], "content": value}


def _sharegpt_turns(value: Any, name: str) -> list[Message]:
    turns = _list(value, name, "{from, value} turns")
    return [_sharegpt_turn(turn, f"{name}[{i}]") for i, turn in enumerate(turns)]


def _with_system(record: Mapping[str, Any], messages: list[Message]) -> list[Message]:
    system = _optional(record, "system")
    if system is None:
        return messages
    return [{"role": "system", "content": _text(system, "system")}, *messages]


def _pair(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> Row:
    if chosen == rejected:
        raise DataError(
            "chosen",
            "is identical to rejected",
            "two different responses",
            reason="chosen == rejected",
        )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _split_shared_prefix(chosen: list[Message], rejected: list[Message]) -> Row:
    """Implicit prompt: the leading turns chosen and rejected share; the rest are the responses."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if chosen == rejected:
        return _pair(chosen, chosen, rejected)  # raises the identical-pair error
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
    return _pair(chosen[:shared], chosen[shared:], rejected[shared:])


def _hh_transcript(value: Any, name: str) -> list[Message]:
    """`"\\n\\nHuman: ...\\n\\nAssistant: ..."` → alternating user/assistant messages."""
    text = "\n\n" + _text(value, name).lstrip("\n")
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


# ---- normalizers: record → canonical rows -------------------------------------------------------


def _alpaca(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    instruction = _text(_require(record, "instruction"), "instruction")
    extra = _text(_optional(record, "input") or "", "input", required=False)
    history = _optional(record, "history") or []
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
        messages.append({"role": "user", "content": _text(pair[0], f"history[{i}][0]")})
        messages.append({"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")})
    # LLaMA-Factory joins instruction and input with one newline; so do we.
    user = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages += [
        {"role": "user", "content": user},
        {"role": "assistant", "content": _text(_require(record, "output"), "output")},
    ]
    return [{"messages": _with_system(record, messages)}]


def _sharegpt(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    messages = _with_system(
        record, _sharegpt_turns(_require(record, "conversations"), "conversations")
    )
    tools = _tools(_optional(record, "tools"))
    return [{"messages": messages, **({"tools": tools} if tools else {})}]


def _sharegpt_reply(value: Any, name: str) -> list[Message]:
    return (
        [{"role": "assistant", "content": _text(value, name)}]
        if isinstance(value, str)
        else [_sharegpt_turn(value, name)]
    )


def _sharegpt_pairwise(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    prompt = _with_system(
        record, _sharegpt_turns(_require(record, "conversations"), "conversations")
    )
    chosen = _sharegpt_reply(_require(record, "chosen"), "chosen")
    return [_pair(prompt, chosen, _sharegpt_reply(_require(record, "rejected"), "rejected"))]


def _messages_sft(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    tools = _tools(_optional(record, "tools"))
    return [
        {
            "messages": _messages(_require(record, "messages"), "messages"),
            **({"tools": tools} if tools else {}),
        }
    ]


def _prompt_completion(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    prompt = _as_messages(_require(record, "prompt"), "prompt", "user")
    return [
        {
            "messages": prompt
            + _as_messages(_require(record, "completion"), "completion", "assistant")
        }
    ]


def _preference(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    chosen_value, rejected_value = _require(record, "chosen"), _require(record, "rejected")
    if _optional(record, "prompt") is not None:
        prompt = _as_messages(record["prompt"], "prompt", "user")
        chosen = _as_messages(chosen_value, "chosen", "assistant")
        return [_pair(prompt, chosen, _as_messages(rejected_value, "rejected", "assistant"))]
    if isinstance(chosen_value, str):
        raise DataError(
            "prompt",
            "is missing and chosen is plain text",
            "a prompt field, or chosen/rejected as message lists",
            reason="missing field",
        )
    return [
        _split_shared_prefix(
            _messages(chosen_value, "chosen"), _messages(rejected_value, "rejected")
        )
    ]


def _hh_rlhf(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    chosen = _hh_transcript(_require(record, "chosen"), "chosen")
    return [_split_shared_prefix(chosen, _hh_transcript(_require(record, "rejected"), "rejected"))]


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
    prompt = _as_messages(_require(record, "prompt"), "prompt", "user")
    raw = _list(_require(record, "responses"), "responses", "responses")
    responses = [_as_messages(r, f"responses[{i}]", "assistant") for i, r in enumerate(raw)]
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
    return [_pair(prompt, responses[better], responses[worse]) for better, worse in pairs]


def _unpaired(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    label = _require(record, "label")
    if not isinstance(label, bool):
        raise DataError("label", f"is {label!r:.40}", "true or false", reason="wrong type")
    if "messages" in record:
        messages = _messages(record["messages"], "messages")
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
        prompt = _as_messages(_require(record, "prompt"), "prompt", "user")
        completion = _as_messages(_require(record, "completion"), "completion", "assistant")
    return [{"prompt": prompt, "completion": completion, "label": label}]


def _prompt_only(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    return [{"prompt": _as_messages(_require(record, "prompt"), "prompt", "user")}]


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


# ---- loading -------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What loading did: counts that add up, and every skipped record's one-line problem."""

    format: str
    kind: str
    records_read: int = 0
    rows_emitted: int = 0
    ties_skipped: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason → records skipped
    problems: list[str] = field(default_factory=list)

    @property
    def records_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, error: DataError) -> None:
        self.skipped[error.reason] += 1
        self.problems.append(str(error))


def _position(path: str | Path) -> Callable[[DataError], tuple[int, int]]:
    """Sort key putting errors in reading order: file (as globbed), then line or record index."""
    order = {str(file): rank for rank, file in enumerate(expand_paths(path))}
    return lambda error: (order.get(str(error.source), 0), int(str(error.location).split()[-1]))


def load_dataset_rows(
    path: str | Path, format: str | None = None, on_error: str = "raise"
) -> tuple[list[Row], LoadReport]:
    """Read a file or glob, detect (or take) its format, and normalize every record to canonical rows.

    Args:
        path: a JSON/JSONL/CSV/Parquet file or a glob of them.
        format: a name from FORMATS to skip detection.
        on_error: "raise" stops at the first bad record (nothing returned); "skip" counts and lists it.
    Returns:
        (canonical rows, LoadReport)
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error is {on_error!r}; expected 'raise' or 'skip'")
    if format is not None and format not in FORMATS:
        raise DataError("format", f"unknown format {format!r}", f"one of {', '.join(FORMATS)}").at(
            str(path), None
        )
    bad_lines: list[DataError] | None = [] if on_error == "skip" else None
    records = read_records(path, bad_lines)
    head = list(islice(records, DETECT_SAMPLE))
    if format is None:
        try:
            format = detect_format(record.data for record in head)
        except DataError as error:
            raise error.at(str(path), None) from None
    spec, stats = FORMATS[format], Counter()
    report, rows, errors = LoadReport(spec.name, spec.kind), [], []
    for record in chain(head, records):
        report.records_read += 1
        try:
            rows.extend(spec.normalize(record.data, stats))
        except DataError as error:
            located = error.at(record.source, record.location)
            if on_error == "raise":
                raise located from None
            errors.append(located)
    report.records_read += len(bad_lines or [])
    for error in sorted(errors + (bad_lines or []), key=_position(path)):
        report.skip(error)  # in file order: malformed lines were found while reading, not here
    if report.records_read == 0:
        raise DataError("records", "none found", "at least one record").at(str(path), None)
    report.rows_emitted, report.ties_skipped = len(rows), stats["ties_skipped"]
    return rows, report
