"""The form people fill in to label a batch of comparisons: its fields (a pydantic model, which
Prefect turns into the UI's form and the API's JSON schema), the markdown shown above it, and the
records made from an answer. No Prefect here: tasks/label.py pauses the flow with this form.

Per comparison n of the batch: `c{n}_best` (a candidate letter or "tie"; required) in choice mode,
or `c{n}_ranking` (e.g. "B>A=C"; required) in ranking mode, plus optional `c{n}_confidence` (0-1)
and `c{n}_comment`. Candidates are shown in a shuffled order per comparison (recorded as
`shown_order`), so a labeler's taste for the first slot shows up as position bias, not as signal.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field, create_model

from alignflow.feedback.records import (
    RANKING_PATTERN,
    Comparison,
    PreferenceRecord,
    letter,
    parse_ranking,
)

NAME_FIELD = "labeler_name"  # who answered: their records say "human:<name>"


def shown_orders(comparisons: Sequence[Comparison], seed: int) -> list[list[int]]:
    """For each comparison, the candidate indices in the order they are shown (letters A, B, ...
    name positions in this order). Seeded by the comparison ids, so a re-shown batch is the same."""
    orders = []
    for comparison in comparisons:
        order = list(range(len(comparison.candidates)))
        random.Random(f"{seed}:{comparison.id}").shuffle(order)
        orders.append(order)
    return orders


def answer_model(
    comparisons: Sequence[Comparison], mode: str, base: type[BaseModel] = BaseModel
) -> type[BaseModel]:
    """The form for a batch: who answers, then per comparison a required answer, confidence and
    comment."""
    fields: dict = {NAME_FIELD: (str, Field("anonymous", title="Your name"))}
    for n, comparison in enumerate(comparisons, start=1):
        letters = tuple(letter(i) for i in range(len(comparison.candidates)))
        if mode == "choice":
            choice = Literal[(*letters, "tie")]  # type: ignore[valid-type]
            fields[f"c{n}_best"] = (
                choice,
                Field(title=f"{n}. Best response", description="tie: equally good"),
            )
        else:
            fields[f"c{n}_ranking"] = (
                str,
                Field(
                    title=f"{n}. Ranking, best first",
                    description=f"letters {', '.join(letters)} joined by > or =, e.g. B>A=C",
                    pattern=RANKING_PATTERN,
                ),
            )
        fields[f"c{n}_confidence"] = (
            float | None,
            Field(None, ge=0, le=1, title=f"{n}. Confidence (0-1)"),
        )
        fields[f"c{n}_comment"] = (str, Field("", title=f"{n}. Comment"))
    return create_model("PreferenceLabels", __base__=base, **fields)


def describe(comparisons: Sequence[Comparison], orders: Sequence[list[int]], total: int) -> str:
    """Markdown for the form: each comparison's conversation and its candidates by letter."""
    parts = [f"### Label {len(comparisons)} comparisons ({total} left including these)\n"]
    for n, (comparison, order) in enumerate(zip(comparisons, orders, strict=True), start=1):
        parts.append(f"---\n#### {n}.")
        for message in comparison.prompt:
            parts.append(f"**{message['role']}:** {message['content']}\n")
        for position, index in enumerate(order):
            quoted = "\n".join(f"> {line}" for line in comparison.candidates[index].splitlines())
            parts.append(f"**{letter(position)}**\n\n{quoted or '> (empty)'}\n")
    return "\n".join(parts)


def records_from_answer(
    comparisons: Sequence[Comparison],
    orders: Sequence[list[int]],
    answer: dict,
    mode: str,
    labeler: str,
) -> list[PreferenceRecord]:
    """One record per comparison from a validated answer (the form's field names and values).

    In choice mode the best candidate ranks 1 and every other candidate 2 (best > each other),
    and "tie" ranks them all 1. Letters name shown positions; rankings are stored by candidate.
    """
    records = []
    for n, (comparison, order) in enumerate(zip(comparisons, orders, strict=True), start=1):
        k = len(comparison.candidates)
        if mode == "choice":
            best = answer[f"c{n}_best"]
            by_position = (
                [1] * k if best == "tie" else [1 if letter(p) == best else 2 for p in range(k)]
            )
        else:
            by_position = parse_ranking(answer[f"c{n}_ranking"], k)
        ranking: list[int | None] = [None] * k
        for position, index in enumerate(order):
            ranking[index] = by_position[position]
        records.append(
            PreferenceRecord(
                comparison_id=comparison.id,
                prompt=comparison.prompt,
                candidates=comparison.candidates,
                ranking=ranking,
                labeler=labeler,
                confidence=answer.get(f"c{n}_confidence"),
                comment=answer.get(f"c{n}_comment") or None,
                shown_order=order,
                meta=comparison.meta,
            )
        )
    return records
