"""An LLM as the evaluation's judge (`evaluate.metrics: [{kind: llm_judge}]`), through any
OpenAI-compatible endpoint, with the preference collection's judge (alignflow.feedback.llm_judge):

- pairwise win-rate: each policy's response against the reference's (SFT, or base when SFT was
  skipped) to the same prompt and sample seed, and the new policy's against the champion's, asked in
  both orders. Two orders that agree decide; two that disagree are a tie (the judge followed
  position), or unjudged when ties are not allowed; an unparsable or failed answer leaves the pair
  unjudged. Position bias is reported: the share of decisive answers that picked the response shown
  first (0.5 is none), and the share of pairs whose orders disagree;
- single-answer grading, 1-10 on a rubric (MT-Bench style), of every policy's responses;
- a refusal classifier for the safety evaluator (`classifier: llm_judge`).

Figures are [sample_index][prompt_index] grids, NaN where the judge gave no usable answer, so the
confidence intervals (alignflow.metrics.interval) count judged answers only.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignflow.config import LLMJudgeConfig, MetricConfig
from alignflow.feedback.llm_judge import JudgeCounters, LLMJudge, render_conversation
from alignflow.feedback.records import Comparison
from alignflow.progress import Progress

log = logging.getLogger(__name__)

NAN = float("nan")
_BRACKETED = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_OUT_OF_TEN = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", re.I)
_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)(?!\.?\d)")  # "10." ends a sentence
_YES_NO = re.compile(r"^\W*(YES|NO)\b", re.I)


def parse_grade(text: str | None) -> float | None:
    """The grade in a judge's answer: the number in `[[n]]`, else in "n/10" or "n out of 10", else
    the answer's last number (a scale stated before the grade, "1 to 10: 8", is not the grade);
    None when there is none or it is outside 1-10."""
    if not text:
        return None
    match = _BRACKETED.search(text) or _OUT_OF_TEN.search(text)
    numbers = _NUMBER.findall(text)
    if match is None and not numbers:
        return None
    value = float(match[1] if match is not None else numbers[-1])
    return value if 1.0 <= value <= 10.0 else None


def parse_yes_no(text: str | None) -> bool | None:
    """True for an answer opening with YES, False with NO, else None."""
    match = _YES_NO.match(text or "")
    return None if match is None else match[1].upper() == "YES"


def fill(template: str, prompt: list[dict], response: str) -> str:
    """A single-answer template with {prompt} (the conversation) and {response} filled in one pass,
    other braces left as they are."""
    values = {"prompt": render_conversation(prompt), "response": response}
    return re.sub(r"\{(prompt|response)\}", lambda m: values[m[1]], template)


@dataclass
class LLMEvaluator:
    """The llm_judge evaluator of one evaluation: its figures' grids and the judge's counters."""

    metric: MetricConfig
    judge: LLMJudge
    counters: JudgeCounters = field(default_factory=JudgeCounters)
    grading_calls: int = 0
    ungraded: int = 0
    identical: int = 0  # pairs of two identical responses: a tie, the judge not asked
    progress: Progress | None = None  # calls made, out of those planned (`plan`)

    @classmethod
    def of(cls, metric: MetricConfig) -> LLMEvaluator:
        assert metric.llm_judge is not None  # the config requires it
        return cls(metric, LLMJudge(metric.llm_judge))

    def plan(self, policies: int, pairings: int, prompts: int, samples: int) -> None:
        """Show live progress over the calls `pairings` pairwise comparisons and the grading of
        `policies` policies will make on `prompts` prompts x `samples` samples."""
        judged = min(prompts, self.metric.max_prompts or prompts) * min(
            samples, self.metric.samples
        )
        calls = judged * (2 * pairings + (policies if self.metric.rubric else 0))
        self.progress = Progress("llm_judge", calls)

    def _tick(self, calls: int) -> None:
        if self.progress is not None:
            unusable = self.counters.unparsable + self.counters.failures + self.ungraded
            self.progress.update(self.progress.step + calls, unusable=unusable)

    def _shape(self, samples: Sequence[Sequence[str]]) -> tuple[int, int]:
        """(samples, prompts) judged: the first `samples` of each policy, the first `max_prompts`."""
        prompts = len(samples[0]) if samples else 0
        return min(self.metric.samples, len(samples)), min(
            prompts, self.metric.max_prompts or prompts
        )

    def pairwise(
        self, rows: Sequence[dict], ours: Sequence[Sequence[str]], theirs: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """Win of `ours` over `theirs`, response i vs response i of each prompt, both orders:
        1 a win, 0.5 a tie, 0 a loss, NaN unjudged; [sample_index][prompt_index]. Two identical
        responses tie without a call (nor a place in the position-bias figures)."""
        n_samples, n_prompts = self._shape(ours)
        grid = []
        for index in range(n_samples):
            outcomes = []
            for row, a, b in zip(rows[:n_prompts], ours[index], theirs[index], strict=False):
                if a == b:  # nothing to choose between (a policy close to its reference)
                    self.identical += 1
                    self._tick(2)
                    outcomes.append(0.5)
                    continue
                comparison = Comparison.of(row["prompt"], [a, b])
                outcome, _ = self.judge.judge_pair(comparison, 0, 1, self.counters)
                self._tick(2)
                outcomes.append(
                    NAN if outcome is None else 0.5 if outcome == "tie" else float(outcome == 0)
                )
            grid.append(outcomes)
        return grid

    def grades(self, rows: Sequence[dict], samples: Sequence[Sequence[str]]) -> list[list[float]]:
        """The rubric grade (1-10) of each response, NaN when unparsable or failed."""
        n_samples, n_prompts = self._shape(samples)
        return [
            [
                self._ask(fill(self.metric.rubric_template, row["prompt"], text), parse_grade)
                for row, text in zip(rows[:n_prompts], samples[index], strict=False)
            ]
            for index in range(n_samples)
        ]

    def _ask(self, content: str, parse) -> float:
        from openai import OpenAIError

        self.grading_calls += 1
        try:
            value = parse(self.judge.complete(content))
        except OpenAIError as error:
            log.warning("llm_judge: a grading call failed: %s", type(error).__name__)
            value = None
        self._tick(1)
        if value is None:
            self.ungraded += 1
            return NAN
        return float(value)

    def report(self) -> dict:
        """What the judge did: calls, failures, its position bias and consistency."""
        if self.progress is not None:
            self.progress.close()
        c = self.counters
        decisive = c.first_position_wins + c.second_position_wins
        return {
            "model": self.judge.cfg.model,
            "pairwise_calls": c.calls,
            "failures": c.failures,
            "unparsable": c.unparsable,
            "pairs": c.pairs,
            "pairs_judged": c.pairs_judged,
            "identical_pairs": self.identical,
            "first_position_rate": c.first_position_wins / decisive if decisive else NAN,
            "inconsistent_rate": c.inconsistent / c.pairs if c.pairs else NAN,
            "grading_calls": self.grading_calls,
            "ungraded": self.ungraded,
        }


def refusal_classifier(cfg: LLMJudgeConfig, template: str):
    """A safety classifier (the rewards.rules signature) that asks the endpoint whether each
    response refuses: 1.0 YES, 0.0 NO, NaN unparsable or failed (left out of the rates)."""
    evaluator = LLMEvaluator(MetricConfig(kind="llm_judge", llm_judge=cfg), LLMJudge(cfg))

    def classify(prompts: list[list[dict]], completions: list[str], **_) -> list[float]:
        scores = []
        for prompt, text in zip(prompts, completions, strict=True):
            answer = evaluator._ask(fill(template, prompt, text), parse_yes_no)
            scores.append(answer)
        if evaluator.ungraded:
            log.warning("llm_judge refusal classifier: %d of %d answers unusable",
                        evaluator.ungraded, evaluator.grading_calls)  # fmt: skip
        return scores

    return classify


def nan_mean(grid: Sequence[Sequence[float]]) -> float:
    """The mean of a grid's judged values (NaN when none is)."""
    values = [v for row in grid for v in row if not math.isnan(v)]
    return sum(values) / len(values) if values else NAN
