"""One normalizer per input format: a raw record in, its canonical rows (docs/architecture.md) out.

A normalizer is `(record, stats) -> list[Row]`; `stats` counts what is dropped on purpose (ranking
ties). Every problem raises `DataError` naming the field. Message lists are checked for role order
(see `messages.check_turn_order`): SFT conversations end with an assistant turn, prompts end with a
user (or tool) turn, and chosen/rejected/completions are assistant replies.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from alignflow.data.errors import DataError
from alignflow.data.messages import (
    PROMPT_ENDS,
    Message,
    Row,
    as_list,
    as_message_list,
    as_messages,
    as_text,
    check_turn_order,
    indexed,
    optional_field,
    parse_json,
    parse_tools,
    require_field,
    sharegpt_turn,
    sharegpt_turns,
    with_article,
    with_system,
)
from alignflow.data.preferences import ranking_to_pairs, unique_candidates

Normalizer = Callable[[Mapping[str, Any], Counter], list[Row]]

# ---- shared pieces -------------------------------------------------------------------------------


def _prompt(value: Any, name: str) -> list[Message]:
    prompt = as_messages(value, name, "user")
    check_turn_order(prompt, indexed(name), ends=PROMPT_ENDS)
    return prompt


def _reply(value: Any, name: str, prompt: list[Message]) -> list[Message]:
    reply = as_messages(value, name, "assistant")
    check_turn_order(reply, indexed(name), after=prompt[-1])
    return reply


def _conversation(value: Any, name: str) -> list[Message]:
    messages = as_message_list(value, name)
    check_turn_order(messages, indexed(name))
    return messages


def _with_tools(row: Row, record: Mapping[str, Any]) -> Row:
    tools = parse_tools(optional_field(record, "tools"))
    return {**row, "tools": tools} if tools else row


# ---- SFT -----------------------------------------------------------------------------------------


def alpaca(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    instruction = as_text(require_field(record, "instruction"), "instruction")
    extra = as_text(optional_field(record, "input") or "", "input", required=False)
    history = parse_json(optional_field(record, "history") or [], list)
    if not isinstance(history, list):
        raise DataError(
            "history",
            f"is {with_article(type(history).__name__)}",
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


def sharegpt(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    turns = sharegpt_turns(require_field(record, "conversations"), "conversations", ("assistant",))
    return [_with_tools({"messages": with_system(record, turns)}, record)]


def messages_sft(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    """`messages` rows, plain or LLaMA-Factory v1 (content parts, per-turn loss_weight) alike."""
    return [
        _with_tools(
            {"messages": _conversation(require_field(record, "messages"), "messages")}, record
        )
    ]


def prompt_completion(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    prompt = _prompt(require_field(record, "prompt"), "prompt")
    return [
        {"messages": prompt + _reply(require_field(record, "completion"), "completion", prompt)}
    ]


# ---- preference ----------------------------------------------------------------------------------


def preference_pair(
    prompt: list[Message],
    chosen: list[Message],
    rejected: list[Message],
    names: tuple[str, str] = ("chosen", "rejected"),
) -> Row:
    if chosen == rejected:
        raise DataError(
            names[0],
            f"is identical to {names[1]}",
            "two different responses",
            reason="chosen == rejected",
        )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def split_shared_prefix(
    chosen: list[Message],
    rejected: list[Message],
    names: tuple[str, str] = ("chosen", "rejected"),
    turn_field: Callable[[str, int], str] = lambda side, i: f"{side}[{i}].role",
) -> Row:
    """Implicit prompt: the leading turns chosen and rejected share; the rest are the responses.

    Callers check each side's role order first. Here the responses must start with an assistant
    turn, so that the shared prompt ends where the model is asked to reply. `names` and
    `turn_field` name the two sides and a turn in errors.
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if chosen == rejected:
        return preference_pair(chosen, chosen, rejected, names)  # raises the identical-pair error
    if shared == 0:
        raise DataError(
            names[0],
            f"shares no leading turns with {names[1]}",
            "both to start with the same prompt",
            reason="no shared prompt",
        )
    for name, side in zip(names, (chosen, rejected), strict=True):
        if len(side) == shared:
            raise DataError(
                name,
                "has nothing after the prompt it shares",
                "a response after the shared prompt",
                reason="no response",
            )
        if side[shared]["role"] != "assistant":
            raise DataError(
                turn_field(name, shared),
                f"is {side[shared]['role']!r} where {names[0]} and {names[1]} first differ",
                "the two to differ from an assistant reply on, after a shared prompt",
                reason="wrong role order",
            )
    return preference_pair(chosen[:shared], chosen[shared:], rejected[shared:], names)


def _sharegpt_reply(value: Any, name: str, prompt: list[Message]) -> list[Message]:
    turn = parse_json(value, dict)  # a CSV cell may hold the {from, value} object as JSON
    if isinstance(value, str) and not (isinstance(turn, Mapping) and "from" in turn):
        reply, field, labels = [{"role": "assistant", "content": as_text(value, name)}], name, None
    else:
        reply, field, labels = [sharegpt_turn(turn, name)], f"{name}.from", [turn["from"]]
    check_turn_order(reply, lambda i: field, after=prompt[-1], labels=labels)
    return reply


def sharegpt_pairwise(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    turns = sharegpt_turns(require_field(record, "conversations"), "conversations", PROMPT_ENDS)
    prompt = with_system(record, turns)
    chosen = _sharegpt_reply(require_field(record, "chosen"), "chosen", prompt)
    return [
        preference_pair(
            prompt, chosen, _sharegpt_reply(require_field(record, "rejected"), "rejected", prompt)
        )
    ]


def preference(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    chosen_value, rejected_value = (
        require_field(record, "chosen"),
        require_field(record, "rejected"),
    )
    if optional_field(record, "prompt") is not None:
        prompt = _prompt(record["prompt"], "prompt")
        chosen = _reply(chosen_value, "chosen", prompt)
        return [preference_pair(prompt, chosen, _reply(rejected_value, "rejected", prompt))]
    chosen_value = parse_json(chosen_value, list)
    if isinstance(chosen_value, str):
        raise DataError(
            "prompt",
            "is missing and chosen is plain text",
            "a prompt field, or chosen/rejected as message lists",
            reason="missing field",
        )
    return [
        split_shared_prefix(
            _conversation(chosen_value, "chosen"), _conversation(rejected_value, "rejected")
        )
    ]


def llamafactory_v1_pairwise(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    """LLaMA-Factory v1 `chosen_messages`/`rejected_messages`: two whole conversations whose
    shared leading turns are the prompt, as LLaMA-Factory renders them."""
    names = ("chosen_messages", "rejected_messages")
    if optional_field(record, "messages") is not None:
        raise DataError(
            "messages",
            "is given together with chosen_messages/rejected_messages",
            "either messages (SFT) or chosen_messages and rejected_messages (preference)",
            reason="ambiguous record",
        )
    chosen, rejected = (_conversation(require_field(record, name), name) for name in names)
    return [split_shared_prefix(chosen, rejected, names)]


def _hh_transcript(value: Any, name: str) -> list[Message]:
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
            raise DataError(
                _hh_turn(name, messages, i), "is empty", "non-empty text", reason="empty text"
            )
    check_turn_order(messages, lambda i: _hh_turn(name, messages, i))
    return messages


def _hh_turn(name: str, messages: list[Message], i: int) -> str:
    speaker = "Human" if messages[i]["role"] == "user" else "Assistant"
    return f"{name} (turn {i + 1}, {speaker})"


def hh_rlhf(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    sides = {
        name: _hh_transcript(require_field(record, name), name) for name in ("chosen", "rejected")
    }
    return [
        split_shared_prefix(
            sides["chosen"],
            sides["rejected"],
            turn_field=lambda side, i: _hh_turn(side, sides[side], i),
        )
    ]


def _scores(record: Mapping[str, Any], count: int) -> list[float]:
    """Per-response scores, higher = better; a rank (1 = best) is turned into its negation."""
    given = [name for name in ("rank", "scores") if optional_field(record, name) is not None]
    if len(given) == 2:
        raise DataError(
            "rank",
            "is given together with scores",
            "either rank or scores",
            reason="rank and scores",
        )
    name = given[0]
    values = parse_json(record[name], list)
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


def ranking(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    prompt = _prompt(require_field(record, "prompt"), "prompt")
    raw = as_list(require_field(record, "responses"), "responses", "responses")
    responses = [_reply(r, f"responses[{i}]", prompt) for i, r in enumerate(raw)]
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


# ---- unpaired and prompts ------------------------------------------------------------------------

_BOOLEANS = {"true": True, "false": False}  # CSV cells spell booleans as text


def _bool_label(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    if not isinstance(value, bool):
        raise DataError("label", f"is {value!r:.40}", "true or false", reason="wrong type")
    return value


def unpaired(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    label = _bool_label(require_field(record, "label"))
    if optional_field(record, "messages") is not None:
        messages = as_message_list(record["messages"], "messages")
        last = len(messages) - 1
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError(
                f"messages[{last}].role",
                f"is {messages[-1]['role']!r} in a {len(messages)}-turn list",
                "a prompt followed by a final assistant turn",
                reason="no completion",
            )
        check_turn_order(messages, indexed("messages"))
        prompt, completion = messages[:-1], messages[-1:]
    else:
        prompt = _prompt(require_field(record, "prompt"), "prompt")
        completion = _reply(require_field(record, "completion"), "completion", prompt)
    return [{"prompt": prompt, "completion": completion, "label": label}]


def prompt_only(record: Mapping[str, Any], stats: Counter) -> list[Row]:
    return [{"prompt": _prompt(require_field(record, "prompt"), "prompt")}]
