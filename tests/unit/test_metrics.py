"""alignflow.metrics: BLEU and ROUGE-L against reference answers (CJK by character), the
bootstrap intervals every evaluation figure carries, and held-out rows without an answer."""

from __future__ import annotations

import pytest

from alignflow.data.errors import DataError
from alignflow.metrics import bleu, check_references, interval, reference_scores, rouge_l, tokens


def test_cjk_text_is_compared_by_character_and_latin_text_by_folded_word():
    assert tokens("The Kettle, great!") == ["the", "kettle", "great"]
    assert tokens("这款水壶很好") == ["这", "款", "水", "壶", "很", "好"]
    assert tokens("Nimbus 水壶 ok") == ["nimbus", "水", "壶", "ok"]


def test_rouge_l_is_the_f1_of_the_longest_common_subsequence():
    # 4 of the reference's 7 characters, all 4 of the response's: P 1, R 4/7, F1 8/11
    assert rouge_l("我爱北京", "我爱北京天安门") == pytest.approx(8 / 11)
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l("完全不同", "我爱北京") == 0.0
    # rouge-score's own tokenizer would drop every Chinese character and score this 0
    assert rouge_l("这款水壶很好", "这款水壶很好") == pytest.approx(1.0)


def test_bleu_uses_sacrebleus_chinese_tokenization_for_cjk_text():
    assert bleu("我爱北京天安门", "我爱北京天安门") == pytest.approx(100.0)
    assert 0 < bleu("我爱北京", "我爱北京天安门") < 100
    assert bleu("The kettle is great.", "The kettle is great.") == pytest.approx(100.0)
    assert bleu("nothing alike here", "The kettle is great.") < 10


def test_reference_scores_keep_the_samples_layout():
    grid = reference_scores("rouge_l", [["a b", "c"], ["a", "x"]], ["a b", "c"])
    assert grid == [[pytest.approx(1.0), pytest.approx(1.0)], [pytest.approx(2 / 3), 0.0]]


def test_the_interval_is_over_prompts_and_holds_the_mean():
    grid = [[0.1, 0.5, 0.9, 0.3, 0.7], [0.2, 0.4, 0.8, 0.3, 0.6]]
    low, high = interval(grid, seed=0)
    assert low < 0.48 < high  # the mean of every sample
    assert interval([[0.5, 0.5, 0.5]]) == (0.5, 0.5)  # no spread, no width


def test_a_held_out_row_without_its_answer_is_one_line_naming_the_file_and_line():
    rows = [{"reference": "ok"}, {"reference": " "}, {}]
    with pytest.raises(DataError) as caught:
        check_references(rows, "reference", "heldout.jsonl")
    message = str(caught.value)
    assert message.startswith("heldout.jsonl:2: reference: is ' '; expected each held-out row")
    assert "\n" not in message
    assert check_references(rows[:1], "reference", "h.jsonl") == ["ok"]
