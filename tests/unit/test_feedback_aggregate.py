"""Preference aggregation, agreement and position bias, against numbers worked out by hand."""

import json

import pytest

from alignflow.data.preferences import ranking_to_pairs
from alignflow.feedback.aggregate import (
    AggregateCounts,
    AggregatedPair,
    aggregate,
    cohen_kappa,
    collect_votes,
    krippendorff_alpha_nominal,
    labeler_outcomes,
    pairwise_agreement,
    plurality,
    position_bias,
    record_outcomes,
    record_pairs,
    report,
    votes_alpha,
)
from alignflow.feedback.records import PreferenceRecord

PROMPT = [{"role": "user", "content": "Which is better?"}]
# Ranking of a two-candidate comparison for each outcome of the unit (0, 1).
TWO = {"i": [1, 2], "j": [2, 1], "tie": [1, 1]}


def make_record(comparison: str, ranking: list, labeler: str = "human:alice", **extra):
    candidates = [f"{comparison}-candidate-{index}" for index in range(len(ranking))]
    return PreferenceRecord(
        comparison_id=comparison,
        prompt=PROMPT,
        candidates=candidates,
        ranking=ranking,
        labeler=labeler,
        **extra,
    )


# --- pairs from one ranking ------------------------------------------------------------------


def test_ranking_b_a_c_d_gives_the_six_ordered_pairs():
    # Candidates A, B, C, D = 0..3; B > A > C > D is ranks [2, 1, 3, 4].
    pairs, ties = record_pairs(make_record("c", [2, 1, 3, 4]))
    assert sorted(pairs) == sorted([(1, 0), (1, 2), (1, 3), (0, 2), (0, 3), (2, 3)])
    assert ties == 0


def test_unjudged_candidates_give_neither_pairs_nor_ties():
    # 0 and 2 tie for best, 3 is last, 1 was not judged: pairs 0>3 and 2>3, one tie (0, 2).
    pairs, ties = record_pairs(make_record("c", [1, None, 1, 2]))
    assert sorted(pairs) == [(0, 3), (2, 3)]
    assert ties == 1


def test_ranking_to_pairs_skips_none_scores_without_counting_them_as_ties():
    assert ranking_to_pairs([0.5, None, 0.5, None]) == ([], 1)
    assert ranking_to_pairs([None, 0.1, 0.9]) == ([(2, 1)], 0)
    assert ranking_to_pairs([None, None]) == ([], 0)


def test_record_outcomes_name_the_winner_of_each_judged_pair():
    assert record_outcomes(make_record("c", [1, None, 1, 2])) == {
        (0, 2): "tie",
        (0, 3): "i",
        (2, 3): "i",
    }
    assert record_outcomes(make_record("c", [2, 1])) == {(0, 1): "j"}


# --- record validation -----------------------------------------------------------------------


def test_ranking_with_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match="ranking has 3 entries for 2 candidates"):
        PreferenceRecord(
            comparison_id="c", prompt=PROMPT, candidates=["a", "b"], ranking=[1, 2, 3], labeler="x"
        )


def test_ranking_judging_fewer_than_two_candidates_is_rejected():
    with pytest.raises(ValueError, match="at least two candidates"):
        make_record("c", [1, None, None])


def test_ranks_below_one_are_rejected():
    with pytest.raises(ValueError, match="ranks start at 1"):
        make_record("c", [0, 1])


@pytest.mark.parametrize("shown_order", [[0, 0, 1], [0, 1], [1, 2, 3]])
def test_shown_order_must_be_a_permutation_of_the_candidates(shown_order):
    with pytest.raises(ValueError, match="shown_order must list each of the 3 candidate"):
        make_record("c", [1, 2, 3], shown_order=shown_order)


def test_a_labeler_answering_a_comparison_twice_is_rejected():
    records = [make_record("c", [1, 2]), make_record("c", [2, 1])]
    with pytest.raises(ValueError, match=r"records\[1\]: labeler 'human:alice' answered"):
        collect_votes(records)


def test_records_of_one_comparison_with_different_candidate_counts_are_rejected():
    records = [make_record("c", [1, 2]), make_record("c", [1, 2, 3], labeler="human:bob")]
    with pytest.raises(ValueError, match="has 3 candidates here but 2"):
        collect_votes(records)


# --- majority --------------------------------------------------------------------------------


def majority_records() -> list[PreferenceRecord]:
    """Three labelers; units and their votes (alice, bob, carol):

    c1 (0,1): i, j, tie  -> split         c1 (0,2): i, i, i -> 0 > 2, 3/3
    c1 (1,2): i, i, i    -> 1 > 2, 3/3    c2 (0,1): tie, tie, i -> tie
    c3 (0,1): j, j, i    -> 1 > 0, 2/3    c4 (0,1): i (alice only) -> 0 > 1, 1/1
    """
    return [
        make_record("c1", [1, 2, 3], "alice"),
        make_record("c1", [2, 1, 3], "bob"),
        make_record("c1", [1, 1, 2], "carol"),
        make_record("c2", TWO["tie"], "alice"),
        make_record("c2", TWO["tie"], "bob"),
        make_record("c2", TWO["i"], "carol"),
        make_record("c3", TWO["j"], "alice"),
        make_record("c3", TWO["j"], "bob"),
        make_record("c3", TWO["i"], "carol"),
        make_record("c4", TWO["i"], "alice"),
    ]


def test_votes_are_collected_per_comparison_and_candidate_pair():
    votes = collect_votes(majority_records())
    c1_units = [("c1", 0, 1), ("c1", 0, 2), ("c1", 1, 2)]
    assert list(votes) == c1_units + [("c2", 0, 1), ("c3", 0, 1), ("c4", 0, 1)]
    assert votes[("c1", 0, 1)] == {"alice": "i", "bob": "j", "carol": "tie"}
    assert votes[("c4", 0, 1)] == {"alice": "i"}


def test_plurality_needs_strictly_more_votes_than_every_other_outcome():
    assert plurality(["i", "i", "tie"]) == "i"
    assert plurality(["i", "tie", "tie"]) == "tie"
    assert plurality(["i", "j", "tie"]) is None
    assert plurality(["i", "i", "j", "tie", "tie"]) is None
    assert plurality(["j"]) == "j"
    assert plurality([]) is None


def test_majority_decides_pairs_and_counts_ties_and_splits():
    pairs, counts = aggregate(majority_records())
    assert pairs == [
        AggregatedPair("c1", 0, 2, votes_for=3, votes_total=3),
        AggregatedPair("c1", 1, 2, votes_for=3, votes_total=3),
        AggregatedPair("c3", 1, 0, votes_for=2, votes_total=3),
        AggregatedPair("c4", 0, 1, votes_for=1, votes_total=1),
    ]
    assert counts == AggregateCounts(
        units=6, decided=4, skipped_tie=1, skipped_split=1, skipped_too_few_votes=0, contested=3
    )


def test_min_votes_skips_units_judged_by_too_few_labelers():
    pairs, counts = aggregate(majority_records(), min_votes=2)
    assert [(pair.comparison_id, pair.chosen) for pair in pairs] == [
        ("c1", 0),
        ("c1", 1),
        ("c3", 1),
    ]
    assert (counts.decided, counts.skipped_too_few_votes) == (3, 1)


def test_min_votes_below_one_is_rejected():
    with pytest.raises(ValueError, match="min_votes must be at least 1"):
        aggregate(majority_records(), min_votes=0)


# --- Cohen's kappa ---------------------------------------------------------------------------

# Alice and Bob on ten two-candidate comparisons k0..k9 (rows alice, columns bob):
#            bob i  bob j  bob tie | alice total
#   alice i     4      1      0    |   5
#   alice j     0      3      1    |   4
#   alice tie   0      0      1    |   1
#   bob total   4      4      2    |  10
# po = (4 + 3 + 1) / 10 = 0.8; pe = (5*4 + 4*4 + 1*2) / 100 = 0.38;
# kappa = (0.8 - 0.38) / (1 - 0.38) = 0.42 / 0.62 = 21/31.
KAPPA_PAIRS = [("i", "i")] * 4 + [("i", "j")] + [("j", "j")] * 3 + [("j", "tie"), ("tie", "tie")]


def kappa_records() -> list[PreferenceRecord]:
    records = []
    for number, (alice, bob) in enumerate(KAPPA_PAIRS):
        records.append(make_record(f"k{number}", TWO[alice], "alice"))
        records.append(make_record(f"k{number}", TWO[bob], "bob"))
    # Judged by alice alone: not part of kappa (only units both labelled count).
    records.append(make_record("k10", TWO["tie"], "alice"))
    return records


def test_cohen_kappa_matches_the_hand_worked_table():
    by_labeler = labeler_outcomes(collect_votes(kappa_records()))
    assert cohen_kappa(by_labeler["alice"], by_labeler["bob"]) == pytest.approx(21 / 31)


def test_cohen_kappa_is_undefined_without_shared_variation():
    same = {("c", 0, 1): "i", ("d", 0, 1): "i"}
    assert cohen_kappa(same, dict(same)) is None
    assert cohen_kappa(same, {("e", 0, 1): "j"}) is None


def test_pairwise_agreement_table_has_percent_agreement_and_kappa():
    table = pairwise_agreement(collect_votes(kappa_records()))
    assert len(table) == 1
    row = table[0]
    assert (row.labeler_a, row.labeler_b, row.units) == ("alice", "bob", 10)
    assert row.agreement_rate == pytest.approx(0.8)
    assert row.cohen_kappa == pytest.approx(21 / 31)


def test_pairwise_agreement_lists_only_labelers_who_share_units():
    # majority_records: alice/bob/carol share c1..c3 (5 units); alice alone judged c4.
    table = pairwise_agreement(collect_votes(majority_records()))
    assert [(row.labeler_a, row.labeler_b, row.units) for row in table] == [
        ("alice", "bob", 5),
        ("alice", "carol", 5),
        ("bob", "carol", 5),
    ]
    # alice vs bob over c1(0,1) i/j, c1(0,2) i/i, c1(1,2) i/i, c2 tie/tie, c3 j/j:
    # po = 4/5; marginals alice (i 3, j 1, tie 1), bob (i 2, j 2, tie 1);
    # pe = (3*2 + 1*2 + 1*1) / 25 = 0.36; kappa = (0.8 - 0.36) / 0.64 = 11/16.
    assert table[0].agreement_rate == pytest.approx(0.8)
    assert table[0].cohen_kappa == pytest.approx(11 / 16)


# --- Krippendorff's alpha --------------------------------------------------------------------


def test_krippendorff_alpha_matches_the_hand_worked_coincidence_matrix():
    # Labelers x units; u4 has one value and cannot be paired.
    #          u1   u2   u3    u4
    # alice    i    i    j     tie
    # bob      i    j    j     -
    # carol    i    -    tie   -
    # Coincidences (each ordered pair within a unit weighs 1 / (m_u - 1)):
    #   u1: six (i,i) pairs * 1/2 -> o_ii = 3;  u2: (i,j), (j,i) * 1 -> o_ij = o_ji = 1;
    #   u3: (j,j)*2, (j,t)*2, (t,j)*2, each 1/2 -> o_jj = 1, o_jt = o_tj = 1.
    # n_i = 4, n_j = 3, n_t = 1, n = 8. Disagreeing coincidences: 4.
    # alpha = 1 - (n - 1) * 4 / sum_{c != k} n_c n_k = 1 - 7 * 4 / (2 * (12 + 4 + 3)) = 5/19.
    data = [["i", "i", "j", "tie"], ["i", "j", "j", None], ["i", None, "tie", None]]
    assert krippendorff_alpha_nominal(data) == pytest.approx(5 / 19)


def test_krippendorff_alpha_reproduces_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four
    # observers, twelve units, missing data; nominal alpha = 0.743.
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    assert krippendorff_alpha_nominal(data) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_is_undefined_without_pairable_variation():
    assert krippendorff_alpha_nominal([["i", "i"], ["i", "i"]]) is None
    assert krippendorff_alpha_nominal([["i", None], [None, "j"]]) is None
    assert krippendorff_alpha_nominal([]) is None


def test_votes_alpha_over_two_labelers_matches_the_hand_worked_value():
    # kappa_records as coincidences (two coders: the table plus its transpose):
    # o_ii = 8, o_jj = 6, o_tt = 2, o_ij = o_ji = 1, o_jt = o_tj = 1; n_i = 9, n_j = 8, n_t = 3,
    # n = 20. alpha = 1 - 19 * 4 / (2 * (9*8 + 9*3 + 8*3)) = 1 - 76/246 = 85/123.
    assert votes_alpha(collect_votes(kappa_records())) == pytest.approx(85 / 123)


# --- position bias ---------------------------------------------------------------------------


def test_position_bias_counts_wins_of_the_candidate_shown_first():
    records = [
        make_record("p1", [2, 1], shown_order=[1, 0]),  # 1 shown first and won: first
        make_record("p2", [2, 1], shown_order=[0, 1]),  # 1 shown second and won: second
        make_record("p3", [1, 1], shown_order=[0, 1]),  # tie: excluded
        make_record("p4", [1, 2], shown_order=[0, 1]),  # 0 shown first and won: first
        make_record("p5", [1, 2]),  # no shown_order: ignored
        make_record("p6", [2, None, 1], shown_order=[2, 0, 1]),  # 2 shown first, won: first
    ]
    bias = position_bias(records)
    assert (bias.first_wins, bias.second_wins, bias.ties, bias.decided) == (3, 1, 1, 4)
    assert bias.first_win_rate == pytest.approx(0.75)
    # Two-sided binomial, k = 3 of n = 4: 2 * P(X >= 3) = 2 * (4 + 1) / 16 = 0.625.
    assert bias.p_value == pytest.approx(0.625)


def test_position_bias_reads_every_pair_of_a_longer_ranking():
    # Shown 2, 0, 1; ranked 0 > 1 > 2. Pair (0,1): 0 shown earlier, won -> first.
    # Pairs (0,2) and (1,2): 2 shown earlier, lost -> second, second.
    bias = position_bias([make_record("p", [1, 2, 3], shown_order=[2, 0, 1])])
    assert (bias.first_wins, bias.second_wins, bias.decided) == (1, 2, 3)


def test_position_bias_p_value_for_five_first_wins_out_of_five():
    records = [make_record(f"p{n}", [1, 2], shown_order=[0, 1]) for n in range(5)]
    bias = position_bias(records)
    assert bias.first_win_rate == 1.0
    # 2 * (1/2)^5 = 0.0625.
    assert bias.p_value == pytest.approx(0.0625)


def test_position_bias_without_decided_pairs_is_undefined():
    bias = position_bias([make_record("p", [1, 1], shown_order=[0, 1]), make_record("q", [1, 2])])
    assert (bias.decided, bias.ties, bias.first_win_rate, bias.p_value) == (0, 1, None, None)


# --- report ----------------------------------------------------------------------------------


def test_report_bundles_agreement_bias_and_counts_as_json():
    # kappa_records plus carol, who judged k0 only (i, with candidate 1 shown first).
    records = kappa_records() + [make_record("k0", TWO["i"], "carol", shown_order=[1, 0])]
    summary = report(records)
    json.dumps(summary, allow_nan=False)  # plain JSON: no NaN, no objects
    assert (summary["records"], summary["comparisons"], summary["units"]) == (22.0, 11.0, 11.0)
    assert (summary["labelers"], summary["labeler_names"]) == (3.0, ["alice", "bob", "carol"])
    # As in the two-labeler alpha below, but k0 now holds three i's (6 pairs * 1/2 = 3, not 2):
    # o_ii = 9, n_i = 10, n = 21. alpha = 1 - 20 * 4 / (2 * (10*8 + 10*3 + 8*3)) = 47/67.
    assert summary["agreement_krippendorff_alpha"] == pytest.approx(47 / 67)
    # carol shares only k0 with each of the others, all "i": kappa undefined, left out of the mean.
    assert summary["agreement_mean_cohen_kappa"] == pytest.approx(21 / 31)
    assert [row["cohen_kappa"] for row in summary["agreement_pairwise"][1:]] == [None, None]
    # k0..k3 i and k5..k7 j decided; k4 (i, j) and k8 (j, tie) split; k9 and k10 ties.
    assert summary["aggregate_decided"] == 7.0
    assert summary["aggregate_skipped_split"] == 2.0
    assert summary["aggregate_skipped_tie"] == 2.0
    assert summary["aggregate_contested"] == 2.0
    # carol's one judgment: candidate 0 won but was shown second.
    assert (summary["position_decided"], summary["position_first_win_rate"]) == (1.0, 0.0)
    assert summary["position_p_value"] == pytest.approx(1.0)
    metric_keys = [key for key, value in summary.items() if isinstance(value, float)]
    assert len(metric_keys) == 18


def test_report_of_the_kappa_example_has_its_hand_worked_agreement():
    summary = report(kappa_records())
    assert summary["agreement_krippendorff_alpha"] == pytest.approx(85 / 123)
    assert summary["agreement_mean_cohen_kappa"] == pytest.approx(21 / 31)
    assert summary["agreement_pairwise"] == [
        {
            "labeler_a": "alice",
            "labeler_b": "bob",
            "units": 10,
            "agreement_rate": 0.8,
            "cohen_kappa": pytest.approx(21 / 31),
        }
    ]
    assert summary["position_first_win_rate"] is None
