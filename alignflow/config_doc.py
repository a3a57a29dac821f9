"""The config's reference, from its one source: each field's description in alignflow/config.py.

The same text is the Prefect run form's help (pydantic puts it in the flow parameter's JSON
schema), `alignflow keys` (a table of every key), `alignflow show-config --doc` (the resolved
config with each key's description above it) and docs/config.md (`alignflow keys --markdown`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from alignflow.config import PipelineConfig, section_of


@dataclass(frozen=True)
class Key:
    """One config key: `policy.ppo.kl.coef`, a list item's `collect.labelers[].kind`, a mapping
    value's `compute.<stage>.nproc`."""

    key: str
    type: str
    default: str
    description: str


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: `int`, `float or null`, `one of: a, b`, `list of str`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return "one of: " + ", ".join(str(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in args)
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return _scalar(value)


def keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> Iterator[Key]:
    """Every key of `model` and the sections inside it, depth first, in declaration order; a
    section's own key is listed before its keys."""
    for name, field in model.model_fields.items():
        key = prefix + name
        section = section_of(field.annotation)
        description = " ".join((field.description or "").split())
        if section is None:
            yield Key(key, type_name(field.annotation), _default(field), description)
            continue
        inner, joint = section
        summary = description or " ".join((inner.__doc__ or "").split())
        yield Key(key, type_name(field.annotation), "", summary)
        yield from keys(inner, key + joint)


def table(prefix: str = "") -> str:
    """`alignflow keys`: key, type, default and description of every key under `prefix`."""
    rows = [key for key in keys() if key.key.startswith(prefix)]
    lines = []
    for row in rows:
        default = f" = {row.default}" if row.default else ""
        lines.append(f"{row.key} ({row.type}){default}")
        if row.description:
            lines.append(f"    {row.description}")
    return "\n".join(lines)


def markdown() -> str:
    """docs/config.md: one table per top-level section."""
    out = [
        "# Configuration reference",
        "",
        "Every key of a pipeline config, its type, default and meaning. Generated from the field "
        "descriptions in `alignflow/config.py` by `alignflow keys --markdown`; the same text is "
        "the Prefect run form's help and `alignflow show-config CONFIG --doc`.",
    ]
    section = None
    for key in keys():
        top = key.key.split(".")[0].split("[")[0]
        if top != section:
            section = top
            out += [
                "",
                f"## `{top}`",
                "",
                "| key | type | default | description |",
                "|---|---|---|---|",
            ]
            if key.key == top:
                out.insert(len(out) - 2, key.description + "\n" if key.description else "")
                continue
        cell = key.description.replace("|", "\\|")
        default = f"`{key.default}`".replace("|", "\\|") if key.default else ""
        out.append(f"| `{key.key}` | {key.type.replace('|', 'or')} | {default} | {cell} |")
    return "\n".join(out) + "\n"


def commented_yaml(cfg: PipelineConfig) -> str:
    """The resolved config as YAML with each key's description as a comment above it."""
    described = {key.key: key.description for key in keys()}
    lines: list[str] = []
    _write(cfg.model_dump(mode="json"), "", "", described, lines)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    """One line of YAML for a value (a string with newlines is quoted with escapes)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return text.removesuffix("\n...").removesuffix(" ...").strip()


def _write(tree: dict, indent: str, prefix: str, described: dict, lines: list[str]) -> None:
    for name, value in tree.items():
        key = prefix + name
        text = described.get(key) or described.get(_as_mapping_key(key))
        if text:
            lines.append(f"{indent}# {text}")
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{name}:")
            _write(value, indent + "  ", key + ".", described, lines)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{indent}{name}:")
            for item in value:
                item_lines: list[str] = []
                _write(item, indent + "    ", key + "[].", described, item_lines)
                first = next(
                    i for i, line in enumerate(item_lines) if not line.lstrip().startswith("#")
                )
                item_lines[first] = f"{indent}  - " + item_lines[first].lstrip()
                lines += item_lines
        else:
            lines.append(f"{indent}{name}: {_scalar(value)}")


def _as_mapping_key(key: str) -> str:
    """`compute.sft.nproc` as the reference names it: `compute.<name>.nproc`."""
    parts = key.split(".")
    return ".".join(parts[:1] + ["<name>"] + parts[2:]) if len(parts) > 2 else ""
