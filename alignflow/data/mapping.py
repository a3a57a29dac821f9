"""Column, message-key and role renaming, so a dataset with its own names loads as a known format.

Like LLaMA-Factory's `dataset_info.json`, each mapping reads `canonical name: name in your data`:

    columns:      {instruction: question, output: answer}   # top-level fields
    message_keys: {role: speaker, content: text}            # keys inside each message / turn
    roles:        {user: customer, assistant: agent}        # values of the role (or `from`) key

Renaming happens on the raw record, before format detection, so detection and every error message
then speak of the canonical names. A source column that a record lacks is simply not renamed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROLE_KEYS = ("role", "from")  # where a message keeps its speaker: messages format, sharegpt


def _decoded(value: Any, message_keys: set[str]) -> Any:
    """A CSV cell holding a JSON list or object of messages (objects with a key the mapping renames),
    decoded so its keys can be renamed; anything else (plain text included) unchanged."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        items = decoded if isinstance(decoded, list) else [decoded]
        if items and all(isinstance(item, Mapping) and message_keys & set(item) for item in items):
            return decoded
    return value


@dataclass(frozen=True)
class ColumnMapping:
    columns: Mapping[str, str] = field(default_factory=dict)
    message_keys: Mapping[str, str] = field(default_factory=dict)
    roles: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, table in (("message_keys", self.message_keys), ("roles", self.roles)):
            sources = list(table.values())
            if len(set(sources)) != len(sources):
                raise ValueError(f"{name} maps two canonical names to the same source name")

    def __bool__(self) -> bool:
        return bool(self.columns or self.message_keys or self.roles)

    def apply(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of record with columns renamed and every message's keys and role renamed."""
        renamed_from = set(self.columns.values())
        out = {key: value for key, value in record.items() if key not in renamed_from}
        for canonical, source in self.columns.items():
            if source in record:
                out[canonical] = record[source]
        if self.message_keys or self.roles:
            out = {key: self._messages(value) for key, value in out.items()}
        return out

    def _messages(self, value: Any) -> Any:
        value = _decoded(value, {*self.message_keys.values(), *ROLE_KEYS})
        if isinstance(value, list):
            return [self._message(item) if isinstance(item, Mapping) else item for item in value]
        return self._message(value) if isinstance(value, Mapping) else value

    def _message(self, message: Mapping[str, Any]) -> dict[str, Any]:
        keys = {source: canonical for canonical, source in self.message_keys.items()}
        roles = {source: canonical for canonical, source in self.roles.items()}
        out = {keys.get(key, key): value for key, value in message.items()}
        for key in ROLE_KEYS:
            if isinstance(out.get(key), str):
                out[key] = roles.get(out[key], out[key])
        return out
