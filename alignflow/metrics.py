"""Reference metrics and confidence intervals for the held-out evaluation.

`reference` metrics score each sampled response against the held-out row's gold answer: sentence
BLEU (sacrebleu) and ROUGE-L F1 (rouge-score). Chinese, Japanese and Korean text is compared by
character, as sacrebleu's `zh` tokenizer does (a word segmenter's vocabulary would decide the
score otherwise); other text by word, case-folded, punctuation dropped. Every figure of the
evaluation table also carries a 95 % bootstrap interval over prompts and its sample count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# Per-sample metrics a promotion may gate on, besides the judge; all are better when higher.
REFERENCE_METRICS = ("bleu", "rouge_l")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|\w+")


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def tokens(text: str) -> list[str]:
    """Words, case-folded, for Latin-script text; one token per character for CJK text."""
    return _TOKEN.findall(text.casefold())


def bleu(response: str, reference: str) -> float:
    """Sentence BLEU (sacrebleu, 0–100, exponential smoothing): `zh` tokenization when either
    text has CJK characters, else sacrebleu's standard `13a`."""
    import sacrebleu

    chinese = has_cjk(response) or has_cjk(reference)
    return sacrebleu.sentence_bleu(response, [reference], tokenize="zh" if chinese else "13a").score


class _Tokenizer:
    """rouge-score's tokenizer interface; its own drops every non-ASCII character."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(response: str, reference: str) -> float:
    """ROUGE-L F1 (rouge-score, 0–1) over `tokens`."""
    return _rouge().score(reference, response)["rougeL"].fmeasure


SCORERS = {"bleu": bleu, "rouge_l": rouge_l}


def reference_scores(
    metric: str, samples: Sequence[Sequence[str]], references: Sequence[str]
) -> list[list[float]]:
    """`metric` of every sampled response against its prompt's reference, in the samples' layout
    ([sample_index][prompt_index])."""
    score = SCORERS[metric]
    return [
        [score(text, reference) for text, reference in zip(texts, references, strict=True)]
        for texts in samples
    ]


def interval(
    grid: Sequence[Sequence[float]], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a policy's mean figure, resampling prompts (each prompt's
    samples averaged first, as the promotion gate does). `grid`: [sample_index][prompt_index]."""
    from alignflow.promotion import bootstrap_interval

    per_prompt = np.asarray(grid, dtype=float).mean(axis=0)
    if per_prompt.size < 2:
        return float(per_prompt.mean()), float(per_prompt.mean())
    return bootstrap_interval(per_prompt, confidence, resamples, seed)


def check_references(rows: Sequence[dict], column: str, source: str) -> list[str]:
    """Every row's gold answer in `column`; a DataError naming `source` and the first row (its
    line in a JSONL file) without one."""
    from alignflow.data.errors import DataError

    answers = []
    for line, row in enumerate(rows, start=1):
        answer = row.get(column)
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(
                column,
                "is missing" if answer is None else f"is {answer!r}",
                "each held-out row's gold answer (evaluate.metrics has a reference metric): a "
                "held-out set with answers (alpaca output, a last assistant turn, a completion), "
                "or keep_columns naming the answer column",
            ).at(source, line)
        answers.append(answer)
    return answers
