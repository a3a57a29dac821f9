"""The PPO rollout/update loop on top of transformers models.

Per update: sample responses from the policy (HF `generate`, KV cache), score them (reward-model
ensemble at the EOS token, rule rewards, length penalty: alignflow.rl.rewards), optionally normalise
and clip the scores, penalise per-token KL to the frozen reference, estimate advantages with GAE, then
run several epochs of clipped policy and value updates over minibatches. Every update logs the standard
PPO metrics and the seconds spent generating vs. training. Checkpoints hold everything needed to resume
exactly: weights, optimizer, LR schedule, KL controller, reward moments, RNG states and the history.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from alignflow import distributed
from alignflow.config import PPOConfig, RewardsConfig
from alignflow.progress import Progress
from alignflow.rl import functional
from alignflow.rl.rewards import Rewarder
from alignflow.rl.rollout import (
    decode,
    response_logprobs,
    response_logprobs_and_kl,
    sample_with_logprobs,
    stop_token_ids,
    token_scores,
)
from alignflow.rl.strategy import TorchStrategy, make_strategy
from alignflow.rl.trunk import TrunkStates, shared_depth

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"


@dataclass
class Rollout:
    """One batch of experience; every (b, t) tensor is aligned with the response tokens."""

    sequence: Tensor  # (b, q + t)
    attention_mask: Tensor  # (b, q + t)
    query_len: int
    mask: Tensor  # (b, t) response tokens up to and including EOS
    logprobs: Tensor  # (b, t)
    values: Tensor  # (b, t)
    advantages: Tensor  # (b, t)
    returns: Tensor  # (b, t)
    trunk: TrunkStates | None = None  # hidden states below the layers any model trains
    # kl.estimator exact: the reference's next-token log-softmax (b, t, v), and the weight of
    # the exact KL in the loss (kl coef over the advantages' whitening scale)
    ref_distributions: Tensor | None = None
    kl_loss_coef: float = 0.0

    def trunk_rows(self, idx: Tensor) -> TrunkStates | None:
        return None if self.trunk is None else self.trunk[idx]


class NonFiniteError(RuntimeError):
    pass


def sampling_warning(cfg: PPOConfig) -> str | None:
    """Why the sampling settings bias the KL estimate and the PPO ratio, or None when they don't.

    Log-probs are computed from the full (temperature-scaled) distribution; top-k/top-p sample
    from a truncated one, so sampled tokens are not draws from the policy being scored.
    """
    sampling = cfg.sampling
    if sampling.top_k == 0 and sampling.top_p == 1.0:
        return None
    return (
        f"policy.ppo.sampling top_k={sampling.top_k} top_p={sampling.top_p} samples from a truncated "
        "distribution, not the policy's: the KL estimate and the PPO ratio are biased. "
        "Use top_k: 0 and top_p: 1.0 for PPO."
    )


def prompt_indices(n: int, size: int, seed: int, update: int) -> list[int]:
    """Which of `n` prompts update `update` rolls out: `size` consecutive places of an endless
    sequence of epochs, each a fresh permutation of all prompts drawn from (seed, epoch). A batch
    that crosses an epoch boundary finishes one permutation and starts the next, so every prompt
    is seen once per epoch. Runs with different seeds draw unrelated permutations."""
    orders: dict[int, list[int]] = {}
    picks = []
    for place in range(update * size, (update + 1) * size):
        epoch = place // n
        if epoch not in orders:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            orders[epoch] = torch.randperm(n, generator=generator).tolist()
        picks.append(orders[epoch][place % n])
    return picks


def _as_rows(prompts: Sequence) -> list[dict]:
    """Prompt rows ({"prompt": messages, other columns}) from rows or bare message lists."""
    return [p if isinstance(p, dict) else {"prompt": p} for p in prompts]


class PPOTrainer:
    def __init__(
        self,
        cfg: PPOConfig,
        policy,
        reference,
        reward_model,
        value_model,
        tokenizer,
        prompts: Sequence[list[dict] | dict],
        seed: int,
        output_dir: Path,
        log_metrics: Callable[[dict, int], None] = lambda metrics, step: None,
        log_samples: Callable[[list[dict], int], None] = lambda rows, step: None,
        deepspeed: str | Path | dict | None = None,
    ) -> None:
        """`reward_model`: a Rewarder, or one scalar-head model (scored alone, weight 1).
        `prompts`: prompt rows with a "prompt" message list (other columns go to rule rewards),
        or bare message lists. `deepspeed`: a DeepSpeed config (path or dict) to train policy and
        critic under a DeepSpeed engine; the process must have been started by a launcher."""
        self.cfg, self.tokenizer, self.prompts = cfg, tokenizer, _as_rows(prompts)
        # Data parallel over N launched processes: each rank rolls out and trains on its slice of
        # every batch and gradients are averaged, so the replicas stay identical.
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if cfg.rollout_batch_size % self.world or cfg.minibatch_size % self.world:
            raise ValueError(
                f"policy.ppo.rollout_batch_size ({cfg.rollout_batch_size}) and policy.ppo.minibatch_size "
                f"({cfg.minibatch_size}) must be divisible by the {self.world} processes"
            )
        distributed.init_process_group_from_env()
        if not isinstance(reward_model, Rewarder):
            reward_model = Rewarder(RewardsConfig(), tokenizer, [reward_model])
        self.policy, self.reference, self.rewarder, self.value_model = (
            policy,
            reference,
            reward_model,
            value_model,
        )
        reference.eval().requires_grad_(False)
        if warning := sampling_warning(cfg):
            log.warning(warning)
        policy.eval()  # no dropout: the rollout and update distributions must match
        value_model.eval()
        # AdamW here (N processes: gradients averaged), or a DeepSpeed engine (ZeRO-2/3)
        if cfg.critic_warmup and deepspeed is not None:
            raise ValueError(
                "policy.ppo.critic_warmup is not supported under DeepSpeed (its engine steps the "
                "policy's parameters with the critic's); set it to 0"
            )
        self.strategy = make_strategy(cfg, policy, value_model, deepspeed)
        self.optimizer = self.strategy.optimizer
        # linear: the learning rate falls to 0 at the last update (stepped once per update)
        decay = (lambda u: max(0.0, 1 - u / cfg.updates)) if cfg.lr_schedule == "linear" else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, decay or (lambda u: 1.0))
        self.reward_moments = functional.RunningMoments()
        self.kl_ctl = (
            functional.AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon)
            if cfg.kl.adaptive
            else functional.FixedKLController(cfg.kl.coef)
        )
        self.seed, self.output_dir = seed, Path(output_dir)
        self.log_metrics, self.log_samples = log_metrics, log_samples
        self.stop_ids = torch.tensor(stop_token_ids(policy))  # a reply ends at any of them
        self.trunk_depth, self.rewards_share_trunk = self._shared_trunk()
        self.update_index = 0
        self.resumed_from: int | None = None
        self.stopped_early: str | None = None  # why training stopped before cfg.updates
        self.history: list[dict] = []

    def _shared_trunk(self) -> tuple[int, bool]:
        """(how many bottom layers policy, reference and critic share frozen, whether the reward
        models share them too): run once per rollout batch (alignflow.rl.trunk). Depth 0 when
        policy.ppo.shared_trunk is off or under DeepSpeed (sharded weights). A reward model that does not
        share them (another base, not quantized like the policy) is scored with whole passes."""
        if not self.cfg.shared_trunk or not isinstance(self.strategy, TorchStrategy):
            return 0, False
        depth = shared_depth([self.policy, self.reference, self.value_model])
        if not depth:
            log.info("PPO shared trunk: none (policy and critic share no frozen bottom layers)")
            return 0, False
        models = self.rewarder.models
        rewards_share = bool(models) and shared_depth([self.policy, *models]) >= depth
        log.info(
            "PPO shared trunk: the bottom %d decoder layers run once per rollout batch%s",
            depth,
            "" if rewards_share or not models else "; the reward models run whole (not shared)",
        )
        return depth, rewards_share

    # ---- experience -------------------------------------------------------------------------

    def _prompt_batch(self, update: int) -> list[dict]:
        """Prompts for an update (this rank's share): see `prompt_indices`."""
        picks = prompt_indices(len(self.prompts), self.cfg.rollout_batch_size, self.seed, update)
        return [self.prompts[i] for i in picks][self.rank :: self.world]

    def _scores(self, sampled, rows: list[dict]) -> tuple[Tensor, dict[str, float], list[str]]:
        """Scores (b,) after the missing-EOS penalty, normalisation and clipping; their stats;
        and the completions as text."""
        cfg, mask, q = self.cfg, sampled.mask, sampled.query_len
        last = functional.last_token_index(mask)
        index = torch.arange(mask.shape[0], device=mask.device)
        ends = sampled.response[index, last]
        has_eos = torch.isin(ends, self.stop_ids.to(ends.device)) & (mask.sum(-1) > 0)
        completions = decode(self.tokenizer, sampled.response, mask)
        model_scores = None
        if self.rewarder.models:
            model_scores = self.rewarder.model_scores(
                sampled.sequence, sampled.attention_mask, q + last,
                sampled.trunk if self.rewards_share_trunk else None,
            )  # fmt: skip
        prompts = [row["prompt"] for row in rows]
        total, components = self.rewarder.combine(
            model_scores, prompts, completions, rows, mask.sum(-1)
        )
        scores = total.to(mask.device)
        if not torch.isfinite(scores).all():
            raise NonFiniteError(
                f"reward is not finite at update {self.update_index} "
                f"({', '.join(k for k, v in components.items() if not torch.isfinite(v).all())})"
            )
        stats = {f"reward/{k}": v.mean().item() for k, v in components.items()}
        stats["eos_rate"] = has_eos.float().mean().item()
        if cfg.missing_eos_score is not None:
            scores = torch.where(has_eos, scores, torch.full_like(scores, cfg.missing_eos_score))
        stats["reward"] = scores.mean().item()
        if cfg.reward_normalization:
            self.reward_moments.update(distributed.all_gather(scores))  # every rank's scores
            mean, std = self.reward_moments.mean, self.reward_moments.std
            scores = functional.normalize_scores(scores, mean, std, cfg.reward_clip)
        elif cfg.reward_clip is not None:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        stats["reward_used"] = scores.mean().item()
        return scores, stats, completions

    @torch.no_grad()
    def rollout(self, rows: list[dict], update: int) -> tuple[Rollout, dict]:
        cfg = self.cfg
        # sampling is a function of (seed, update, rank)
        torch.manual_seed(self.seed * 100_003 + update + 1_000_003 * self.rank)
        prompts = [row["prompt"] for row in rows]
        exact = cfg.kl.estimator == "exact"
        try:
            with self.strategy.generating():  # ZeRO-3: the policy gathered once, not per token
                sampled = sample_with_logprobs(
                    self.policy, self.reference, self.tokenizer, prompts, cfg.sampling,
                    exact_kl=exact, trunk_depth=self.trunk_depth, keep_reference=exact,
                )  # fmt: skip
        except RuntimeError as error:  # torch.multinomial on NaN/inf probabilities
            if "probability tensor" not in str(error):
                raise
            raise NonFiniteError(
                f"policy is not finite at update {update}: sampling saw NaN/inf probabilities "
                "(a diverged update; lower policy.ppo.learning_rate or resume from an earlier checkpoint)"
            ) from error
        sequence, attention, q = sampled.sequence, sampled.attention_mask, sampled.query_len
        mask, logprobs, ref_logprobs = sampled.mask, sampled.logprobs, sampled.ref_logprobs
        values = token_scores(self.value_model, sequence, attention, sampled.trunk)[:, q - 1 : -1]
        scores, score_stats, completions = self._scores(sampled, rows)

        maskf = mask.float()
        logprobs, ref_logprobs, values = logprobs * maskf, ref_logprobs * maskf, values * maskf
        if exact:
            kl = sampled.token_kl * maskf
        else:
            kl = functional.kl_per_token(logprobs, ref_logprobs, cfg.kl.estimator) * maskf
        rewards = functional.penalized_rewards(scores, kl, maskf, self.kl_ctl.value)
        kl_loss_coef = self.kl_ctl.value if exact else 0.0
        if cfg.whiten_rewards:
            if exact:  # the rewards' KL part is scaled by it
                kl_loss_coef /= self._std(rewards, maskf) + 1e-8
            rewards = self._whiten(rewards, maskf, shift_mean=False)
        advantages, returns = functional.gae_advantages(values, rewards, maskf, cfg.gamma, cfg.lam)
        # the exact KL's own gradient enters the loss at the advantages' scale: whitening divides
        # them by their standard deviation, so the KL term is divided by it too
        if cfg.whiten_advantages:
            if exact:
                kl_loss_coef /= self._std(advantages, maskf) + 1e-8
            advantages = self._whiten(advantages, maskf)
        kl_k1_seq = sampled.sampled_kl
        stats = {
            **score_stats,
            "rlhf_reward": rewards.sum(-1).mean().item(),
            "kl": kl_k1_seq.mean().item(),
            # the configured estimator's value (the KL that is penalised), per sequence
            "kl_estimate": kl.sum(-1).mean().item(),
            "kl_per_token": (kl_k1_seq.sum() / maskf.sum().clamp(min=1)).item(),
            "kl_coef": self.kl_ctl.value,
            "response_length": maskf.sum(-1).mean().item(),
        }
        if cfg.log_samples_every and update % cfg.log_samples_every == 0:
            self._log_sample_table(rows, completions, scores, kl_k1_seq, update)
        if exact:
            stats["kl_loss_coef"] = kl_loss_coef
        batch = Rollout(
            sequence, attention, q, mask, logprobs, values, advantages, returns, sampled.trunk,
            sampled.ref_distributions, kl_loss_coef,
        )  # fmt: skip
        return batch, stats

    def _log_sample_table(self, rows, completions, scores, kl, update: int) -> None:
        n = self.cfg.samples_logged
        self.log_samples(
            [
                {
                    "update": update,
                    "prompt": row["prompt"][-1]["content"],
                    "completion": completion,
                    "score": round(score, 4),
                    "kl": round(k, 4),
                }
                for row, completion, score, k in zip(
                    rows[:n], completions[:n], scores[:n].tolist(), kl[:n].tolist(), strict=True
                )
            ],
            update,
        )

    # ---- optimisation -----------------------------------------------------------------------

    def _minibatch_step(self, batch: Rollout, idx: Tensor) -> dict[str, float]:
        cfg = self.cfg
        seq, attn, mask = batch.sequence[idx], batch.attention_mask[idx], batch.mask[idx].float()
        trunk = batch.trunk_rows(idx)
        if self.update_index < cfg.critic_warmup:  # the critic alone: no policy pass
            # the policy gets no gradient, so the optimizer leaves it and its moments untouched
            vf_loss, vf_clipfrac = self._value_loss(batch, idx, seq, attn, mask, trunk)
            grad_norm = self._checked_step(
                cfg.value_coef * vf_loss, "policy.ppo.value_learning_rate"
            )
            return {
                "value_loss": vf_loss.item(),
                "value_clipfrac": vf_clipfrac.item(),
                "grad_norm": grad_norm,
            }
        kl_loss = None
        if batch.ref_distributions is None:
            logprobs, entropy = response_logprobs(
                self.policy, seq, attn, batch.query_len, cfg.sampling.temperature, trunk=trunk
            )
        else:  # kl.estimator exact: the KL to the reference, with its gradient
            logprobs, entropy, kl = response_logprobs_and_kl(
                self.policy, seq, attn, batch.query_len, cfg.sampling.temperature,
                batch.ref_distributions[idx], trunk=trunk,
            )  # fmt: skip
            kl_loss = functional.masked_mean(kl, mask)
        if cfg.entropy_coef == 0:  # logged only: keep it out of the autograd graph
            entropy = entropy.detach()
        vf_loss, vf_clipfrac = self._value_loss(batch, idx, seq, attn, mask, trunk)
        pg_loss, clipfrac, approx_kl = functional.policy_loss(
            logprobs, batch.logprobs[idx], batch.advantages[idx], mask, cfg.clip_range
        )
        mean_entropy = functional.masked_mean(entropy, mask)
        loss = pg_loss + cfg.value_coef * vf_loss - cfg.entropy_coef * mean_entropy
        if kl_loss is not None:
            loss = loss + batch.kl_loss_coef * kl_loss
        grad_norm = self._checked_step(
            loss, "policy.ppo.learning_rate", f" (policy {pg_loss.item()}, value {vf_loss.item()})"
        )
        extra = {} if kl_loss is None else {"kl_loss": kl_loss.item()}
        return {
            **extra,
            "policy_loss": pg_loss.item(),
            "value_loss": vf_loss.item(),
            "value_clipfrac": vf_clipfrac.item(),
            "grad_norm": grad_norm,
            "clipfrac": clipfrac.item(),
            "approx_kl": approx_kl.item(),
            "entropy": mean_entropy.item(),
        }

    def _value_loss(self, batch: Rollout, idx, seq, attn, mask, trunk) -> tuple[Tensor, Tensor]:
        values = token_scores(self.value_model, seq, attn, trunk)[:, batch.query_len - 1 : -1]
        return functional.value_loss(
            values, batch.values[idx], batch.returns[idx], mask, self.cfg.value_clip_range
        )

    def _checked_step(self, loss: Tensor, lower: str, parts: str = "") -> float:
        """One optimizer step, refused on a non-finite loss or gradient norm; `lower` names the
        learning rate to lower. Returns the gradient norm before clipping."""
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"PPO loss is {loss.item()} at update {self.update_index}{parts}; lower {lower}"
            )
        grad_norm = self.strategy.step(loss)
        if not torch.isfinite(grad_norm):
            raise NonFiniteError(
                f"PPO gradient norm is {grad_norm.item()} at update {self.update_index}; "
                f"lower {lower}"
            )
        return grad_norm.item()

    def optimise(self, batch: Rollout, update: int) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + update)
        n = batch.sequence.shape[0]
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(self.cfg.ppo_epochs):
            minibatch = self.cfg.minibatch_size // self.world  # this rank's share of one
            for idx in torch.randperm(n, generator=generator).split(minibatch):
                for key, value in self._minibatch_step(batch, idx).items():
                    totals[key] = totals.get(key, 0.0) + value
                steps += 1
        return {key: value / steps for key, value in totals.items()}

    def step(self) -> dict[str, float]:
        """One PPO update: rollout, optimise, adapt the KL coefficient. Returns its metrics."""
        update = self.update_index
        started = time.perf_counter()
        batch, stats = self.rollout(self._prompt_batch(update), update)
        generated = time.perf_counter()
        stats.update(self.optimise(batch, update))
        trained = time.perf_counter()
        stats = self._mean_over_ranks(stats)  # one view of the update: same beta, same stop
        stats["learning_rate"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.kl_ctl.update(stats["kl"], self.cfg.rollout_batch_size)
        stats.update(generation_seconds=generated - started, training_seconds=trained - generated)
        self.update_index += 1
        self.history.append(stats)
        self.log_metrics(stats, update)
        return stats

    def _whiten(self, values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
        """Whiten over the global batch: every rank's masked moments, so N processes whiten
        exactly as one process holding the whole batch would."""
        if self.world == 1:
            return functional.masked_whiten(values, mask, shift_mean)
        sums = distributed.all_reduce_mean(functional.masked_sums(values, mask)) * self.world
        return functional.whiten_from_sums(values, mask, sums, shift_mean)

    def _std(self, values: Tensor, mask: Tensor) -> float:
        """Masked standard deviation (unbiased) over the global batch, as `_whiten` takes it."""
        sums = functional.masked_sums(values, mask)
        if self.world > 1:
            sums = distributed.all_reduce_mean(sums) * self.world
        return functional.moments_from_sums(sums)[1]

    def _mean_over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return stats
        keys = sorted(stats)
        means = distributed.all_reduce_mean(
            torch.tensor([stats[k] for k in keys], dtype=torch.float64)
        )
        return dict(zip(keys, means.tolist(), strict=True))

    def check_replicas(self) -> None:
        """Raise unless every rank holds the same weights (gradients were averaged each step).
        Under ZeRO-3 each rank holds a shard, and DeepSpeed keeps them consistent."""
        if self.world == 1 or not self.strategy.replicated:
            return
        models = (self.policy, self.value_model)
        total = sum(
            p.detach().double().sum() for m in models for p in m.parameters() if p.requires_grad
        )
        sums = distributed.all_gather(torch.stack([total]))
        if not torch.all(sums == sums[0]):
            raise RuntimeError(
                f"PPO replicas diverged across ranks: parameter sums {sums.tolist()}"
            )

    def train(self) -> list[dict]:
        self.resume()
        bar = Progress("ppo", self.cfg.updates, initial=self.update_index)
        while self.update_index < self.cfg.updates and self.stopped_early is None:
            stats = self.step()
            bar.update(self.update_index, reward=stats["reward"], kl=stats["kl"])
            if self.cfg.kl_stop is not None and stats["kl"] > self.cfg.kl_stop:
                self.stopped_early = (
                    f"KL {stats['kl']:.3f} nats/sequence exceeded policy.ppo.kl_stop "
                    f"{self.cfg.kl_stop} at update {self.update_index - 1}"
                )
                log.warning("stopping PPO early: %s", self.stopped_early)
            if self.update_index % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self.check_replicas()
        return self.history

    def save_policy(self, directory: Path) -> None:
        """Save the trained policy (LoRA: its adapter) from rank 0. Every rank calls it: under
        ZeRO-3 the weights are gathered from all ranks first."""
        state = self.strategy.policy_state_dict()
        if distributed.is_main():
            extra = {} if state is None else {"state_dict": state}
            self.policy.save_pretrained(directory, **extra)
        distributed.barrier()

    # ---- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write update-N atomically, then drop older ones: a crash loses at most one interval.
        The strategy writes weights and optimizer state (rank 0, or every rank's shard under
        DeepSpeed); rank 0 writes the trainer state and commits; every rank waits for it."""
        root = self.output_dir / CHECKPOINT_DIR
        final = root / f"update-{self.update_index:06d}"
        tmp = root / f".tmp-update-{self.update_index:06d}"
        if distributed.is_main():
            _rmtree(tmp)  # left by a crash mid-save
            tmp.mkdir(parents=True)
        distributed.barrier()
        self.strategy.save(tmp)
        distributed.barrier()
        if distributed.is_main():
            torch.save(
                {
                    "update_index": self.update_index,
                    "scheduler": self.scheduler.state_dict(),
                    "kl_controller": self.kl_ctl.state_dict(),
                    "reward_moments": self.reward_moments.state_dict(),
                    "stopped_early": self.stopped_early,
                    "rng": _rng_state(),
                    "history": self.history,
                },
                tmp / "trainer_state.pt",
            )
            tmp.rename(final)
            for old in root.glob("update-*"):
                if old != final:
                    _rmtree(old)
        distributed.barrier()
        return final

    def resume(self) -> bool:
        checkpoints = sorted((self.output_dir / CHECKPOINT_DIR).glob("update-*"))
        if not checkpoints:
            return False
        latest = checkpoints[-1]
        self.strategy.load(latest)
        state = _load_trainer_state(latest / "trainer_state.pt")
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.reward_moments.load_state_dict(state["reward_moments"])
        _set_rng_state(state["rng"])
        self.update_index, self.history = state["update_index"], state["history"]
        self.stopped_early = state["stopped_early"]
        self.resumed_from = self.update_index
        log.info("resumed PPO from %s (update %d)", latest, self.update_index)
        return True


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or read; the message names the file."""


def _load_trainer_state(path: Path) -> dict:
    """Tensors and plain values only: a pickle planted in a checkpoint is refused, never run."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: refused, it holds more than tensors and plain values ({reason}); "
            f"delete {path.parent} to resume from the checkpoint before it"
        ) from None


def _rng_state() -> dict:
    """Every global RNG a step may touch. Sampling and minibatch order are also reseeded from
    (seed, update), so this guards code paths (dropout, user rule rewards) that are not."""
    import numpy as np

    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # as a tensor and numbers, which a weights-only load accepts (a numpy array is a pickle)
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
