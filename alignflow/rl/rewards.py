"""What the policy stages maximise: a weighted sum of a reward-model ensemble's score, rule
rewards and a length penalty (config section `rewards`).

A rule reward is any importable function named `package.module:function` in
`rewards.rules[].function`, called once per batch as

    function(prompts, completions, **columns) -> list[float]

- `prompts`: list of chat prompts (each a list of `{"role", "content"}` messages);
- `completions`: list of the sampled responses, as text (special tokens removed);
- `columns`: every other column of the prompt rows, one list per column (e.g. `family=[...]`),
  as TRL's GRPO/RLOO pass dataset columns to `reward_funcs`.
It returns one finite float per completion; `alignflow.demo:oracle_reward` is an example.

Reward models are scored on exactly the tokens PPO samples: the prompt rendered with the chat
template and generation prompt, then the response, ending at EOS, the score read at that EOS.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from alignflow.config import PipelineConfig, RewardsConfig
from alignflow.rl import functional
from alignflow.rl.rollout import encode_completions, token_scores

RuleFunction = Callable[..., Sequence[float]]


class RewardError(ValueError):
    """A reward that cannot be computed; the message names the config key or function."""


def import_rule(spec: str, where: str = "rewards.rules") -> RuleFunction:
    """The function `package.module:function` names, or a one-line error saying what is missing."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RewardError(f"{where}: cannot import module '{module_name}' ({error})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise RewardError(f"{where}: module '{module_name}' has no function '{name}'")
    return function


def rule_scores(
    name: str,
    function: RuleFunction,
    prompts: Sequence[list[dict]],
    completions: Sequence[str],
    rows: Sequence[dict],
) -> list[float]:
    """`function`'s scores for `completions`, the prompt rows' other columns passed as keywords;
    a RewardError naming the rule when it returns the wrong count or a non-finite value."""
    columns = {
        key: [row.get(key) for row in rows] for key in (rows[0] if rows else {}) if key != "prompt"
    }  # fmt: skip
    values = list(function(list(prompts), list(completions), **columns))
    if len(values) != len(completions):
        raise RewardError(
            f"rule {name} returned {len(values)} scores for {len(completions)} completions"
        )
    bad = [v for v in values if not isinstance(v, int | float) or not math.isfinite(v)]
    if bad:
        raise RewardError(f"rule {name} returned {bad[0]!r}; expected finite floats")
    return [float(v) for v in values]


@dataclass
class Rule:
    name: str  # the `module:function` spec, used as the metric name
    function: RuleFunction
    weight: float


@dataclass
class Rewarder:
    """Scores (prompt, completion) pairs. `models` are one-output sequence-classification heads."""

    cfg: RewardsConfig
    tokenizer: object
    models: list = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)

    def __post_init__(self) -> None:
        for model in self.models:
            model.eval().requires_grad_(False)
        self.eos_token_id = self.tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return self.models[0].device if self.models else torch.device("cpu")

    # ---- reward models -------------------------------------------------------------------------

    @torch.no_grad()
    def model_scores(
        self, sequence: Tensor, attention: Tensor, score_index: Tensor, trunk=None
    ) -> Tensor:
        """Every model's score at `score_index` (b,) of each sequence (b, L). Returns (m, b).
        `trunk`: the batch's shared hidden states (alignflow.rl.trunk), when every model shares
        them."""
        rows = torch.arange(sequence.shape[0], device=sequence.device)
        return torch.stack(
            [
                token_scores(model, sequence, attention, trunk)[rows, score_index]
                for model in self.models
            ]
        )

    def encode(
        self, prompts: Sequence[list[dict]], completions: Sequence[str]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Texts to the PPO layout: left-padded queries + right-padded responses ending at EOS.

        Returns (sequence, attention, score_index, response_lengths), score_index at the EOS.
        """
        sequence, attention, query_len, mask = encode_completions(
            self.tokenizer, prompts, completions, self.device
        )
        lengths = mask.sum(-1)
        return sequence, attention, query_len + lengths - 1, lengths.cpu()

    # ---- the total -----------------------------------------------------------------------------

    def combine(
        self,
        model_scores: Tensor | None,
        prompts: Sequence[list[dict]],
        completions: Sequence[str],
        rows: Sequence[dict],
        lengths: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of the terms. model_scores (m, b) or None; lengths (b,) response tokens.

        Returns (total (b,), components: name -> (b,) unweighted term).
        """
        cfg, b = self.cfg, len(completions)
        total = torch.zeros(b)
        components: dict[str, Tensor] = {}
        if model_scores is not None:
            scores = model_scores.float().cpu()
            combined = functional.combine_ensemble(scores, cfg.ensemble, cfg.ensemble_std_coef)
            components["reward_model"] = combined
            if scores.shape[0] > 1:
                components["reward_model_std"] = scores.std(0, unbiased=False)
            total += cfg.model_weight * combined
        for rule in self.rules:
            values = self._call_rule(rule, prompts, completions, rows)
            components[f"rule/{rule.name}"] = values
            total += rule.weight * values
        if cfg.length_penalty:
            components["length_penalty"] = -cfg.length_penalty * lengths.float().cpu()
            total += components["length_penalty"]
        return total, components

    def _call_rule(
        self, rule: Rule, prompts: Sequence[list[dict]], completions: Sequence[str], rows
    ) -> Tensor:
        values = rule_scores(rule.name, rule.function, prompts, completions, rows)
        return torch.tensor(values, dtype=torch.float32)

    def score(
        self,
        prompts: Sequence[list[dict]],
        completions: Sequence[str],
        rows: Sequence[dict] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total reward (b,) and its components for text completions (RLOO/GRPO, best-of-n)."""
        rows = list(rows) if rows is not None else [{} for _ in completions]
        if not self.models:  # rules only: no forward pass, lengths still in tokens (+ EOS)
            encoded = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
            lengths = torch.tensor([len(ids) + 1 for ids in encoded])
            return self.combine(None, prompts, completions, rows, lengths)
        sequence, attention, score_index, lengths = self.encode(prompts, completions)
        scores = self.model_scores(sequence, attention, score_index)
        return self.combine(scores, prompts, completions, rows, lengths)


def check_rewards(cfg: PipelineConfig) -> None:
    """Fail before any work when a rule reward or the evaluation's rule judge cannot be imported
    (one line naming the key)."""
    for index, rule in enumerate(cfg.rewards.rules):
        import_rule(rule.function, f"rewards.rules[{index}].function")
    if cfg.evaluate.judge != "reward_model":
        import_rule(cfg.evaluate.judge, "evaluate.judge")


def load_rewarder(
    cfg: PipelineConfig, reward_dirs: Sequence[str], tokenizer, device: str | None = None
) -> Rewarder:
    """The rewarder `cfg.rewards` describes, with this run's reward models (`reward_dirs`) and
    `rewards.extra_models`; no model is loaded when `rewards.model_weight` is 0."""
    from alignflow.models import load_scalar_head_model

    rewards, trust = cfg.rewards, cfg.model.trust_remote_code
    paths = [*reward_dirs, *rewards.extra_models] if rewards.model_weight else []
    models = [load_scalar_head_model(p, trust, tokenizer.pad_token_id, device) for p in paths]
    rules = [
        Rule(
            rule.function.replace(":", "."),
            import_rule(rule.function, f"rewards.rules[{i}].function"),
            rule.weight,
        )
        for i, rule in enumerate(rewards.rules)
    ]
    return Rewarder(rewards, tokenizer, models, rules)
