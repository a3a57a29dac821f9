"""Scores to preference pairs, worked out by hand."""

from alignflow.data.preferences import ranking_to_pairs, unique_candidates


def test_four_ranked_candidates_give_the_six_ordered_pairs():
    # Candidates A, B, C, D = indices 0..3, ranked B > A > C > D.
    pairs, ties = ranking_to_pairs([0.5, 0.9, 0.2, 0.1])
    expected = [(1, 0), (1, 2), (1, 3), (0, 2), (0, 3), (2, 3)]
    assert sorted(pairs) == sorted(expected)
    assert len(pairs) == 6
    assert ties == 0


def test_ties_are_skipped_and_counted():
    pairs, ties = ranking_to_pairs([1.0, 1.0, 0.0])
    assert sorted(pairs) == [(0, 2), (1, 2)]
    assert ties == 1


def test_all_tied_candidates_give_no_pairs():
    pairs, ties = ranking_to_pairs([0.3, 0.3, 0.3])
    assert pairs == []
    # Three candidates have three unordered pairs, all tied.
    assert ties == 3


def test_fewer_than_two_candidates_give_no_pairs():
    assert ranking_to_pairs([]) == ([], 0)
    assert ranking_to_pairs([0.7]) == ([], 0)


def test_chosen_always_has_the_higher_score():
    scores = [0.1, 0.8, 0.4, 0.8, 0.0]
    pairs, ties = ranking_to_pairs(scores)
    assert all(scores[chosen] > scores[rejected] for chosen, rejected in pairs)
    # 10 unordered pairs, one tie (indices 1 and 3).
    assert (len(pairs), ties) == (9, 1)


def test_unique_candidates_collapses_duplicates_keeping_first_seen_order():
    assert unique_candidates(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_unique_candidates_keeps_distinct_texts_untouched():
    assert unique_candidates(["x", "y", "z"]) == ["x", "y", "z"]
    assert unique_candidates([]) == []
