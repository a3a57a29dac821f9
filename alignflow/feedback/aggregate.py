"""Several labelers' preference records turned into majority pairs, agreement and position bias.

A unit is one candidate pair of one comparison, (comparison_id, i, j) with i < j. Each labeler who
judged both candidates gives it one outcome: "i" (candidate i wins), "j" (candidate j wins) or
"tie". Everything here (majority, kappa, alpha) is computed over these units.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any, Literal

from alignflow.data.preferences import ranking_to_pairs
from alignflow.feedback.records import PreferenceRecord, ranking_to_scores

Outcome = Literal["i", "j", "tie"]
OUTCOMES: tuple[Outcome, ...] = ("i", "j", "tie")
Unit = tuple[str, int, int]  # (comparison_id, i, j), i < j
Votes = dict[Unit, dict[str, Outcome]]  # unit -> labeler -> outcome


def record_pairs(record: PreferenceRecord) -> tuple[list[tuple[int, int]], int]:
    """The (chosen, rejected) candidate pairs one record implies, and its number of tied pairs.

    Unjudged (None) candidates take part in neither.
    """
    return ranking_to_pairs(ranking_to_scores(record.ranking))


def record_outcomes(record: PreferenceRecord) -> dict[tuple[int, int], Outcome]:
    """The outcome of every candidate pair (i, j), i < j, that this record judged both sides of."""
    pairs, _ = record_pairs(record)
    winners: dict[tuple[int, int], Outcome] = {
        (min(chosen, rejected), max(chosen, rejected)): "i" if chosen < rejected else "j"
        for chosen, rejected in pairs
    }
    judged = [index for index, rank in enumerate(record.ranking) if rank is not None]
    return {pair: winners.get(pair, "tie") for pair in combinations(judged, 2)}


def collect_votes(records: Sequence[PreferenceRecord]) -> Votes:
    """Every labeler's outcome per unit, in the order units first appear in `records`.

    Raises:
        ValueError: a labeler answered the same comparison twice, or two records of one
            comparison disagree on its number of candidates.
    """
    votes: Votes = {}
    candidate_counts: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for position, record in enumerate(records):
        key = (record.comparison_id, record.labeler)
        if key in seen:
            raise ValueError(
                f"records[{position}]: labeler {record.labeler!r} answered comparison "
                f"{record.comparison_id!r} twice; keep one answer per labeler and comparison"
            )
        seen.add(key)
        count = candidate_counts.setdefault(record.comparison_id, len(record.candidates))
        if count != len(record.candidates):
            raise ValueError(
                f"records[{position}]: comparison {record.comparison_id!r} has "
                f"{len(record.candidates)} candidates here but {count} in an earlier record"
            )
        for (i, j), outcome in record_outcomes(record).items():
            votes.setdefault((record.comparison_id, i, j), {})[record.labeler] = outcome
    return votes


@dataclass(frozen=True)
class AggregatedPair:
    """One preference pair decided by the labelers' majority."""

    comparison_id: str
    chosen: int  # candidate index
    rejected: int
    votes_for: int  # labelers whose outcome was `chosen` wins
    votes_total: int  # labelers who judged this pair (ties included)


@dataclass(frozen=True)
class AggregateCounts:
    """What happened to each unit in `aggregate`."""

    units: int
    decided: int  # became an AggregatedPair
    skipped_tie: int  # "tie" was the strict plurality
    skipped_split: int  # no outcome had a strict plurality (e.g. one "i", one "j")
    skipped_too_few_votes: int  # fewer than min_votes labelers judged it
    contested: int  # labelers did not all give the same outcome (decided or not)


def plurality(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The outcome with strictly more votes than each other outcome; None when the top is shared."""
    ranked = Counter(outcomes).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def aggregate(
    records: Sequence[PreferenceRecord], min_votes: int = 1
) -> tuple[list[AggregatedPair], AggregateCounts]:
    """Majority preference pairs across labelers.

    Rule, per unit: the three outcomes "i wins", "j wins" and "tie" compete, and the one with
    strictly more votes than each of the other two is the verdict. A win verdict becomes a pair;
    a "tie" verdict is skipped as a tie; no strict plurality (e.g. i, j, tie or i, i, tie, tie) is
    skipped as a split. So i, tie, tie is a tie and i, i, tie is "i wins" with 2 of 3 votes.
    Units judged by fewer than `min_votes` labelers are skipped before voting.

    Returns:
        (pairs in the order units first appear, counts of what happened to every unit)
    """
    return _majority(collect_votes(records), min_votes)


def _majority(votes: Votes, min_votes: int) -> tuple[list[AggregatedPair], AggregateCounts]:
    if min_votes < 1:
        raise ValueError(f"min_votes must be at least 1, got {min_votes}")
    pairs: list[AggregatedPair] = []
    skipped: Counter[str] = Counter()
    for (comparison, i, j), by_labeler in votes.items():
        outcomes = list(by_labeler.values())
        skipped["contested"] += len(set(outcomes)) > 1
        if len(outcomes) < min_votes:
            skipped["too_few_votes"] += 1
            continue
        verdict = plurality(outcomes)
        if verdict is None:
            skipped["split"] += 1
        elif verdict == "tie":
            skipped["tie"] += 1
        else:
            chosen, rejected = (i, j) if verdict == "i" else (j, i)
            support = outcomes.count(verdict)
            pairs.append(AggregatedPair(comparison, chosen, rejected, support, len(outcomes)))
    counts = AggregateCounts(
        units=len(votes),
        decided=len(pairs),
        skipped_tie=skipped["tie"],
        skipped_split=skipped["split"],
        skipped_too_few_votes=skipped["too_few_votes"],
        contested=skipped["contested"],
    )
    return pairs, counts


def labeler_outcomes(votes: Votes) -> dict[str, dict[Unit, Outcome]]:
    """The same votes keyed the other way round: labeler -> unit -> outcome (labelers sorted)."""
    by_labeler: dict[str, dict[Unit, Outcome]] = {}
    for unit, by_unit in votes.items():
        for labeler, outcome in by_unit.items():
            by_labeler.setdefault(labeler, {})[unit] = outcome
    return dict(sorted(by_labeler.items()))


def cohen_kappa(first: dict[Unit, Outcome], second: dict[Unit, Outcome]) -> float | None:
    """Cohen's kappa of two labelers over the units both judged.

    Returns:
        kappa = (po - pe) / (1 - pe); None when they share no unit or both gave one and the same
        outcome throughout (pe = 1, kappa undefined).
    """
    # sklearn is imported here: a heavy import that `alignflow --help` should not pay for.
    from sklearn.metrics import cohen_kappa_score

    shared = [unit for unit in first if unit in second]
    first_outcomes = [first[unit] for unit in shared]
    second_outcomes = [second[unit] for unit in shared]
    if len(set(first_outcomes) | set(second_outcomes)) < 2:
        return None
    return float(cohen_kappa_score(first_outcomes, second_outcomes, labels=list(OUTCOMES)))


@dataclass(frozen=True)
class LabelerPairAgreement:
    """How two labelers agree on the units both judged."""

    labeler_a: str
    labeler_b: str
    units: int  # judged by both
    agreement_rate: float  # fraction of those units with the same outcome (percent / 100)
    cohen_kappa: float | None  # None when undefined (see cohen_kappa)


def pairwise_agreement(votes: Votes) -> list[LabelerPairAgreement]:
    """Percent agreement and Cohen's kappa for every labeler pair that shares at least one unit."""
    by_labeler = labeler_outcomes(votes)
    table = []
    for labeler_a, labeler_b in combinations(by_labeler, 2):
        first, second = by_labeler[labeler_a], by_labeler[labeler_b]
        shared = [unit for unit in first if unit in second]
        if not shared:
            continue
        same = sum(first[unit] == second[unit] for unit in shared)
        kappa = cohen_kappa(first, second)
        table.append(
            LabelerPairAgreement(labeler_a, labeler_b, len(shared), same / len(shared), kappa)
        )
    return table


def krippendorff_alpha_nominal(
    reliability_data: Sequence[Sequence[Hashable | None]],
) -> float | None:
    """Krippendorff's alpha for nominal values, with missing data.

    Args:
        reliability_data: (labelers, units); any hashable values, None where a labeler did not
            judge a unit. Units with fewer than two values cannot be paired and are ignored.

    Returns:
        alpha = 1 - D_observed / D_expected; None when no unit has two values or the paired
        values are all the same (D_expected = 0, alpha undefined).
    """
    import krippendorff
    import numpy as np

    units = list(zip(*reliability_data, strict=True))
    paired = [value for unit in units if _judged(unit) >= 2 for value in unit if value is not None]
    if len(set(paired)) < 2:
        return None
    values = [value for row in reliability_data for value in row if value is not None]
    codes = {value: code for code, value in enumerate(dict.fromkeys(values))}
    matrix = np.array(
        [
            [math.nan if value is None else codes[value] for value in row]
            for row in reliability_data
        ],
        dtype=float,
    )
    alpha = krippendorff.alpha(
        reliability_data=matrix, value_domain=list(codes.values()), level_of_measurement="nominal"
    )
    return float(alpha)


def _judged(unit: Sequence[Hashable | None]) -> int:
    return sum(value is not None for value in unit)


def votes_alpha(votes: Votes) -> float | None:
    """Krippendorff's nominal alpha of all labelers over all units (see krippendorff_alpha_nominal)."""
    by_labeler = labeler_outcomes(votes)
    data = [[outcomes.get(unit) for unit in votes] for outcomes in by_labeler.values()]
    return krippendorff_alpha_nominal(data)


@dataclass(frozen=True)
class PositionBias:
    """How often the candidate shown earlier won a decided pair."""

    first_wins: int
    second_wins: int
    ties: int  # excluded from the rate and the test
    decided: int  # first_wins + second_wins
    first_win_rate: float | None  # None when nothing was decided
    p_value: float | None  # two-sided binomial test of first_win_rate against 0.5


def position_bias(records: Sequence[PreferenceRecord]) -> PositionBias:
    """Position bias from the records that have `shown_order`; the others are ignored.

    Every judged candidate pair of a record is one two-candidate judgment; "first" is whichever
    of the two was shown earlier. Pairs from one many-candidate record are not independent, so
    the p-value is optimistic for such records.
    """
    from scipy.stats import binomtest

    tally: Counter[str] = Counter()
    for record in records:
        if record.shown_order is None:
            continue
        position = {candidate: place for place, candidate in enumerate(record.shown_order)}
        for (i, j), outcome in record_outcomes(record).items():
            if outcome == "tie":
                tally["tie"] += 1
                continue
            winner = i if outcome == "i" else j
            earlier = i if position[i] < position[j] else j
            tally["first" if winner == earlier else "second"] += 1
    decided = tally["first"] + tally["second"]
    rate = tally["first"] / decided if decided else None
    p_value = float(binomtest(tally["first"], decided, 0.5).pvalue) if decided else None
    return PositionBias(tally["first"], tally["second"], tally["tie"], decided, rate, p_value)


def report(records: Sequence[PreferenceRecord], min_votes: int = 1) -> dict[str, Any]:
    """Agreement, position bias and majority counts of `records`, ready for MLflow and JSON.

    Every top-level value is a float (log them with mlflow.log_metrics), or None where the
    statistic is undefined, except `labeler_names` and `agreement_pairwise` (lists, for an
    artifact).
    """
    votes = collect_votes(records)
    table = pairwise_agreement(votes)
    kappas = [row.cohen_kappa for row in table if row.cohen_kappa is not None]
    _, counts = _majority(votes, min_votes)
    bias = position_bias(records)
    summary: dict[str, Any] = {
        "records": float(len(records)),
        "comparisons": float(len({record.comparison_id for record in records})),
        "units": float(len(votes)),
        "labelers": float(len(labeler_outcomes(votes))),
        "agreement_krippendorff_alpha": votes_alpha(votes),
        "agreement_mean_cohen_kappa": sum(kappas) / len(kappas) if kappas else None,
    }
    summary |= {f"aggregate_{name}": float(value) for name, value in asdict(counts).items()}
    summary |= {
        f"position_{name}": value if value is None else float(value)
        for name, value in asdict(bias).items()
    }
    summary["labeler_names"] = list(labeler_outcomes(votes))
    summary["agreement_pairwise"] = [asdict(row) for row in table]
    return summary
