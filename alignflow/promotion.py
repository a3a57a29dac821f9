"""Whether a challenger policy replaces the champion: paired held-out scores, a bootstrap confidence
interval of the mean gain over prompts, and a margin."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel


class Decision(BaseModel):
    """The promotion decision and its evidence (logged to MLflow and shown as a Prefect artifact)."""

    promote: bool
    reason: str
    gain: float  # mean over prompts of (challenger - champion) score
    ci_low: float
    ci_high: float
    confidence: float
    margin: float
    prompts: int
    challenger_score: float
    champion_score: float
    win_rate: float  # share of (prompt, sample) pairs the challenger scores higher on; ties 1/2

    def markdown(self, challenger: str, champion: str) -> str:
        verdict = "**promoted**" if self.promote else "**rejected**"
        level = f"{self.confidence:.0%}"
        return (
            f"Challenger {challenger} vs champion {champion}: {verdict}. {self.reason}\n\n"
            "| evidence | value |\n| --- | --- |\n"
            f"| held-out prompts | {self.prompts} |\n"
            f"| champion score | {self.champion_score:.4f} |\n"
            f"| challenger score | {self.challenger_score:.4f} |\n"
            f"| mean gain | {self.gain:+.4f} |\n"
            f"| {level} bootstrap CI | [{self.ci_low:+.4f}, {self.ci_high:+.4f}] |\n"
            f"| margin | {self.margin:.4f} |\n"
            f"| win rate | {self.win_rate:.3f} |\n"
        )


def paired_gains(
    challenger: Sequence[Sequence[float]], champion: Sequence[Sequence[float]]
) -> np.ndarray:
    """Per-prompt mean score gain of the challenger.

    Args: scores [sample_index][prompt_index] of each policy, sample i drawn with the same seed
    for both. Returns: (prompts,) gains.
    """
    ours, theirs = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    if ours.shape != theirs.shape or ours.ndim != 2 or ours.shape[1] == 0:
        raise ValueError(
            f"scores must be two equal [samples][prompts] grids, got {ours.shape} and {theirs.shape}"
        )
    return (ours - theirs).mean(axis=0)


def judged_means(ours: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two [samples][prompts] grids with NaN (unjudged) values as [1][prompts] grids of each
    prompt's mean judged score, keeping the prompts judged on both sides."""
    import warnings

    if ours.shape != theirs.shape:
        raise ValueError(f"scores must be two equal grids, got {ours.shape} and {theirs.shape}")
    with warnings.catch_warnings():  # a prompt with nothing judged is NaN, and dropped below
        warnings.simplefilter("ignore", RuntimeWarning)
        ours, theirs = np.nanmean(ours, axis=0), np.nanmean(theirs, axis=0)
    both = ~(np.isnan(ours) | np.isnan(theirs))
    return ours[None, both], theirs[None, both]


def bootstrap_interval(
    gains: np.ndarray, confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `gains`, resampling prompts."""
    from scipy.stats import bootstrap

    if np.ptp(gains) == 0:  # every resample has the same mean
        return float(gains[0]), float(gains[0])
    interval = bootstrap(
        (gains,), np.mean, confidence_level=confidence, n_resamples=resamples,
        method="percentile", rng=np.random.default_rng(seed),
    ).confidence_interval  # fmt: skip
    return float(interval.low), float(interval.high)


def decide(
    challenger: Sequence[Sequence[float]],
    champion: Sequence[Sequence[float]],
    margin: float,
    confidence: float,
    resamples: int,
    seed: int,
) -> Decision:
    """Promote when the mean gain exceeds `margin` and its bootstrap interval excludes zero.
    NaN scores (responses an LLM judge could not grade) are left out: see `judged_means`."""
    ours, theirs = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    if np.isnan(ours).any() or np.isnan(theirs).any():
        ours, theirs = judged_means(ours, theirs)
    if ours.ndim == 2 and ours.shape == theirs.shape and ours.shape[1] < 2:
        nan = float("nan")
        return Decision(
            promote=False, reason=f"Fewer than 2 held-out prompts scored on both sides "
            f"({ours.shape[1]}): no interval to decide on.", gain=nan, ci_low=nan, ci_high=nan,
            confidence=confidence, margin=margin, prompts=int(ours.shape[1]),
            challenger_score=nan, champion_score=nan, win_rate=nan,
        )  # fmt: skip
    gains = paired_gains(ours, theirs)  # checks the shapes; asarray of an array is no copy
    low, high = bootstrap_interval(gains, confidence, resamples, seed)
    gain = float(gains.mean())
    wins = float(np.mean(np.where(ours > theirs, 1.0, np.where(ours == theirs, 0.5, 0.0))))
    level = f"{confidence:.0%}"
    if gain <= margin:
        reason = f"Mean gain {gain:+.4f} does not exceed the margin {margin:.4f}."
    elif low <= 0:
        reason = (
            f"Mean gain {gain:+.4f} > margin, but the {level} interval reaches {low:+.4f} <= 0."
        )
    else:
        reason = f"Mean gain {gain:+.4f} > margin {margin:.4f}; {level} interval above zero."
    return Decision(
        promote=gain > margin and low > 0,
        reason=reason,
        gain=gain,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        margin=margin,
        prompts=len(gains),
        challenger_score=float(ours.mean()),
        champion_score=float(theirs.mean()),
        win_rate=wins,
    )


def round_line(decision: dict) -> str:
    """One line for a retraining round's decision (apply_decision's result: the challenger
    version, the verdict, the gain and its interval, the reason): what `alignflow summary` prints
    and the round's MLflow description shows."""
    return (
        f"retraining round: challenger {decision['model_name']} v{decision['version']} "
        f"{decision['decision']}: gain {decision['gain']:+.4f} (interval "
        f"{decision['ci_low']:+.4f} to {decision['ci_high']:+.4f}). {decision['reason']}"
    )
