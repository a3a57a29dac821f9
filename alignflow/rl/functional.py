"""Pure tensor functions for PPO: masked statistics, KL, rewards, GAE, losses, KL controllers.

Conventions: docs/architecture.md ("The PPO engine's conventions"). Shapes: `b` batch, `t`
response length, `v` vocabulary. Masks are 0/1 (or bool) over response tokens, contiguous from
position 0 and right-padded.
"""

import math
from typing import Literal

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over the positions where `mask` is 1.

    Args:
        values: any shape, e.g. (b, t).
        mask: same shape as `values`, 0/1 or bool.
        dim: dimension to reduce; None reduces over all elements.

    Returns:
        A scalar if `dim` is None, else `values` with `dim` reduced, e.g. (b,). A slice with
        no masked elements gives 0 rather than NaN, since a rollout can yield an empty response.
    """
    keep = mask.bool()
    # where, not multiply: padding may hold inf/NaN, and 0 * inf is NaN.
    total = torch.where(keep, values, 0.0).sum(dim=dim)
    count = keep.sum(dim=dim)
    return total / count.clamp(min=1)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `values` over all positions where `mask` is 1.

    Args:
        values: any shape, e.g. (b, t).
        mask: same shape as `values`, 0/1 or bool.
        unbiased: apply Bessel's correction n / (n - 1).

    Returns:
        A scalar.

    Raises:
        ValueError: if the mask selects no element, or only one when `unbiased`.
    """
    count = int(mask.bool().sum().item())
    if count == 0 or (unbiased and count == 1):
        raise ValueError(
            f"masked_var needs at least {2 if unbiased else 1} masked element(s), got {count}; "
            "check that the batch has non-empty responses."
        )
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise `values` to zero mean and unit variance over the masked positions.

    Args:
        values: (b, t).
        mask: (b, t), 0/1 or bool.
        shift_mean: if False, add the mean back (rewards keep their sign, only their scale changes).

    Returns:
        (b, t): (values - mean) / (std + 1e-8), with the mean added back if not `shift_mean`;
        0 where `mask` is 0. Mean and unbiased variance are taken over the masked positions.
    """
    mean = masked_mean(values, mask)
    std = masked_var(values, mask, unbiased=True).sqrt()
    whitened = (values - mean) / (std + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


def masked_sums(values: Tensor, mask: Tensor) -> Tensor:
    """(sum of x, sum of x^2, count) over the masked positions, float64, shape (3,): moments that
    add up across batches or processes (all-reduce them, then `whiten_from_sums`)."""
    m = mask.double()
    x = values.double() * m
    return torch.stack([x.sum(), (x * values.double()).sum(), m.sum()])


def moments_from_sums(sums: Tensor) -> tuple[float, float]:
    """(mean, unbiased standard deviation) from `masked_sums` (possibly added up over batches
    or processes)."""
    total, total_sq, count = sums.tolist()
    if count < 2:
        raise ValueError(f"whitening needs at least 2 masked elements, got {count:.0f}")
    mean = total / count
    return mean, math.sqrt(max(total_sq - count * mean**2, 0.0) / (count - 1))


def whiten_from_sums(values: Tensor, mask: Tensor, sums: Tensor, shift_mean: bool = True) -> Tensor:
    """`masked_whiten` with the mean and unbiased variance taken from `masked_sums` (possibly of a
    larger batch than `values`, e.g. every rank's). (b, t) -> (b, t), 0 where `mask` is 0."""
    mean, std = moments_from_sums(sums)
    whitened = (values - mean) / (std + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0.0)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of the softmax distribution at each position.

    Args:
        logits: (b, t, v), any float dtype; -inf entries (filtered tokens) are allowed.

    Returns:
        (b, t) float32.
    """
    return entropy_from_logprobs(logits.float().log_softmax(dim=-1))


def entropy_from_logprobs(logprobs: Tensor) -> Tensor:
    """Entropy (nats) from full log-softmax outputs (b, t, v) -> (b, t), so a caller that already
    has them does not pay for a second log-softmax over the vocabulary."""
    # A -inf logit has p = 0; zero its log so 0 * -inf does not become NaN.
    return -(logprobs.exp() * logprobs.nan_to_num(neginf=0.0)).sum(dim=-1)


def kl_exact(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """KL(policy || reference) of the two next-token distributions at each position, summed over
    the vocabulary: sum_v p(v) (log p(v) - log q(v)). Same expectation as `kl_per_token`'s k1 at
    a sampled position, without the sampling noise of the token choice (always >= 0).

    Args:
        logprobs, ref_logprobs: (b, t, v) full log-softmax outputs; -inf entries (p = 0) allowed.

    Returns:
        (b, t) float32 nats.
    """
    logprobs, ref_logprobs = logprobs.float(), ref_logprobs.float()
    # p = 0 terms contribute nothing, whatever the reference says (avoids 0 * (-inf - x) = NaN)
    diff = torch.where(logprobs == float("-inf"), 0.0, logprobs - ref_logprobs)
    return (logprobs.exp() * diff).sum(dim=-1)


def kl_per_token(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: Literal["k1", "k3"] = "k1"
) -> Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probabilities.

    Args:
        logprobs: (b, t), policy log-probabilities of the sampled tokens.
        ref_logprobs: (b, t), reference-model log-probabilities of the same tokens.
        estimator: "k1" = logp - logp_ref (unbiased, can be negative);
            "k3" = (r - 1) - log r with r = exp(logp_ref - logp) (unbiased, always >= 0).

    Returns:
        (b, t) KL estimate in nats; padding positions are not masked here.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        # Use the log-ratio directly rather than log(exp(.)), which loses precision.
        log_ratio = ref_logprobs - logprobs
        return log_ratio.exp() - 1 - log_ratio
    raise ValueError(f"kl_per_token: unknown estimator {estimator!r}; use 'k1' or 'k3'.")


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last response token in each row.

    Args:
        mask: (b, t), 0/1 or bool; a row may be all zero (empty response).

    Returns:
        (b,) long: position of the last 1 in each row, 0 for an all-zero row.
    """
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask.bool(), positions, 0).amax(dim=-1)


def penalized_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards: a KL penalty on every response token plus the score on the last one.

    Args:
        scores: (b,), reward-model score of each sequence.
        kl: (b, t), per-token KL (see `kl_per_token`).
        mask: (b, t), 0/1 or bool response mask.
        kl_coef: KL penalty coefficient beta.

    Returns:
        (b, t): -kl_coef * kl * mask, with `scores` added at `last_token_index(mask)`
        (position 0 for an empty row).
    """
    rewards = -kl_coef * torch.where(mask.bool(), kl, 0.0)
    last = last_token_index(mask).unsqueeze(-1)
    return rewards.scatter_add(-1, last, scores.unsqueeze(-1).to(rewards.dtype))


def gae_advantages(
    values: Tensor, rewards: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015) over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}.
    Positions where `mask` is 0 count as after the end of the response: their value and
    reward are 0, so the value after the last token is 0. No whitening is applied.

    Args:
        values: (b, t), value estimates from the rollout.
        rewards: (b, t), per-token rewards (see `penalized_rewards`).
        mask: (b, t), 0/1 or bool, contiguous from position 0 and right-padded.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        (advantages, returns), each (b, t), with returns = advantages + values; both 0
        where `mask` is 0.
    """
    keep = mask.bool()
    values = torch.where(keep, values, 0.0)
    rewards = torch.where(keep, rewards, 0.0)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    reversed_advantages = []
    for step in reversed(range(values.shape[1])):
        delta = rewards[:, step] + gamma * next_value - values[:, step]
        # Zeroing at padding keeps the recursion from leaking across the end of the response.
        advantage = torch.where(keep[:, step], delta + gamma * lam * next_advantage, 0.0)
        reversed_advantages.append(advantage)
        next_value, next_advantage = values[:, step], advantage
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = torch.where(keep, advantages + values, 0.0)
    return advantages, returns


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate loss, -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A).

    Args:
        logprobs: (b, t), current policy log-probabilities (carries the gradient).
        old_logprobs: (b, t), log-probabilities at rollout time.
        advantages: (b, t).
        mask: (b, t), 0/1 or bool response mask.
        clip_range: epsilon.

    Returns:
        (loss, clipfrac, approx_kl), all scalars. clipfrac is the fraction of masked tokens
        where the clipped term was chosen; approx_kl = mean of 0.5 * (logprobs - old)^2.
        clipfrac and approx_kl are detached.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask).detach()
    approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return loss, clipfrac, approx_kl


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss, 0.5 * max((V - R)^2, (V_clipped - R)^2).

    Args:
        values: (b, t), current value estimates (carries the gradient).
        old_values: (b, t), value estimates at rollout time.
        returns: (b, t), GAE returns.
        mask: (b, t), 0/1 or bool response mask.
        clip_range: how far (absolute) values may move from `old_values` before clipping.

    Returns:
        (loss, clipfrac), scalars. clipfrac is the detached fraction of masked tokens where
        the clipped error was the larger one.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask).detach()
    return loss, clipfrac


class FixedKLController:
    """KL coefficient that never changes; same interface as `AdaptiveKLController`."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """KL coefficient steered towards a target KL (Ziegler et al. 2019, "Fine-Tuning LMs
    from Human Preferences").

    The proportional error is clipped to +-0.2 so one unusual batch cannot swing beta far;
    `horizon` sets how many samples it takes to correct a given error.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(
                f"AdaptiveKLController: target ({target}) and horizon ({horizon}) must be > 0."
            )
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Scale the coefficient by 1 + clip(current_kl / target - 1, +-0.2) * n_steps / horizon.

        Args:
            current_kl: observed KL of the latest batch, in the units of `target`
                (per-sequence nats by convention).
            n_steps: number of samples that batch contained.
        """
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        # Only beta is state; target and horizon are configuration and come from config.
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


# ---- rewards -------------------------------------------------------------------------------------


def combine_ensemble(scores: Tensor, how: str, std_coef: float = 1.0) -> Tensor:
    """One score per sample from an ensemble's scores.

    Args:
        scores: (m, b) scores of m reward models for b samples.
        how: "mean", "min", or "mean_minus_std" (mean - std_coef * std: a pessimistic score that
            punishes samples the models disagree on, a guard against exploiting one model's errors).
    Returns: (b,). The std is the population std (over m), so one model gives std 0.
    """
    if how == "mean":
        return scores.mean(0)
    if how == "min":
        return scores.min(0).values
    if how == "mean_minus_std":
        return scores.mean(0) - std_coef * scores.std(0, unbiased=False)
    raise ValueError(f"unknown ensemble combination {how!r}; expected mean, min or mean_minus_std")


class RunningMoments:
    """Running mean and std of every score seen so far (Chan et al.'s parallel update), used to
    standardise rewards whose scale drifts as the policy improves."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: Tensor) -> None:
        """Fold a batch of scores (b,) into the moments."""
        values = values.detach().double().flatten()
        n = values.numel()
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        if self.count == 0:
            self.mean, self.var = batch_mean, batch_var
        else:
            # population variance of the union of both sets
            m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
            self.mean, self.var = self.mean + delta * n / total, m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def normalize_scores(
    scores: Tensor, mean: float, std: float, clip: float | None, eps: float = 1e-8
) -> Tensor:
    """(scores - mean) / std, then clipped to [-clip, clip] when clip is set. (b,) -> (b,)."""
    normalized = (scores - mean) / (std + eps)
    return normalized if clip is None else normalized.clamp(-clip, clip)
