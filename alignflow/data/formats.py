"""Data formats people already use, detected by their keys and normalized to canonical rows.

Canonical rows (docs/architecture.md): SFT `{"messages": [...], "tools"?: [...]}` · preference `{"prompt", "chosen",
"rejected"}` (each a message list) · prompts `{"prompt"}` · unpaired `{"prompt", "completion", "label"}`.
A message is `{"role", "content"}` with role system/user/assistant/tool and `content` always a string
(a list of text parts is concatenated, as chat templates render it), plus `tool_calls` and a
per-turn `loss_weight` (0 = context only, not trained on) where the source has them.

LLaMA-Factory v1 data (content as `[{"type": "text", "value": ...}]` parts, per-turn loss_weight)
is told from the plain `messages` format by that part shape; its preference records have
`chosen_messages`/`rejected_messages`. A classification record `{text, label}` becomes a
user/assistant pair through a `{prompt, completion}` template (`classification_format`).

Function calls are parsed, not kept as text: a sharegpt `function_call` turn becomes
`{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": ...,
"arguments": {...}}}]}` (the shape transformers chat templates read), and `observation` becomes a `tool`
turn. `tools` given as a JSON string is parsed into a list; an empty list is left out.

Every problem raises `DataError` naming the field; `alignflow.data.load` adds file and line and either
raises or, with `on_error="skip"`, counts the record as skipped. Nothing is dropped silently.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from alignflow.data import normalizers as normalize
from alignflow.data.errors import DataError
from alignflow.data.messages import Row, as_text, parse_json, require_field, with_article
from alignflow.data.normalizers import Normalizer

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
    normalize: Normalizer


def _is_llamafactory_v1(record: Mapping[str, Any]) -> bool:
    """Whether some turn's content is a list of `{"type", "value"}` parts (LLaMA-Factory v1);
    OpenAI-style parts say `text`, not `value`, and plain content is a string."""
    turns = parse_json(record.get("messages"), list)  # a CSV cell holds the list as JSON
    return isinstance(turns, list) and any(
        isinstance(turn, Mapping)
        and isinstance(turn.get("content"), list)
        and any(isinstance(part, Mapping) and "value" in part for part in turn["content"])
        for turn in turns
    )


_NOT_SFT_MESSAGES = {"label", "chosen", "rejected", "chosen_messages", "rejected_messages"}
_V1_PAIR = {"chosen_messages", "rejected_messages"}
_PROMPT_ONLY_EXCLUDES = {
    "completion",
    "chosen",
    "rejected",
    "responses",
    "label",
    "messages",
    "conversations",
    *_V1_PAIR,
}
# Keys of other formats: a record with one of them and text/label is not a classification record.
_CLASSIFICATION_EXCLUDES = _PROMPT_ONLY_EXCLUDES - {"label"} | {"prompt", "instruction"}


def _is_messages(record: Mapping[str, Any]) -> bool:
    keys = _keys(record)
    return "messages" in keys and not keys & _NOT_SFT_MESSAGES


def _is_classification(record: Mapping[str, Any]) -> bool:
    keys = _keys(record)
    return {"text", "label"} <= keys and not keys & _CLASSIFICATION_EXCLUDES


# ---- classification: {text, label} through a template ------------------------------------------

CLASSIFICATION_TEMPLATE = {
    "prompt": "Classify the following text.\n\nText: {text}\nLabel:",
    "completion": "{label}",
}


_TEMPLATE_SHAPE = (
    'a "prompt" and a "completion", e.g. {"prompt": "Text: {text}", "completion": "{label}"}'
)


def _template_fields(template: Mapping[str, str]) -> list[str]:
    """The record fields a classification template reads; raises DataError for a bad template."""
    if not isinstance(template, Mapping):
        raise DataError(
            "template",
            f"is {with_article(type(template).__name__)}",
            _TEMPLATE_SHAPE,
            reason="bad template",
        )
    missing = [key for key in CLASSIFICATION_TEMPLATE if key not in template]
    unknown = sorted(set(template) - set(CLASSIFICATION_TEMPLATE))
    if missing or unknown:
        problem = f"lacks {' and '.join(missing)}" if missing else f"has unknown keys {unknown}"
        raise DataError("template", problem, _TEMPLATE_SHAPE, reason="bad template")
    fields: list[str] = []
    for key in ("prompt", "completion"):
        value = template[key]
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"template.{key}", f"is {value!r:.40}", "non-empty text", reason="bad template"
            )
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as error:
            raise DataError(
                f"template.{key}",
                f"is not a format string ({error})",
                "text with {column} fields; write a literal brace as {{ or }}",
                reason="bad template",
            ) from error
        for name in names:
            if not name.isidentifier():
                raise DataError(
                    f"template.{key}",
                    f"has field {{{name}}}",
                    "plain {column} fields naming a column of the record",
                    reason="bad template",
                )
        fields += [name for name in names if name not in fields]
    return fields


def _class_label(value: Any) -> str | int:
    if isinstance(value, str):
        return as_text(value, "label")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise DataError(
        "label",
        f"is {value!r:.40}",
        "a class name or number (a true/false label with prompt/completion is the unpaired format)",
        reason="wrong type",
    )


def _classification(template: Mapping[str, str]) -> Normalizer:
    """A normalizer turning `{text, label, ...}` into a user/assistant pair through `template`.

    Any column may be referenced as `{column}`; a column the record lacks is a DataError.
    """
    fields = _template_fields(template)

    def classify(record: Mapping[str, Any], stats: Counter) -> list[Row]:
        as_text(require_field(record, "text"), "text")
        values = {"label": _class_label(require_field(record, "label"))}
        for name in fields:
            value = values.get(name, record.get(name))
            if value is None:
                raise DataError(
                    name,
                    "is missing",
                    f"{with_article(repr(name))} field "
                    f"(the classification template reads {{{name}}})",
                    reason="missing field",
                )
            values[name] = as_text(value, name) if isinstance(value, str) else value
        try:
            prompt, completion = (
                template[key].format_map(values) for key in ("prompt", "completion")
            )
        except (KeyError, ValueError) as error:  # e.g. {text:d}: a spec the value does not take
            raise DataError(
                "template",
                f"cannot be filled in ({error!r})",
                "format specs that fit the values",
                reason="bad template",
            ) from error
        return [
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": completion},
                ]
            }
        ]

    return classify


def classification_format(template: Mapping[str, str]) -> Format:
    """The "classification" format with `template` ({"prompt": ..., "completion": ...}, each a
    str.format string over the record's columns, e.g. "{text}" and "{label}").

    Raises DataError when the template lacks a key or is not a valid format string.
    """
    return Format(
        "classification",
        "sft",
        "text, label (string or number) → a {prompt, completion} template",
        _is_classification,
        _classification(template),
    )


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "alpaca",
            "sft",
            "instruction, input, output[, system, history]",
            lambda r: {"instruction", "output"} <= _keys(r) and not _is_pair(_keys(r)),
            normalize.alpaca,
        ),
        Format(
            "sharegpt",
            "sft",
            "conversations[{from, value}][, system, tools]",
            lambda r: "conversations" in _keys(r) and not _is_pair(_keys(r)),
            normalize.sharegpt,
        ),
        Format(
            "sharegpt_pairwise",
            "preference",
            "conversations + chosen/rejected {from, value}",
            lambda r: "conversations" in _keys(r) and _is_pair(_keys(r)),
            normalize.sharegpt_pairwise,
        ),
        Format(
            "messages",
            "sft",
            "messages[{role, content}][, tools]",
            lambda r: _is_messages(r) and not _is_llamafactory_v1(r),
            normalize.messages_sft,
        ),
        Format(
            "llamafactory_v1",
            "sft",
            'messages[{role, content: [{"type": "text", "value"}], loss_weight}]',
            lambda r: _is_messages(r) and _is_llamafactory_v1(r),
            normalize.messages_sft,
        ),
        Format(
            "llamafactory_v1_pairwise",
            "preference",
            "chosen_messages, rejected_messages (whole conversations sharing a prompt)",
            lambda r: bool(_keys(r) & _V1_PAIR),
            normalize.llamafactory_v1_pairwise,
        ),
        Format(
            "prompt_completion",
            "sft",
            "prompt, completion",
            lambda r: {"prompt", "completion"} <= _keys(r) and "label" not in _keys(r),
            normalize.prompt_completion,
        ),
        Format(
            "preference",
            "preference",
            "[prompt,] chosen, rejected",
            lambda r: _is_pair(_keys(r)) and "conversations" not in _keys(r) and not _is_hh(r),
            normalize.preference,
        ),
        Format(
            "hh_rlhf",
            "preference",
            'chosen/rejected "\\n\\nHuman: ...\\n\\nAssistant: ..."',
            _is_hh,
            normalize.hh_rlhf,
        ),
        Format(
            "ranking",
            "preference",
            "prompt, responses, rank (1 = best) or scores",
            lambda r: "responses" in _keys(r) and bool(_keys(r) & {"rank", "scores"}),
            normalize.ranking,
        ),
        Format(
            "unpaired",
            "unpaired",
            "messages or prompt/completion, plus label (bool)",
            lambda r: (
                "label" in _keys(r)
                and ("messages" in _keys(r) or {"prompt", "completion"} <= _keys(r))
            ),
            normalize.unpaired,
        ),
        classification_format(CLASSIFICATION_TEMPLATE),
        Format(
            "prompt",
            "prompt",
            "prompt only",
            lambda r: "prompt" in _keys(r) and not _keys(r) & _PROMPT_ONLY_EXCLUDES,
            normalize.prompt_only,
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
