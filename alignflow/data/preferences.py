"""Rankings and scores turned into preference pairs: the one implementation every labeler uses."""

from __future__ import annotations

from collections.abc import Sequence


def ranking_to_pairs(scores: Sequence[float | None]) -> tuple[list[tuple[int, int]], int]:
    """Every ordered pair (better, worse) implied by per-candidate scores; ties are skipped.

    A ranking B > A > C > D over four candidates gives six pairs. Higher score = better. A None
    score is a candidate nobody judged: its pairs are neither emitted nor counted as ties.

    Returns:
        (pairs of candidate indices as (chosen, rejected), number of tied pairs skipped)
    """
    pairs: list[tuple[int, int]] = []
    ties = 0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            score_i, score_j = scores[i], scores[j]
            if score_i is None or score_j is None:
                continue
            if score_i == score_j:
                ties += 1
            elif score_i > score_j:
                pairs.append((i, j))
            else:
                pairs.append((j, i))
    return pairs, ties


def unique_candidates(texts: Sequence[str]) -> list[str]:
    """Collapse identical candidates (keeping first-seen order): a pair of twins teaches nothing."""
    return list(dict.fromkeys(texts))
