"""What every labeler sees (a Comparison) and answers (a PreferenceRecord).

A ranking is a list with one entry per candidate: 1 is best, equal numbers are ties, and None
marks a candidate this labeler did not judge. A pair choice is a ranking with two entries set:
candidate 2 preferred over candidate 0 of three is [2, None, 1]; a tie between them, [1, None, 1].
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator


def comparison_id(prompt: list[dict], candidates: list[str]) -> str:
    """A digest of the prompt and candidates: the same comparison has the same id everywhere
    (exported files, the feedback store, several labelers' answers)."""
    payload = json.dumps([prompt, candidates], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Comparison(BaseModel):
    """A prompt and its distinct candidate responses, as shown to a labeler."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: list[dict]  # chat messages
    candidates: list[str] = Field(min_length=2)
    meta: dict = {}  # the prompt row's other columns (e.g. the demo's family/subject)

    @classmethod
    def of(cls, prompt: list[dict], candidates: list[str], meta: dict | None = None) -> Comparison:
        return cls(
            id=comparison_id(prompt, candidates),
            prompt=prompt,
            candidates=candidates,
            meta=meta or {},
        )


class PreferenceRecord(BaseModel):
    """One labeler's answer to one comparison."""

    model_config = ConfigDict(extra="forbid")

    comparison_id: str
    prompt: list[dict]
    candidates: list[str]
    ranking: list[int | None]  # per candidate: 1 = best, equal = tie, None = not judged
    labeler: str  # kind and who, e.g. "rule:alignflow.demo:oracle_score", "human:alice"
    confidence: float | None = Field(None, ge=0, le=1)
    comment: str | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # The order the candidates were shown in (indices), when the labeler saw them in an order:
    # what position-bias statistics are computed from.
    shown_order: list[int] | None = None
    scores: list[float | None] | None = None  # a scorer's raw scores (higher = better)
    meta: dict = {}

    @model_validator(mode="after")
    def _ranking_fits(self) -> PreferenceRecord:
        n = len(self.candidates)
        if len(self.ranking) != n:
            raise ValueError(f"ranking has {len(self.ranking)} entries for {n} candidates")
        judged = [rank for rank in self.ranking if rank is not None]
        if len(judged) < 2:
            raise ValueError("ranking must judge at least two candidates")
        if any(rank < 1 for rank in judged):
            raise ValueError("ranks start at 1 (best)")
        if self.shown_order is not None and sorted(self.shown_order) != list(range(n)):
            raise ValueError(f"shown_order must list each of the {n} candidate indices once")
        if self.scores is not None and len(self.scores) != n:
            raise ValueError(f"scores has {len(self.scores)} entries for {n} candidates")
        return self

    @classmethod
    def from_scores(
        cls, comparison: Comparison, scores: list[float | None], labeler: str, **extra
    ) -> PreferenceRecord:
        """A scorer's answer: rank by score (higher is better, equal scores tie)."""
        return cls(
            comparison_id=comparison.id,
            prompt=comparison.prompt,
            candidates=comparison.candidates,
            ranking=scores_to_ranking(scores),
            labeler=labeler,
            scores=scores,
            meta=comparison.meta,
            **extra,
        )


def scores_to_ranking(scores: list[float | None]) -> list[int | None]:
    """Competition ranks (1 = highest score; equal scores share a rank; None stays None).

    [0.2, 0.9, 0.2, None] -> [2, 1, 2, None]
    """
    judged = [s for s in scores if s is not None]
    return [None if s is None else 1 + sum(other > s for other in judged) for s in scores]


def ranking_to_scores(ranking: list[int | None]) -> list[float | None]:
    """Scores that order candidates as `ranking` does (higher is better), for ranking_to_pairs."""
    return [None if rank is None else -float(rank) for rank in ranking]


def letter(index: int) -> str:
    """How candidate `index` is named to people: A, B, ... Z."""
    return chr(ord("A") + index)


RANKING_PATTERN = r"^\s*[A-Z](\s*[>=]\s*[A-Z])+\s*$"  # e.g. "B > A = C"


def parse_ranking(text: str, n: int) -> list[int | None]:
    """A ranking written with candidate letters: "B>A=C" over four candidates -> [2, 1, 2, None]
    (B best, A and C tied second, D not judged). Raises ValueError saying what is wrong."""
    import re

    if not re.fullmatch(RANKING_PATTERN, text):
        raise ValueError(f"ranking {text!r}: write candidate letters joined by > or =, e.g. B>A=C")
    tokens = re.findall(r"[A-Z]|[>=]", text)
    ranking: list[int | None] = [None] * n
    rank = 1
    for token in tokens:
        if token == ">":
            rank = 1 + sum(r is not None for r in ranking)
        elif token != "=":
            index = ord(token) - ord("A")
            if index >= n:
                raise ValueError(f"ranking {text!r}: there is no candidate {token} (only {n})")
            if ranking[index] is not None:
                raise ValueError(f"ranking {text!r}: candidate {token} appears twice")
            ranking[index] = rank
    return ranking
