"""Labelers that need no person in the loop: a rule (any importable scoring function), trained
reward models, and an outside annotation team through exported and imported files. The LLM judge
is in llm_judge.py; people label through the paused flow (tasks/label.py).

Every labeler turns Comparisons into PreferenceRecords (alignflow.feedback.records).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from alignflow.config import LabelerConfig, RewardsConfig, RuleRewardConfig
from alignflow.data.preferences import unique_candidates
from alignflow.feedback.records import (
    Comparison,
    PreferenceRecord,
    letter,
    parse_ranking,
)


class LabelError(ValueError):
    """Answers that cannot be used; the message names the file, line and field."""


def build_comparisons(
    rows: Sequence[dict], candidates: Sequence[Sequence[str]]
) -> tuple[list[Comparison], Counter]:
    """One comparison per prompt row from its sampled candidates, identical ones collapsed.
    Prompts left with a single distinct candidate are counted (`single_candidate`) and skipped;
    so is a comparison identical to an earlier one (`duplicate_comparison`: a prompt that came
    twice and drew the same candidates), which would only count its pairs twice."""
    comparisons, counts, seen = [], Counter(), set()
    for row, texts in zip(rows, candidates, strict=True):
        distinct = unique_candidates(texts)
        counts["candidates_collapsed"] += len(texts) - len(distinct)
        if len(distinct) < 2:
            counts["single_candidate"] += 1
            continue
        meta = {key: value for key, value in row.items() if key != "prompt"}
        comparison = Comparison.of(row["prompt"], distinct, meta)
        if comparison.id in seen:
            counts["duplicate_comparison"] += 1
            continue
        seen.add(comparison.id)
        comparisons.append(comparison)
    return comparisons, counts


def labeler_id(labeler: LabelerConfig) -> str:
    if labeler.name:
        return labeler.name
    source = {"rule": labeler.function, "reward_model": ",".join(labeler.models),
              "llm_judge": labeler.llm_judge.model if labeler.llm_judge else None}  # fmt: skip
    return f"{labeler.kind}:{source[labeler.kind]}" if source.get(labeler.kind) else labeler.kind


def score_comparisons(rewarder, comparisons: Sequence[Comparison], labeler: str):
    """Rank each comparison's candidates by a Rewarder's total score (higher is better)."""
    prompts, completions, rows, owners = [], [], [], []
    for index, comparison in enumerate(comparisons):
        for candidate in comparison.candidates:
            prompts.append(comparison.prompt)
            completions.append(candidate)
            rows.append({"prompt": comparison.prompt, **comparison.meta})
            owners.append(index)
    totals, _ = rewarder.score(prompts, completions, rows) if prompts else ([], {})
    scores: list[list[float]] = [[] for _ in comparisons]
    for owner, value in zip(owners, list(totals), strict=True):
        scores[owner].append(float(value))
    return [
        PreferenceRecord.from_scores(comparison, values, labeler)
        for comparison, values in zip(comparisons, scores, strict=True)
    ]


def rule_rewarder(function: str, tokenizer, where: str):
    """A Rewarder that is one rule with weight 1 (the same call signature as rule rewards)."""
    from alignflow.rl.rewards import Rewarder, Rule, import_rule

    rule = Rule(function.replace(":", "."), import_rule(function, where), 1.0)
    only_rule = RewardsConfig(model_weight=0.0, rules=[RuleRewardConfig(function=function)])
    return Rewarder(only_rule, tokenizer, [], [rule])


def reward_model_rewarder(
    paths: Sequence[str], rewards: RewardsConfig, tokenizer, trust: bool, device: str | None
):
    """A Rewarder of trained reward models, combined as `rewards.ensemble` says (no rules)."""
    from alignflow.models import load_scalar_head_model
    from alignflow.rl.rewards import Rewarder

    models = [load_scalar_head_model(p, trust, tokenizer.pad_token_id, device) for p in paths]
    only_models = rewards.model_copy(
        update={"rules": [], "length_penalty": 0.0, "model_weight": 1.0}
    )
    return Rewarder(only_models, tokenizer, models)


# ---- an outside annotation team: export, then import their answers ----------------------------

EXPORT_STEM = "to_label"


def export_comparisons(comparisons: Sequence[Comparison], directory: Path, fmt: str) -> Path:
    """Write the comparisons for annotators: id, the conversation, candidates by letter, and
    empty `ranking` (e.g. "B>A=C"), `labeler`, `confidence` (0-1) and `comment` columns."""
    path = directory / f"{EXPORT_STEM}.{fmt}"
    rows = []
    for comparison in comparisons:
        row = {"comparison_id": comparison.id,
               "prompt": "\n".join(f"{m['role']}: {m['content']}" for m in comparison.prompt)}  # fmt: skip
        row.update({letter(i): text for i, text in enumerate(comparison.candidates)})
        row.update(ranking="", labeler="", confidence="", comment="")
        rows.append(row)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        width = max(len(c.candidates) for c in comparisons)
        fields = ["comparison_id", "prompt", *(letter(i) for i in range(width)),
                  "ranking", "labeler", "confidence", "comment"]  # fmt: skip
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return path


def _answer_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for each answer; malformed lines are one-line LabelErrors."""
    if not path.is_file():
        raise LabelError(f"{path}: no such answers file")
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return [(number + 2, row) for number, row in enumerate(csv.DictReader(handle))]
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise LabelError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise LabelError(f"{path}:{number}: expected a JSON object")
        rows.append((number, row))
    return rows


def import_answers(
    path: Path, comparisons: Sequence[Comparison], default_labeler: str
) -> tuple[list[PreferenceRecord], Counter]:
    """Records from an annotation team's answers, each checked against the exported comparison
    with its id. Rows left unanswered (empty ranking) are counted, not errors."""
    by_id = {comparison.id: comparison for comparison in comparisons}
    records, counts = [], Counter()
    for number, row in _answer_rows(path):
        where = f"{path}:{number}"
        comparison = by_id.get(str(row.get("comparison_id", "")))
        if comparison is None:
            raise LabelError(
                f"{where}: comparison_id {row.get('comparison_id')!r} was not exported"
            )
        text = str(row.get("ranking") or "").strip()
        if not text:
            counts["unanswered"] += 1
            continue
        try:
            ranking = parse_ranking(text.upper(), len(comparison.candidates))
            confidence = row.get("confidence")
            record = PreferenceRecord(
                comparison_id=comparison.id, prompt=comparison.prompt,
                candidates=comparison.candidates, ranking=ranking,
                labeler=str(row.get("labeler") or default_labeler),
                confidence=float(confidence) if confidence not in (None, "") else None,
                comment=str(row.get("comment") or "") or None, meta=comparison.meta,
            )  # fmt: skip
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise LabelError(f"{where}: {field}: {first['msg']}") from None
        except ValueError as error:  # a written ranking, or a confidence that is not a number
            raise LabelError(f"{where}: {error}") from None
        records.append(record)
        counts["answered"] += 1
    return records, counts
