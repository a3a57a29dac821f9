"""Held-out evaluation of policies: sampled with the evaluation's own settings (`evaluate.sampling`)
and a fixed seed, scored by the judge (`evaluate.judge`: a rule reward, the demo oracle on the
demo's data, or the reward model) and the reward model, with KL to the SFT reference, fluency under
the base model and the judge's win-rate; the evaluators of `evaluate.metrics` (alignflow.metrics:
reference answers, safety) add their figures in the evaluate stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignflow.config import SamplingConfig
from alignflow.judges import reward_model_scores
from alignflow.rl.rollout import completion_logprobs, decode, sample_with_logprobs

# "policy": the aligned one, by policy.algorithm; "champion": the registered one, when evaluated
POLICIES = ("base", "sft", "policy", "champion")
# The evaluation table's rows, in this order, when the summary has them (then each benchmark task's
# `bench_<task>`).
TABLE_FIGURES = ("judge_score", "reward_score", "llm_grade", "llm_win_rate_vs_sft",
                 "llm_win_rate_vs_champion", "bleu", "rouge_l", "refusal_rate",
                 "false_refusal_rate", "kl_to_sft", "mean_words", "fluency")  # fmt: skip


def table_figures(summary: dict) -> list[str]:
    """The per-policy figures of `summary` in table order, benchmark tasks last."""
    benchmarks = [key for key in summary if key.startswith("bench_")]
    return [key for key in TABLE_FIGURES if key in summary] + benchmarks


@dataclass
class PolicySamples:
    samples: list[list[str]]  # [sample_index][prompt_index]
    kl_to_reference: list[list[float]]  # per-sequence KL (nats), same layout
    tokens: list[list[int]]  # response tokens incl. EOS, same layout
    greedy: list[str]  # one greedy response per prompt


def _sample_batch(
    model, reference, tokenizer, prompts, sampling: SamplingConfig, greedy: bool, exact_kl: bool
):
    """Texts, KL to the reference and lengths of one batch. With `exact_kl` the KL is exact at each
    response token (the two next-token distributions compared over the vocabulary) and summed over
    the response: never negative, and without the noise of the token draw that the sampled
    log-ratio (k1, used otherwise) carries. It holds two (b, t, vocab) float32 distributions at
    once: `evaluate.batch_size` bounds them."""
    s = sample_with_logprobs(
        model, reference, tokenizer, prompts, sampling, greedy=greedy, exact_kl=exact_kl
    )
    kl = s.exact_kl if exact_kl else s.sampled_kl
    return decode(tokenizer, s.response, s.mask), kl.tolist(), s.mask.sum(-1).tolist()


def sample_policy(
    model,
    reference,
    tokenizer,
    prompts: Sequence[list[dict]],
    sampling: SamplingConfig,
    n_samples: int,
    seed: int,
    batch_size: int,
    greedy: bool = True,
    exact_kl: bool = False,
) -> PolicySamples:
    """`n_samples` sampled responses per prompt (seed + i for the i-th) plus, with `greedy`, one
    greedy response. Their KL to `reference` is exact per token with `exact_kl`, else the sampled
    log-ratio (k1) sum: same mean, more spread, no (b, t, vocab) distributions held."""
    model.eval()
    out = PolicySamples([], [], [], [])
    for index in range(n_samples):
        torch.manual_seed(seed + index)
        texts, kls, lengths = [], [], []
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            t, k, n = _sample_batch(
                model, reference, tokenizer, batch, sampling, greedy=False, exact_kl=exact_kl
            )
            texts += t
            kls += k
            lengths += n
        out.samples.append(texts)
        out.kl_to_reference.append(kls)
        out.tokens.append(lengths)
    if not greedy:
        return out
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        out.greedy += _sample_batch(
            model, reference, tokenizer, batch, sampling, greedy=True, exact_kl=False
        )[0]
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def grid_mean(grid: Sequence[Sequence[float]]) -> float:
    """The mean over every sample of every prompt ([sample_index][prompt_index])."""
    return _mean([value for values in grid for value in values])


Judge = Callable[[list[dict], PolicySamples], list[list[float]]]


def make_judge(spec: str, where: str, reward_model, tokenizer, batch_size: int) -> Judge:
    """The scorer `spec` names (`evaluate.judge`, `retrain.judge`), built once: `reward_model`
    scores with the given model (None is fine for a rule); `module:function` imports the rule
    reward (the rewards.rules signature: prompts, completions, the rows' other columns as
    keywords). It maps (rows, samples) to scores [sample_index][prompt_index]; `where` names the
    config key in errors."""
    if spec == "reward_model":
        return lambda rows, samples: score_with_reward_model(
            reward_model, tokenizer, rows, samples, batch_size
        )
    from alignflow.rl.rewards import import_rule, rule_scores

    function = import_rule(spec, where)

    def score(rows: list[dict], samples: PolicySamples) -> list[list[float]]:
        prompts = [row["prompt"] for row in rows]
        return [rule_scores(spec, function, prompts, texts, rows) for texts in samples.samples]

    return score


def fluency(base_model, tokenizer, rows, samples: PolicySamples, batch_size: int) -> list[float]:
    """Each sampled response's mean per-token log-likelihood (nats) under the untouched base model,
    in the samples' order: a policy that games its judge with broken language scores lower here.
    Responses are scored as they were sampled (their tokens, then the end-of-turn token)."""
    prompts = [row["prompt"] for row in rows]
    return [
        value
        for texts in samples.samples
        for value in completion_logprobs(
            base_model, tokenizer, prompts, texts, batch_size, per_token=True
        ).tolist()
    ]


def policy_metrics(
    rows: list[dict],
    samples: PolicySamples,
    judge: list[list[float]],
    rm_scores: list[list[float]] | None,
    fluency_values: list[float] | None = None,
) -> dict:
    """Judge and reward-model scores (none without a reward model), KL to the reference, length and
    fluency (`fluency`, when given) over all samples."""
    flat = [(row, text) for texts in samples.samples for row, text in zip(rows, texts, strict=True)]
    kl = [value for per_sample in samples.kl_to_reference for value in per_sample]
    tokens = [value for per_sample in samples.tokens for value in per_sample]
    return {
        "judge_score": _mean([s for scores in judge for s in scores]),
        **(
            {}
            if rm_scores is None
            else {"reward_score": _mean([s for ss in rm_scores for s in ss])}
        ),
        "kl_to_sft": _mean(kl),
        "kl_to_sft_per_token": sum(kl) / max(sum(tokens), 1),
        "mean_words": _mean([len(text.split()) for _, text in flat]),
        **({} if fluency_values is None else {"fluency": _mean(fluency_values)}),
    }


def mean_by_family(rows: Sequence[dict], values: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The mean of `values` (one per row) over all rows and, for rows that carry a `family`, per
    family: the overall figure kept apart, so a family may have any name."""
    by_family: dict[str, list[float]] = {}
    for row, value in zip(rows, values, strict=True):
        if row.get("family") is not None:
            by_family.setdefault(str(row["family"]), []).append(value)
    return _mean(values), {family: _mean(group) for family, group in by_family.items()}


def win_rate(
    rows: list[dict], challenger: list[list[float]], baseline: list[list[float]]
) -> tuple[float, dict[str, float]]:
    """Judge win-rate of challenger over baseline, sample i vs sample i per prompt; ties = 1/2.
    Returns the rate over all samples and, for rows that carry a `family`, the rate per family.

    Args: the judge's scores of each policy, [sample_index][prompt_index].
    """
    grid = win_outcomes(challenger, baseline)
    if any(len(outcomes) != len(rows) for outcomes in grid):  # every sample scores every row
        raise ValueError(f"scores for {len(rows)} rows expected")
    return mean_by_family(rows * len(challenger), [o for outcomes in grid for o in outcomes])


def win_outcomes(
    challenger: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]]
) -> list[list[float]]:
    """1 where the challenger's score is higher, 0.5 equal, 0 lower, sample i vs sample i of each
    prompt ([sample_index][prompt_index], as the scores)."""
    return [
        [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs, strict=True)]
        for ours, theirs in zip(challenger, baseline, strict=True)
    ]


def score_with_reward_model(reward_model, tokenizer, rows, samples: PolicySamples, batch_size):
    prompts = [row["prompt"] for row in rows]
    return [
        reward_model_scores(reward_model, tokenizer, prompts, texts, batch_size)
        for texts in samples.samples
    ]


def summarize(
    per_policy: dict[str, dict],
    wins: tuple[float, dict[str, float]],
    rm_accuracy: tuple[float | None, dict[str, float]],
    algorithm: str,
    judge: str,
    reference: str = "sft",
) -> dict:
    """The `eval` block of summary.json; `wins` and `rm_accuracy` are (overall, per family);
    `algorithm` names what trained "policy", `judge` what scored the samples (`evaluate.judge`),
    `reference` the policy's start and KL anchor ("sft", or "base" when SFT was skipped): the
    `*_vs_sft` and `kl_to_sft` figures are against it. `judge_gain` is the policy's mean judge
    score minus the reference's: what registration gates on."""
    keyed = {
        metric: {name: per_policy[name][metric] for name in per_policy}
        for metric in next(iter(per_policy.values()))
    }
    return {
        "algorithm": algorithm,
        "judge": judge,
        "reference": reference,
        "judge_gain": per_policy["policy"]["judge_score"] - per_policy[reference]["judge_score"],
        "win_rate_policy_vs_sft": wins[0],
        "win_rate_policy_vs_sft_by_family": wins[1],
        **keyed,
        "rm_accuracy": rm_accuracy[0],
        "rm_accuracy_by_family": rm_accuracy[1],
        "kl_policy_vs_sft": per_policy["policy"]["kl_to_sft"],
        "kl_policy_vs_sft_per_token": per_policy["policy"]["kl_to_sft_per_token"],
    }


def markdown_table(summary: dict) -> str:
    intervals = summary.get("intervals", {})
    name = summary["algorithm"].upper()
    reference = summary.get("reference", "sft")
    columns = [column for column in POLICIES if column in summary["judge_score"]]
    headers = " | ".join(
        name.lower()
        if column == "policy"
        else f"champion v{summary['champion_version']}"
        if column == "champion"
        else column
        for column in columns
    )
    lines = [
        f"judge: `{summary['judge']}`",
        "",
        f"| metric | {headers} |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for metric in table_figures(summary):
        cells = " | ".join(
            _cell(summary[metric].get(column), intervals.get(metric, {}).get(column))
            for column in columns
        )
        label = metric.replace("_sft", f"_{reference}")
        lines.append(f"| {label} | {cells} |")
    by_family = ", ".join(
        f"{k} {v:.3f}" for k, v in summary["win_rate_policy_vs_sft_by_family"].items()
    )
    wins = f"{summary['win_rate_policy_vs_sft']:.3f}"
    if "win_rate_policy_vs_sft_interval" in summary:
        bounds = summary["win_rate_policy_vs_sft_interval"]
        wins += f" (95 % interval {bounds['low']:.3f}–{bounds['high']:.3f})"
    wins += f" ({by_family})" if by_family else ""
    rm_by_family = ", ".join(f"{k} {v:.3f}" for k, v in summary["rm_accuracy_by_family"].items())
    rm = "n/a" if summary["rm_accuracy"] is None else f"{summary['rm_accuracy']:.3f}"
    rm += f" ({rm_by_family})" if rm_by_family else ""
    lines += [
        "",
        f"**win-rate {name} vs {reference.upper()} (judge):** {wins}",
        f"**reward-model held-out pair accuracy:** {rm}",
        f"**KL({name} ‖ {reference.upper()}):** {summary['kl_policy_vs_sft']:.3f} nats/sequence, "
        f"{summary['kl_policy_vs_sft_per_token']:.4f} nats/token",
    ]
    if intervals:
        lines.append(
            f"**intervals:** (low–high) is the 95 % bootstrap interval over prompts; "
            f"{summary['samples_per_policy']} sampled responses per policy"
        )
    if "win_rate_policy_vs_champion" in summary:
        lines.append(
            f"**win-rate {name} vs champion v{summary['champion_version']} (judge):** "
            f"{summary['win_rate_policy_vs_champion']:.3f}"
        )
    if "llm_judge" in summary:
        j = summary["llm_judge"]
        lines.append(
            f"**llm judge** `{j['model']}`: llm_win_rate_* pairwise against the "
            f"{reference.upper()} (or champion) response, both orders asked, ties 0.5; "
            f"llm_grade 1–10 on its rubric. {j['pairs_judged']}/{j['pairs']} pairs judged "
            f"(and {j.get('identical_pairs', 0)} of identical responses: ties, not asked), "
            f"position bias: first-shown picked in {_rate(j['first_position_rate'])} of decisive "
            f"answers (0.5 is none), orders disagreed in {_rate(j['inconsistent_rate'])} of pairs; "
            f"{j['failures']} failed calls, {j['unparsable'] + j['ungraded']} unusable answers"
        )
    if any(key.startswith("bench_") for key in summary):
        lines.append(
            "**bench_*:** lm-evaluation-harness tasks, the task's main metric (acc_norm, acc or "
            "exact_match) per policy; the interval resamples the task's documents"
        )
    if summary.get("seconds"):
        spent = ", ".join(f"{key} {value:.1f}" for key, value in summary["seconds"].items())
        lines.append(f"**seconds per evaluator** (all policies): {spent}")
    if "bleu" in summary:
        lines.append(
            "**bleu, rouge_l:** sentence BLEU (0–100, sacrebleu) and ROUGE-L F1 of each sampled "
            "response against the held-out reference answer, CJK text by character"
        )
    if "fluency" in summary:
        lines.append(
            "**fluency:** mean per-token log-likelihood (nats) of each policy's sampled responses "
            "under the untouched base model (higher is more natural to it)"
        )
    return "\n".join(lines)


def _rate(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"  # NaN: nothing decisive to count


def _cell(value: float | None, bounds: dict[str, float] | None) -> str:
    """A table cell: the figure, and its 95 % interval when it has one; — when the policy has no
    such figure (a win-rate against itself)."""
    if value is None:
        return "—"
    if value != value:  # NaN: an LLM judge gave no usable answer
        return "n/a"
    if bounds is None or bounds["low"] != bounds["low"]:
        return f"{value:.3f}"
    return f"{value:.3f} ({bounds['low']:.3f}–{bounds['high']:.3f})"


def samples_markdown(rows: list[dict], greedy: dict[str, list[str]], per_family: int) -> str:
    """Before/after: the greedy responses of every policy (`greedy`: policy name -> one response
    per row) to the first `per_family` held-out prompts of each prompt family (of all rows, when
    they carry none)."""
    chosen, seen = [], {}
    for index, row in enumerate(rows):
        family = str(row.get("family", ""))
        if seen.get(family, 0) < per_family:
            seen[family] = seen.get(family, 0) + 1
            chosen.append(index)
    lines = ["## Samples (greedy)"]
    for index in chosen:
        prompt = rows[index]["prompt"][-1]["content"]
        lines += ["", f"**{_one_line(prompt)}**", ""]
        lines += [f"- {name}: {_one_line(texts[index])}" for name, texts in greedy.items()]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    """A response as one markdown line: newlines as ⏎, table/format characters left as they are."""
    return " ⏎ ".join(part.strip() for part in text.strip().splitlines() if part.strip()) or "∅"
