"""Prepare the pipeline's datasets: load every configured source, clean, split, mix, write JSONL.

One pass per role (held-out prompts first, so training rows overlapping them can be removed), each
streaming: a record is read, normalized, cleaned, assigned a split and written before the next is
read, so memory holds the dedup state, never the rows. What happened to every record is counted:

    records read = rows' source records + skipped (per reason)
    rows emitted = kept (train + eval) + removed (per reason)

Roles and the canonical rows they need: `sft` → `{"messages"}`; `preferences` → preference rows
`{"prompt", "chosen", "rejected"}` or unpaired ones `{"prompt", "completion", "label"}`, each with a
`split` (by a hash of its prompt, so a prompt's pairs never straddle train and eval) and
`origin: "user"`; `preference_prompts`, `rl_prompts`, `heldout` → `{"prompt"}` (SFT, preference and
unpaired rows give their prompt: the turns before the final assistant reply). Columns named in a
dataset's `keep_columns` ride along on each row.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from alignflow.config import CleanConfig, DataConfig, DatasetConfig
from alignflow.data.clean import REASONS, Cleaner, CleanSettings, split_of
from alignflow.data.errors import DataError
from alignflow.data.load import open_dataset
from alignflow.data.mapping import ColumnMapping
from alignflow.data.messages import Row
from alignflow.stages import SFT_EVAL_FILE, dataset_file

# heldout first: overlap needs it
ROLES = ("heldout", "sft", "preferences", "preference_prompts", "rl_prompts")
TRAINING_ROLES = ROLES[1:]
PAIR_KINDS = ("preference", "unpaired")  # what the data layer may give the preferences role
HELD_OUT_ROLES = ("sft", "preferences")  # roles whose rows are split into train and eval


@dataclass
class DatasetReport:
    """One source's loading counts."""

    path: str
    format: str
    records_read: int = 0
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first few skipped records' errors
    ties_skipped: int = 0
    weight: float = 1.0


@dataclass
class RoleReport:
    """One output role: its sources, what cleaning removed, and what was written."""

    role: str
    datasets: list[DatasetReport] = field(default_factory=list)
    rows_in: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    kept: int = 0  # rows_in minus removed
    train: int = 0  # rows written for training (weights applied)
    eval: int = 0  # rows held out (sft and preferences)

    def metrics(self) -> dict[str, float]:
        out = {
            f"{self.role}_rows_in": self.rows_in,
            f"{self.role}_rows_kept": self.kept,
            f"{self.role}_rows": self.train,
        }
        if self.role in HELD_OUT_ROLES:
            out[f"{self.role}_eval_rows"] = self.eval
        out |= {f"{self.role}_removed_{reason}": n for reason, n in self.removed.items()}
        skipped: Counter[str] = Counter()
        for dataset in self.datasets:
            skipped.update(dataset.skipped)
        out |= {f"{self.role}_skipped_{_slug(reason)}": n for reason, n in skipped.items()}
        return out

    def _removed_words(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in self.removed.items() if n) or "none"

    def summary(self) -> str:
        """`N rows in, removed: ..., M held out` in words."""
        held = f", {self.eval} held out for evaluation" if self.eval else ""
        return f"{self.rows_in} rows in, removed: {self._removed_words()}{held}"

    def warnings(self) -> list[str]:
        """What a person should see before trusting the run: near dedup removing a large share of
        the rows (prompts written from one template look alike to MinHash)."""
        near = self.removed.get("duplicate_near", 0)
        if not self.rows_in or near / self.rows_in < NEAR_DEDUP_WARN_FRACTION:
            return []
        return [
            f"data.{self.role}: near dedup removed {near} of {self.rows_in} rows "
            f"({near / self.rows_in:.0%}); rows written from a shared template look alike to it: "
            "raise data.clean.near_dedup_threshold or set it to null if they are distinct"
        ]

    def lines(self) -> list[str]:
        out = []
        for d in self.datasets:
            skipped = ", ".join(f"{n} {reason}" for reason, n in d.skipped.items()) or "none"
            out.append(
                f"{self.role}: {d.path} [{d.format}] {d.records_read} records -> {d.rows} rows "
                f"(skipped: {skipped}; weight {d.weight:g})"
            )
        held = self.role in HELD_OUT_ROLES
        written = f"{self.train} train, {self.eval} eval" if held else self.train
        out.append(
            f"{self.role}: {self.rows_in} rows in, removed: {self._removed_words()}; wrote {written}"
        )
        return out


MAX_PROBLEMS_KEPT = 20
# Near dedup removing this share of a role or more is reported as a warning, not only counted.
NEAR_DEDUP_WARN_FRACTION = 0.1


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")


def as_prompt(row: Row, keep_reply: bool = False) -> Row:
    """A prompt row from any canonical row: its prompt, or an SFT row's turns before the last reply.
    With `keep_reply` (held-out rows) that reply, or a completion that is not a KTO-style labelled
    one, is kept as the row's `reference` answer (unless the row keeps a `reference` of its own)."""
    extra = {k: v for k, v in row.items() if k not in ("messages", "chosen", "rejected", "tools")}
    completion = extra.pop("completion", None)
    labelled = extra.pop("label", None) is not None
    if keep_reply and "reference" not in extra:
        messages = row.get("messages") or []
        if messages and messages[-1]["role"] == "assistant":
            extra["reference"] = messages[-1]["content"]
        elif isinstance(completion, str) and not labelled:
            extra["reference"] = completion
    if "messages" in row:
        messages = row["messages"]
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise DataError(
                "messages", "has no turn before the reply", "a prompt", reason="no prompt"
            )
        return {**extra, "prompt": messages}
    return extra


def copies(row: Row, weight: float) -> int:
    """How many times a row enters the mix: floor(weight), plus one more for a hash-chosen
    (weight mod 1) share of rows, so it is deterministic and stable as data grows."""
    whole, part = divmod(weight, 1.0)
    return int(whole) + (1 if part and split_of(row, part, salt="weight") == "eval" else 0)


def clean_settings(cfg: CleanConfig, role: str) -> CleanSettings:
    return CleanSettings(
        exact_dedup=cfg.exact_dedup,
        # Not on pairs: a ranking's pairs share their prompt and a response by design.
        near_threshold=None if role == "preferences" else cfg.near_dedup_threshold,
        min_chars=cfg.min_chars,
        # One length measure per pass: tokens when max_tokens is set (length_fn), else characters.
        max_chars=None if role == "heldout" else (cfg.max_tokens or cfg.max_chars),
        overlap_n=cfg.eval_overlap_ngram or 8,
    )


def _open(spec: DatasetConfig, on_error: str):
    mapping = ColumnMapping(spec.columns, spec.message_keys, spec.roles)
    return open_dataset(
        spec.path,
        spec.format,
        on_error,
        mapping=mapping or None,
        template=spec.template,
        keep_columns=spec.keep_columns,
        split=spec.split,
    )


def _role_rows(role: str, spec: DatasetConfig, rows: Iterator[Row], kind: str) -> Iterator[Row]:
    if role == "sft":
        if kind != "sft":
            raise DataError(
                "format", f"gives {kind} rows", "an SFT format (messages) for data.sft"
            ).at(spec.path, None)
        yield from rows
        return
    if role == "preferences":
        if kind not in PAIR_KINDS:
            raise DataError(
                "format",
                f"gives {kind} rows",
                "a preference format (chosen/rejected pairs, HH-RLHF, rankings or scores, "
                "LLaMA-Factory pairwise, KTO-style unpaired) for data.preferences",
            ).at(spec.path, None)
        for row in rows:
            yield {**row, "origin": "user"}
        return
    for row in rows:
        yield as_prompt(row, keep_reply=role == "heldout")


class _Writer:
    """JSONL lines into `<name>.partial`, renamed on close: a crash never leaves a complete-looking file."""

    def __init__(self, path: Path) -> None:
        self.path, self.partial = path, path.with_name(path.name + ".partial")
        self.handle: TextIO = self.partial.open("w", encoding="utf-8")

    def write(self, row: Row) -> None:
        self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self, complete: bool) -> None:
        self.handle.close()
        if complete:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink()


def prepare_role(
    role: str,
    specs: list[DatasetConfig],
    out_dir: Path,
    cfg: DataConfig,
    eval_rows: list[Row],
    length_fn: Callable[[str], int] | None = None,
    pair_split: tuple[float, str] = (0.0, ""),
) -> RoleReport:
    """Stream one role's datasets into `<role>.jsonl` (and `sft_eval.jsonl` for sft). Preference
    rows are split train/eval by `pair_split` (fraction, salt) on their prompt and keep `split`."""
    report = RoleReport(role)
    settings = clean_settings(cfg.clean, role)
    cleaner = Cleaner(
        settings,
        eval_rows if role != "heldout" and cfg.clean.eval_overlap_ngram else (),
        length_fn if role != "heldout" else None,
    )
    train = _Writer(out_dir / dataset_file(role))
    held = _Writer(out_dir / SFT_EVAL_FILE) if role == "sft" else None
    complete = False
    try:
        for spec in specs:
            rows, loaded = _open(spec, cfg.on_error)
            for row in _role_rows(role, spec, rows, loaded.kind):
                if cleaner.removal_reason(row) is not None:
                    continue
                if role == "heldout":
                    eval_rows.append(row)
                if held is not None and split_of(row, cfg.eval_fraction) == "eval":
                    held.write(row)
                    report.eval += 1
                    continue
                if role == "preferences":
                    row = {**row, "split": split_of({"prompt": row["prompt"]}, *pair_split)}
                    if row["split"] == "eval":  # written once: evaluation rows carry no weight
                        train.write(row)
                        report.eval += 1
                        continue
                for _ in range(copies(row, spec.weight)):
                    train.write(row)
                    report.train += 1
            report.datasets.append(
                DatasetReport(
                    path=spec.path,
                    format=loaded.format,
                    records_read=loaded.records_read,
                    rows=loaded.rows_emitted,
                    skipped=dict(loaded.skipped),
                    problems=loaded.problems[:MAX_PROBLEMS_KEPT],
                    ties_skipped=loaded.ties_skipped,
                    weight=spec.weight,
                )
            )
        report.rows_in, report.kept = cleaner.report.rows_in, cleaner.report.rows_out
        report.removed = dict(cleaner.report.removed)
        _check_enough(report, cfg.min_examples, ", ".join(spec.path for spec in specs))
        complete = True
    finally:
        train.close(complete)
        if held is not None:
            held.close(complete)
    return report


def _check_enough(report: RoleReport, minimum: int, sources: str) -> None:
    """A DataError when cleaning left a role nothing, or (training roles) fewer than `minimum`."""
    if report.train == 0:
        raise DataError(
            report.role,
            "no rows left after loading and cleaning",
            "at least one row",
            reason="empty",
        ).at(sources, None)
    if report.role != "heldout" and report.train < minimum:
        raise DataError(
            f"data.{report.role}",
            f"{report.train} training rows after loading and cleaning ({report.summary()})",
            f"at least data.min_examples ({minimum}): bring more data, loosen data.clean, or "
            "lower data.min_examples",
            reason="too few rows",
        ).at(sources, None)


def prepare_datasets(
    cfg: DataConfig,
    datasets: dict[str, list[DatasetConfig]],
    out_dir: Path,
    length_fn: Callable[[str], int] | None = None,
    pair_split: tuple[float, str] = (0.0, ""),
) -> dict[str, RoleReport]:
    """The JSONL of every role `datasets` lists in out_dir, held-out prompts first. Returns the
    per-role reports."""
    eval_rows: list[Row] = []
    return {
        role: prepare_role(role, datasets[role], out_dir, cfg, eval_rows, length_fn, pair_split)
        for role in ROLES
        if datasets.get(role)
    }


def report_dict(reports: dict[str, RoleReport]) -> dict[str, Any]:
    return {role: asdict(report) for role, report in reports.items()}


def fingerprint(spec: DatasetConfig) -> list[Any]:
    """What identifies a source's content for the stage cache key: each local file's path, size and
    modification time (like make), or the hub id and split."""
    from alignflow.data.sources import expand_paths

    path = Path(spec.path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        try:
            files = expand_paths(spec.path)
        except DataError:
            return [spec.path, spec.split]  # a hub id: its name is all we know before loading
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return [hashlib.sha256(json.dumps(stats).encode()).hexdigest(), spec.split]
