"""Our PPO engine against TRL 1.12's PPOTrainer: update throughput and reward gain at matched KL.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ppo_vs_trl.py --config configs/tiny.yaml --seeds 3 \
        --eval-every 5 --out .bench/ppo_vs_trl/tiny.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/ppo_vs_trl.py --config configs/smollm2.yaml --seeds 3 \
        --updates N --eval-every K --out .bench/ppo_vs_trl/smollm2.json     # LoRA on both sides
    HF_HUB_OFFLINE=1 .venv/bin/python bench/ppo_vs_trl.py --quick      # end to end in a few minutes

TRL 1.13 removed PPO, so `trl==1.12.0` is installed with `--no-deps` into .bench/trl-1.12 and its side
runs in a subprocess with that folder first on PYTHONPATH (the project's trl stays untouched). Our
side runs in a subprocess too, so both start equally cold. The pipeline's prepare/sft/collect/reward
stages (cached under .bench/ppo_vs_trl/) give both sides the same SFT policy, reward model, critic
init (the reward model, as alignflow/algorithms/ppo.py does), RL prompts and held-out prompts; each seed runs ours,
then TRL's, one process at a time.

Measured, per run:
- update throughput: updates per second of the training loop, model loading and evaluation
  excluded, first update (warm-up) excluded; also per second of process CPU time, which other
  load on a shared machine disturbs less (the table warns when the load average exceeded the cores);
- a reward-KL curve: every `--eval-every` updates the same function (`evaluate_policy`, imported by
  both workers) samples the held-out prompts at the PPO temperature with a fixed seed, and records
  the mean reward-model score (read at the last response token) and the KL to the SFT reference per
  sequence (nats), at that temperature: at each response token the exact KL between the policy's
  and the reference's next-token distributions, summed over the response (`exact_kl`). The
  sampled-token estimate, sum of log pi - log pi_ref (k1), has the same mean and is recorded too
  (`kl_sampled`); on the tiny config its spread between evaluations of one policy is 2-4x larger
  (0.05-0.14 vs 0.02-0.035 nats), as large as the KL's rise over the last half of a run, so the
  first crossing of the top KL depended mostly on that noise.
- phase rates: per update, the seconds inside the policy's `generate` (generation) and the rest
  (training: the scoring forward passes, GAE and the PPO epochs), timed by wrapping `generate` on
  both sides; the FLOPs of each phase, counted from the models' linear layers (`matmul_weights`)
  and each update's shapes (b rows, prompt width q, response width t, s = q + t) at 2 x weights
  per token and matmul (`update_flops`):
  generation: the policy over b(q + t - 1) tokens, its LM head over bt (the prefill keeps the
    last position's logits only);
  training: forwards of the reference (adapter off), the critic and the reward model over bs
    tokens, and of the policy on ours only (TRL takes the rollout's log-probs from generate's
    scores); then per PPO epoch a step of policy and critic over bs tokens: forward + backward,
    backward = 2 x (the layers from the lowest one with a trained weight up) + 2 x head (its
    input gradient) + 2 x trained weights (their own gradient), i.e. 6N for a full model. The
    policy's LM head scores t + 1 positions per row on ours (logits_to_keep), all s on TRL.
    Ours with LoRA on the top layers only (PPOTrainer.trunk_depth > 0): the layers below run
    while sampling (and for the last sampled token), every pass after it skips them.
  Attention's QK^T and AV and elementwise work are not counted (a few % at these lengths).
  FLOP/s is divided by the machine's float32 matmul peak, measured once per bench run
  (`measure_matmul_peak`: best `torch.matmul` rate over PEAK_SHAPES), to give the fraction.
Reward gain = held-out score minus the SFT model's (the update-0 point). The common KL is the
smallest of the runs' largest held-out KLs; each run's gain is interpolated there at the first
crossing, averaged over seeds, and printed as ours/theirs. Beside that rule (not part of it),
each KL line also prints ours - theirs paired by seed, with its standard error over seeds.
`--summarize OUT.json [MORE.json ...]` prints a finished run's table again from its --out file, or
the table of several runs' seeds pooled (one common KL over all); `--first-seed N` runs seeds N..
instead of run.seed.. (a replication on other seeds); `--sides ours` (or trl) runs one side only,
e.g. ours again after a change, its table printed by `--summarize` with the other side's --out;
`--set KEY=VALUE` overrides the config as `alignflow run --set` does.

Settings mapped from the config's `ppo` section to TRL's PPOConfig: rollout_batch_size ->
per_device_train_batch_size (gradient_accumulation_steps 1), rollout/minibatch -> num_mini_batches,
ppo_epochs, max_new_tokens -> response_length, temperature (TRL adds 1e-7; top_k 0, top_p 1 on both),
kl.coef, kl.estimator, clip_range, value_clip_range, value_coef -> vf_coef, gamma, lam,
whiten_rewards; stop_token "eos"; dropout off on both; no gradient checkpointing; fp32. TRL gets,
through `optimizers=`, the optimizer and LR schedule our PPOTrainer builds (AdamW, eps 1e-5, weight
decay 0.01, policy learning_rate and value_learning_rate as two groups), since its own config has
one learning rate for both and other AdamW defaults. One reward model, no rules (checked).

LoRA (`policy.ppo.lora` set) as the pipeline runs it (alignflow.algorithms.ppo.ppo_models), on both sides: the policy
is `lora_policy` (the SFT model with a fresh adapter seeded by the run's seed; reference = the
adapter switched off) and the reward model stays a plain frozen model. TRL 1.12's `peft_config=`
would call `get_peft_model` on the policy inside its __init__, unseeded and after `optimizers=`
was built; so TRL gets the PeftModel itself, no peft_config and ref_model=None: a PeftModel makes
it take the reference as the policy under `disable_adapter()` (its null_ref_context), as our
DisabledAdapter does, and the optimizer holds exactly the adapter it trains. Our critic is
`lora_value_model` (SEQ_CLS: the score head trains too); TRL reads its critic as
`getattr(value_model, base_model_prefix)` and `value_model.score`, which a PeftModel hides, so it
gets the reward model with the same adapter injected in place (`_trl_lora_critic`, same seed) and
all but the `lora_` and `score` weights frozen: both critics train the same tensors from the same
values. policy.ppo.quantization is refused: the bench builds no matching bitsandbytes set-up for TRL.

Settings that cannot be matched (TRL has no knob, or a different rule):
- missing EOS: ours replaces the score with `missing_eos_score` (-1.0); TRL subtracts
  `missing_eos_penalty`; TRL gets a penalty of -missing_eos_score (1.0), so both punish by about 1.
- kl.estimator exact (ours: the whole next-token distributions' KL, in the rewards and with its
  own gradient in the loss): TRL has k1 and k3 only, and gets k1, the estimator whose expectation
  and gradient the exact one has, without the sampled token's noise.
- critic_warmup (ours: the first N updates train the critic only): TRL has no such phase and
  trains both from the first update; the N updates count in --updates on ours.
- gradient clipping: ours clips to max_grad_norm; TRL 1.12's PPO loop never clips.
- where the score lands: ours at the EOS token; TRL one position after EOS (the first padding slot,
  whose value it also trains), so its GAE has one more step.
- TRL computes the rollout's policy log-probs from `generate`'s scores (KV-cached logits); ours
  recomputes them with a full forward pass.
- prompt order: ours shuffles per epoch from (seed, update); TRL uses a seeded DataLoader.
- adaptive KL, reward normalisation/clipping, turning advantage whitening off, entropy bonus,
  kl_stop, reward ensembles/rules: ours only; the bench refuses configs that turn them on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench" / "ppo_vs_trl"
TRL_DIR = ROOT / ".bench" / "trl-1.12"
TRL_VERSION = "1.12.0"
SIDES = ("ours", "trl")
KL_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the common KL, for the gain table
QUICK = {"config": "configs/micro.yaml", "seeds": 2, "updates": 4, "eval_every": 2}
# (m, k, n) of the matmuls timed for the peak: a square one, and 4096 tokens through SmolLM2's
# MLP up-projection (hidden 576 -> intermediate 1536), the shape its layers mostly run
PEAK_SHAPES = ((2048, 2048, 2048), (4096, 576, 1536))
PHASES = ("generation", "training", "update")


def _env(side: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    paths = [str(TRL_DIR)] if side == "trl" else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), env.get("PYTHONPATH", "")])
    return env


# ---- setup: TRL 1.12 and the models -------------------------------------------------------------


def ensure_trl() -> None:
    """Install trl==1.12.0 without dependencies into .bench/trl-1.12 unless it is there."""
    if (TRL_DIR / "trl" / "experimental" / "ppo").is_dir():
        return
    print(f"installing trl=={TRL_VERSION} into {TRL_DIR}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TRL_DIR),
         f"trl=={TRL_VERSION}"],
        check=True,
    )  # fmt: skip


def _run_stages(cfg) -> dict[str, str]:
    """prepare -> sft -> collect -> reward through the pipeline's own stage functions."""
    from alignflow import tracking
    from alignflow.pipeline import PipelineRun, run_stage
    from alignflow.stages import MODEL_DIR, collect, dataset_file, prepare, reward, sft

    ctx = PipelineRun(cfg).ctx
    prepared = run_stage(cfg, ctx, "prepare", lambda work: prepare.run(cfg, work))
    tuned = run_stage(cfg, ctx, "sft", lambda work: sft.run(cfg, work, prepared))
    pairs = run_stage(cfg, ctx, "collect", lambda work: collect.run(cfg, work, prepared, tuned))
    rm = run_stage(cfg, ctx, "reward", lambda work: reward.run(cfg, work, prepared, tuned, pairs))
    tracking.end_run(ctx, ctx.parent_run_id)
    return {
        "sft": str(tuned.path(MODEL_DIR)),
        "reward": str(rm.path(MODEL_DIR)),
        "rl_prompts": str(prepared.path(dataset_file("rl_prompts"))),
        "heldout": str(prepared.path(dataset_file("heldout"))),
    }


def ensure_models(config_path: str, overrides: list[str] | None = None):
    """The config's SFT and reward models and prompt files, built once per config.

    Stage outputs are keyed by the code version too; the manifest, keyed by the sections the
    models depend on, keeps the bench on one set of models while the library changes, so
    repeated measurements compare like with like.
    """
    from alignflow.config import load_config

    root = BENCH_DIR / Path(config_path).stem
    settings = [*(overrides or []), f"run.artifacts_root={root / 'runs'}", "run.name=bench"]
    cfg = load_config(config_path, settings)
    upstream = cfg.model_dump(
        mode="json", include={"data", "model", "sft", "collect", "reward_model"}
    )
    digest = hashlib.sha256(json.dumps([upstream, cfg.run.seed], sort_keys=True).encode())
    manifest = root / f"models-{digest.hexdigest()[:12]}.json"
    if manifest.exists():
        paths = json.loads(manifest.read_text())
        if all(Path(p).exists() for p in paths.values()):
            print(f"reusing models listed in {manifest}", flush=True)
            return cfg, paths
    print(f"building SFT and reward models for {config_path} (once)", flush=True)
    paths = _run_stages(cfg)
    manifest.write_text(json.dumps(paths, indent=2))
    return cfg, paths


def check_comparable(cfg) -> None:
    """Refuse switches TRL 1.12's PPO has no equivalent of: the comparison would be meaningless.
    LoRA is compared (both sides get the pipeline's adapters); quantization is not."""
    ppo, rewards = cfg.policy.ppo, cfg.rewards
    if ppo.quantization != "none":
        raise SystemExit(
            f"policy.ppo.quantization '{ppo.quantization}': the bench gives TRL no matching bitsandbytes "
            "set-up, so only unquantized models are compared; set policy.ppo.quantization: none"
        )
    ours_only = {
        "rewards (rules, extra models, length penalty, weight)": rewards != type(rewards)(),
        "reward_model.ensemble_size > 1": cfg.reward_model.ensemble_size > 1,
        "kl.adaptive": ppo.kl.adaptive,
        "reward_normalization": ppo.reward_normalization,
        "reward_clip": ppo.reward_clip is not None,
        "entropy_coef": ppo.entropy_coef != 0,
        "whiten_advantages (off)": not ppo.whiten_advantages,
        "kl_stop": ppo.kl_stop is not None,
        "sampling.top_k/top_p": ppo.sampling.top_k != 0 or ppo.sampling.top_p != 1.0,
    }
    if used := [name for name, on in ours_only.items() if on]:
        raise SystemExit(f"ppo settings TRL 1.12 cannot match: {', '.join(used)}; turn them off")


# ---- the shared evaluation ----------------------------------------------------------------------


def evaluate_policy(policy, reference, reward_model, tokenizer, prompts, sampling, spec) -> dict:
    """Held-out mean reward-model score and KL to the reference (nats/sequence, k1 summed over
    response tokens at the sampling temperature), `spec["eval_samples"]` samples per prompt from
    seeds eval_seed + i. The caller's RNG state is restored, so training is not perturbed."""
    import torch

    from alignflow.rl.rollout import sample_with_logprobs, token_scores

    scores, kls, sampled_kls, eos = [], [], [], []
    with torch.no_grad(), torch.random.fork_rng():
        for index in range(spec["eval_samples"]):
            torch.manual_seed(spec["eval_seed"] + index)
            for start in range(0, len(prompts), spec["eval_batch"]):
                batch = prompts[start : start + spec["eval_batch"]]
                s = sample_with_logprobs(
                    policy, reference, tokenizer, batch, sampling, exact_kl=True
                )
                last = (s.mask.sum(-1) - 1).clamp(min=0)
                rows = torch.arange(len(batch))
                score = token_scores(reward_model, s.sequence, s.attention_mask)
                scores += score[rows, s.query_len + last].tolist()
                kls += s.exact_kl.tolist()
                sampled_kls += s.sampled_kl.tolist()
                eos += (s.response[rows, last] == tokenizer.eos_token_id).float().tolist()
    n = len(scores)
    return {
        "score": sum(scores) / n,
        "kl": sum(kls) / n,
        "kl_sampled": sum(sampled_kls) / n,
        "eos_rate": sum(eos) / n,
    }


# ---- phase timing, FLOP counting and the matmul peak ---------------------------------------------


@dataclass(frozen=True)
class Matmuls:
    """One model's matmul weights (multiply-adds per token), read off its linear layers."""

    layers: int  # the decoder layers' linear weights, LoRA adapters included
    adapters: int  # the LoRA adapters' share of `layers`
    head: int  # the output head: lm_head (vocab x hidden) or score (hidden x 1)
    backward: int  # `layers` weights of the layers from the lowest one with a trained weight up
    trained: int  # trained weights in `layers`
    head_trained: bool


def matmul_weights(model) -> Matmuls:
    """`model`'s Matmuls (a transformers model, or a PeftModel around one). Linear modules in the
    stack of decoder layers are layers, the others (after the stack) the head; peft's unused copy
    of a head it trains (`original_module`) is left out."""
    import torch

    from alignflow.models import decoder_layers

    stack, count = decoder_layers(model, "bench")
    per_layer, adapters, trained, head, head_trained = [0] * count, 0, 0, 0, False
    lowest = count
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".original_module" in name:
            continue
        weights, grad = module.in_features * module.out_features, module.weight.requires_grad
        if not name.startswith(f"{stack}."):
            head, head_trained = head + weights, head_trained or grad
            continue
        layer = int(name[len(stack) + 1 :].split(".")[0])
        per_layer[layer] += weights
        adapters += weights if "lora_" in name else 0
        if grad:
            trained, lowest = trained + weights, min(lowest, layer)
    layers = sum(per_layer)
    return Matmuls(layers, adapters, head, sum(per_layer[lowest:]), trained, head_trained)


def forward_flops(
    model: Matmuls, tokens: int, head_tokens: int, adapters: bool = True, skipped: int = 0
) -> int:
    """A forward pass over `tokens` positions whose head runs on `head_tokens` of them; without
    `adapters`, LoRA switched off (the reference); `skipped` layer weights not run (a shared
    trunk's, alignflow.rl.trunk)."""
    layers = (model.layers if adapters else model.layers - model.adapters) - skipped
    return 2 * (layers * tokens + model.head * head_tokens)


def train_flops(model: Matmuls, tokens: int, head_tokens: int, skipped: int = 0) -> int:
    """Forward and backward: the gradient runs back through the head and the layers from the
    lowest trained one up (2 per weight) and fills the trained weights' gradients (2 more)."""
    backward = 2 * (model.backward + model.trained) * tokens
    backward += 2 * model.head * head_tokens * (2 if model.head_trained else 1)
    return forward_flops(model, tokens, head_tokens, skipped=skipped) + backward


def trunk_weights(model, depth: int) -> int:
    """The linear weights of `model`'s bottom `depth` decoder layers: the trunk our PPO runs once
    per rollout batch when every model shares it (PPOTrainer.trunk_depth)."""
    import torch

    from alignflow.rl.trunk import layer_stack

    return sum(
        module.in_features * module.out_features
        for layer in layer_stack(model)[:depth]
        for module in layer.modules()
        if isinstance(module, torch.nn.Linear)
    )


def update_flops(
    side: str, models: dict[str, Matmuls], calls: list[tuple[int, int, int]], ppo_epochs: int,
    trunk: int = 0,
) -> dict[str, int]:  # fmt: skip
    """FLOPs of one update's generation and training (see the module docstring), from the
    (rows, prompt width, response width) of each `generate` call it made; `models` holds the
    policy's, the critic's and the reward model's Matmuls; `trunk`: the weights of the shared
    trunk ours runs once per rollout, while sampling (plus the last sampled token, which generate
    never feeds back), skipped by every pass after it."""
    policy, critic, reward = models["policy"], models["critic"], models["reward"]
    generation = training = 0
    for rows, prompt, response in calls:
        tokens = prompt + response
        # the last sampled token is never fed back; the prefill's head scores one position
        generation += rows * forward_flops(policy, tokens - 1, response)
        generation += rows * 2 * trunk  # the last token through the trunk
        head = response + 1 if side == "ours" else tokens  # ours: logits_to_keep
        # the reference
        scoring = forward_flops(policy, tokens, head, adapters=False, skipped=trunk)
        if side == "ours":  # TRL reads the rollout's log-probs off generate's scores
            scoring += forward_flops(policy, tokens, head, skipped=trunk)
        scoring += forward_flops(critic, tokens, tokens, skipped=trunk)
        scoring += forward_flops(reward, tokens, tokens, skipped=trunk)
        step = train_flops(policy, tokens, head, trunk) + train_flops(critic, tokens, tokens, trunk)
        training += rows * (scoring + ppo_epochs * step)
    return {"generation_flops": generation, "training_flops": training}


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():  # kernels run asynchronously: time them finished
        torch.cuda.synchronize()


class GenerateTimer:
    """Seconds spent inside a model's `generate` and the (rows, prompt width, response width) of
    each call since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, []

    def wrap(self, model) -> None:
        """Time every later `model.generate(input_ids=...)` call (ours and TRL's both pass it)."""
        generate = model.generate

        def timed(*args, **kwargs):
            _synchronize()
            started = time.perf_counter()
            output = generate(*args, **kwargs)
            _synchronize()
            self.seconds += time.perf_counter() - started
            rows, prompt = kwargs["input_ids"].shape
            sequences = getattr(output, "sequences", output)  # TRL asks for a dict
            self.calls.append((rows, prompt, sequences.shape[1] - prompt))
            return output

        model.generate = timed


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m, k) @ (k, n) matmul: a multiply and an add per term."""
    return 2 * m * k * n


def _time_matmuls(a, b, out, number: int) -> float:
    """Seconds for `number` back-to-back a @ b into `out`."""
    import torch

    _synchronize()
    started = time.perf_counter()
    for _ in range(number):
        torch.matmul(a, b, out=out)
    _synchronize()
    return time.perf_counter() - started


def measure_matmul_peak(device: str, repeat: int = 5, seconds: float = 0.2) -> dict:
    """The machine's float32 matmul rate (FLOP/s): per PEAK_SHAPES entry, after a warm-up, the
    best of `repeat` timings of enough back-to-back matmuls to last about `seconds`; the peak is
    the best shape's."""
    import torch

    rates = {}
    for m, k, n in PEAK_SHAPES:
        operands = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        out = torch.empty(m, n, device=device)
        _time_matmuls(*operands, out, 1)  # warm-up: kernel selection, thread pool start
        number = max(1, round(seconds / _time_matmuls(*operands, out, 1)))
        best = min(_time_matmuls(*operands, out, number) for _ in range(repeat)) / number
        rates[f"{m}x{k}x{n}"] = matmul_flops(m, k, n) / best
    peak = max(rates.values())
    return {"device": device, "dtype": "float32", "by_shape": rates, "flops_per_second": peak}


class Recorder:
    """Per-update loop seconds (evaluation excluded), seconds and FLOPs of its phases, and the
    reward-KL curve of one run. `count_flops` maps the update's `generate` calls (`timer`) to
    its phases' FLOPs."""

    def __init__(
        self, side: str, seed: int, spec: dict, evaluate, timer: GenerateTimer, count_flops
    ) -> None:
        self.side, self.seed, self.spec, self.evaluate = side, seed, spec, evaluate
        self.timer, self.count_flops = timer, count_flops
        self.update_seconds: list[float] = []
        self.update_cpu_seconds: list[float] = []  # all threads of this process
        self.phases: list[dict] = []  # per update: seconds in generate, FLOPs of each phase
        self.curve: list[dict] = []
        self.train: list[dict] = []
        self._reset_clock()

    def _reset_clock(self) -> None:
        self.mark, self.mark_cpu = time.perf_counter(), time.process_time()
        self.timer.reset()  # the evaluation's generate calls are not the update's

    def start(self, policy) -> None:
        self._eval(policy, 0)
        self._reset_clock()

    def end_update(self, policy, update: int, stats: dict) -> None:
        self.update_seconds.append(time.perf_counter() - self.mark)
        self.update_cpu_seconds.append(time.process_time() - self.mark_cpu)
        flops = self.count_flops(self.timer.calls)
        self.phases.append({"generation_seconds": self.timer.seconds, **flops})
        self.train.append({"update": update, **stats})
        every, last = self.spec["eval_every"], self.spec["updates"]
        if update % every == 0 or update == last:
            self._eval(policy, update)
        self._reset_clock()

    def _eval(self, policy, update: int) -> None:
        point = {"update": update, **self.evaluate(policy)}
        self.curve.append(point)
        seconds = sum(self.update_seconds)
        print(
            f"[{self.side} seed {self.seed}] update {update:3d}/{self.spec['updates']} "
            f"held-out score {point['score']:+.3f} KL {point['kl']:.3f} eos {point['eos_rate']:.2f}"
            f"  ({seconds:.1f}s training)",
            flush=True,
        )

    def result(self) -> dict:
        return {
            "side": self.side,
            "seed": self.seed,
            "update_seconds": self.update_seconds,
            "update_cpu_seconds": self.update_cpu_seconds,
            "phases": self.phases,
            "load_average": os.getloadavg()[0],
            "curve": self.curve,
            "train": self.train,
        }


# ---- workers (one subprocess per side and seed) -------------------------------------------------


class Models(NamedTuple):
    tokenizer: Any
    policy: Any
    reference: Any  # a model, or the policy with its adapter off (lora.DisabledAdapter)
    reward_model: Any
    value: Any  # the critic


def _load(paths: dict, ppo, side: str, device: str, seed: int) -> Models:
    """What one side trains with: four full models, or with `policy.ppo.lora` the pipeline's LoRA
    policy, its adapter-off reference and a LoRA critic (alignflow.algorithms.ppo.ppo_models; TRL's critic holds
    its adapter in place, `_trl_lora_critic`); the reward model is a plain frozen model."""
    from alignflow.models import load_causal_lm, load_scalar_head_model, load_tokenizer
    from alignflow.rl.lora import lora_policy, lora_value_model

    tokenizer = load_tokenizer(paths["sft"])
    pad = tokenizer.pad_token_id

    def reward_model():
        return load_scalar_head_model(paths["reward"], pad_token_id=pad, device=device).eval()

    if ppo.lora is None:
        return Models(
            tokenizer,
            load_causal_lm(paths["sft"], device=device),  # policy
            load_causal_lm(paths["sft"], device=device).eval(),  # reference
            reward_model(),
            load_scalar_head_model(paths["reward"], pad_token_id=pad, device=device),  # critic
        )
    policy, reference = lora_policy(paths["sft"], ppo, False, device, seed)
    value = (
        lora_value_model(paths["reward"], ppo, False, pad, device, seed)
        if side == "ours"
        else _trl_lora_critic(paths["reward"], ppo, pad, device, seed)
    )
    return Models(tokenizer, policy, reference, reward_model(), value)


def _trl_lora_critic(rm_dir: str, ppo, pad_token_id: int, device: str, seed: int):
    """`lora_value_model`'s critic with its adapter injected in place, not behind a PeftModel
    (TRL 1.12 calls `value_model.<base_model_prefix>` and `value_model.score`): the same adapter
    from the same seed, and only the adapter and the score head train."""
    import torch
    from peft import inject_adapter_in_model

    from alignflow.models import load_scalar_head_model, peft_lora_config

    model = load_scalar_head_model(rm_dir, pad_token_id=pad_token_id, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # lora_value_model's seed for the critic's adapter
        inject_adapter_in_model(peft_lora_config(ppo.lora, "SEQ_CLS", model), model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name or name.startswith("score."))
    return model


def _recorder(
    side: str, spec: dict, ppo, models: Models, heldout: list, trunk_depth: int = 0
) -> Recorder:
    """The run's Recorder; wraps the policy's `generate` to time it. `trunk_depth`: the bottom
    layers our trainer runs once per rollout (PPOTrainer.trunk_depth; TRL: 0)."""

    def evaluate(policy) -> dict:
        return evaluate_policy(
            policy, models.reference, models.reward_model, models.tokenizer, heldout,
            ppo.sampling, spec,
        )  # fmt: skip

    weights = {
        "policy": matmul_weights(models.policy),
        "critic": matmul_weights(models.value),
        "reward": matmul_weights(models.reward_model),
    }

    trunk = trunk_weights(models.policy, trunk_depth) if trunk_depth else 0

    def count_flops(calls: list) -> dict:
        return update_flops(side, weights, calls, ppo.ppo_epochs, trunk)

    timer = GenerateTimer()
    timer.wrap(models.policy)
    return Recorder(side, spec["seed"], spec, evaluate, timer, count_flops)


def run_ours(spec: dict) -> dict:
    import torch

    from alignflow.config import PPOConfig
    from alignflow.models import default_device
    from alignflow.rl.trainer import PPOTrainer
    from alignflow.store import read_jsonl

    ppo = PPOConfig.model_validate(spec["ppo"])
    torch.manual_seed(spec["seed"])
    models = _load(spec["paths"], ppo, "ours", default_device(), spec["seed"])
    heldout = [row["prompt"] for row in read_jsonl(Path(spec["paths"]["heldout"]))]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = PPOTrainer(
            ppo, models.policy, models.reference, models.reward_model, models.value,
            models.tokenizer, read_jsonl(Path(spec["paths"]["rl_prompts"])), spec["seed"],
            Path(tmp),
        )  # fmt: skip
        recorder = _recorder("ours", spec, ppo, models, heldout, trainer.trunk_depth)
        recorder.start(models.policy)
        for update in range(1, ppo.updates + 1):
            stats = trainer.step()
            keep = (
                "reward",
                "kl",
                "eos_rate",
                "grad_norm",
                "generation_seconds",
                "training_seconds",
            )
            recorder.end_update(models.policy, update, {k: stats[k] for k in keep if k in stats})
    return recorder.result()


def _trl_config(ppo, seed: int, output_dir: str):
    import torch
    from trl.experimental.ppo import PPOConfig as TRLPPOConfig

    return TRLPPOConfig(
        output_dir=output_dir,
        seed=seed,
        per_device_train_batch_size=ppo.rollout_batch_size,
        gradient_accumulation_steps=1,  # one optimizer step per minibatch, as ours
        num_mini_batches=ppo.rollout_batch_size // ppo.minibatch_size,
        num_ppo_epochs=ppo.ppo_epochs,
        total_episodes=ppo.updates * ppo.rollout_batch_size,
        local_rollout_forward_batch_size=ppo.rollout_batch_size,
        learning_rate=ppo.learning_rate,
        response_length=ppo.sampling.max_new_tokens,
        temperature=ppo.sampling.temperature,
        stop_token="eos",
        kl_coef=ppo.kl.coef,
        # TRL has k1 and k3; our full-distribution KL ("exact") has no counterpart: TRL gets k1
        kl_estimator="k1" if ppo.kl.estimator == "exact" else ppo.kl.estimator,
        cliprange=ppo.clip_range,
        cliprange_value=ppo.value_clip_range,
        vf_coef=ppo.value_coef,
        gamma=ppo.gamma,
        lam=ppo.lam,
        whiten_rewards=ppo.whiten_rewards,
        missing_eos_penalty=None if ppo.missing_eos_score is None else -ppo.missing_eos_score,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
        num_sample_generations=0,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
    )


def _our_optimizer(ppo, models: Models, output_dir: Path):
    """The optimizer and LR schedule our PPOTrainer builds over these very policy and critic
    parameters (those that train: with LoRA the adapters and the critic's score head), taken from
    a throwaway instance so that TRL's side always gets the same ones."""
    from alignflow.rl.trainer import PPOTrainer

    ours = PPOTrainer(
        ppo, models.policy, models.reference, models.reward_model, models.value,
        models.tokenizer, [], 0, output_dir,
    )  # fmt: skip
    return ours.optimizer, ours.scheduler


def _trl_callback(recorder: Recorder):
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def __init__(self) -> None:
            self.stats: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            recorder.start(model.policy)

        def on_log(self, args, state, control, logs=None, **kwargs):
            keep = ("objective/scores", "objective/kl", "val/num_eos_tokens")
            self.stats = {k: logs[k] for k in keep if k in (logs or {})}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            recorder.end_update(model.policy, state.global_step, self.stats)

    return Record()


def run_trl(spec: dict) -> dict:
    import trl
    from transformers import PrinterCallback, set_seed
    from trl.experimental.ppo import PPOTrainer

    from alignflow.config import PPOConfig
    from alignflow.models import default_device
    from alignflow.store import read_jsonl

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"expected trl {TRL_VERSION} from {TRL_DIR}, imported {trl.__version__}")
    ppo = PPOConfig.model_validate(spec["ppo"])
    set_seed(spec["seed"])  # TRL's minibatch order comes from numpy's global RNG
    models = _load(spec["paths"], ppo, "trl", default_device(), spec["seed"])
    heldout = [row["prompt"] for row in read_jsonl(Path(spec["paths"]["heldout"]))]
    dataset = _trl_dataset(models.tokenizer, read_jsonl(Path(spec["paths"]["rl_prompts"])))
    recorder = _recorder("trl", spec, ppo, models, heldout)
    # LoRA: the policy comes as a PeftModel and no peft_config, so TRL takes the reference as the
    # policy with its adapter disabled (ref_model None) and trains what our optimizer holds
    reference = None if ppo.lora is not None else models.reference
    with tempfile.TemporaryDirectory() as tmp:
        trainer = PPOTrainer(
            args=_trl_config(ppo, spec["seed"], tmp), processing_class=models.tokenizer,
            model=models.policy, ref_model=reference, reward_model=models.reward_model,
            train_dataset=dataset, value_model=models.value, eval_dataset=dataset,
            optimizers=_our_optimizer(ppo, models, Path(tmp)),
            callbacks=[_trl_callback(recorder)],
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return recorder.result()


def _trl_dataset(tokenizer, rows: list[dict]):
    """`input_ids` of each prompt, chat template and generation prompt applied (TRL's contract),
    tokenized exactly as alignflow.rl.rollout.encode_prompts does; TRL left-pads per batch."""
    from datasets import Dataset

    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        for row in rows
    ]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return Dataset.from_dict({"input_ids": ids})


def worker_main(side: str, spec_path: str, result_path: str) -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    spec = json.loads(Path(spec_path).read_text())
    result = (run_ours if side == "ours" else run_trl)(spec)
    Path(result_path).write_text(json.dumps(result))


def run_worker(side: str, spec: dict, work: Path) -> dict:
    spec_path = work / f"{side}-seed{spec['seed']}-spec.json"
    result_path = work / f"{side}-seed{spec['seed']}.json"
    spec_path.write_text(json.dumps(spec))
    load = os.getloadavg()[0]
    print(f"--- {side}, seed {spec['seed']} (load average {load:.1f})", flush=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side,
               "--spec", str(spec_path), "--result", str(result_path)]  # fmt: skip
    subprocess.run(command, check=True, env=_env(side), cwd=ROOT)
    return json.loads(result_path.read_text())


# ---- the comparison -----------------------------------------------------------------------------


def gain_at(curve: list[dict], kl: float, key: str = "kl") -> float | None:
    """Reward gain over the update-0 (SFT) point where the curve's `key` KL first reaches `kl`,
    linearly interpolated between the two evaluations around that crossing; None if it never
    does."""
    base = curve[0]["score"]
    for before, after in zip(curve, curve[1:], strict=False):
        if after[key] >= kl:
            span = after[key] - before[key]
            w = 1.0 if span <= 0 else min(max((kl - before[key]) / span, 0.0), 1.0)
            return before["score"] + w * (after["score"] - before["score"]) - base
    return None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def throughput(run: dict, clock: str = "update_seconds") -> float:
    """Updates per second of wall clock (or of process CPU time with clock="update_cpu_seconds"),
    the first (warm-up) update excluded when there are others."""
    seconds = run[clock][1:] or run[clock]
    return len(seconds) / sum(seconds)


def phase_rates(run: dict) -> dict | None:
    """Per phase (generation, training = the rest of the update, the whole update) of one run:
    seconds and FLOPs per update, FLOP/s and its fraction of the run's measured matmul peak, the
    first (warm-up) update excluded when there are others; None for a run recorded without."""
    phases, peak = run.get("phases"), run.get("peak_flops_per_second")
    if not phases or not peak:
        return None
    skip = 1 if len(phases) > 1 else 0
    phases, totals = phases[skip:], run["update_seconds"][skip:]
    generation = sum(p["generation_seconds"] for p in phases)
    seconds = {"generation": generation, "training": sum(totals) - generation}
    flops = {phase: sum(p[f"{phase}_flops"] for p in phases) for phase in seconds}
    seconds["update"], flops["update"] = sum(totals), flops["generation"] + flops["training"]
    rates = {}
    for phase in PHASES:
        per_second = flops[phase] / seconds[phase]
        rates[phase] = {
            "seconds": seconds[phase] / len(phases),
            "flops": flops[phase] / len(phases),
            "flops_per_second": per_second,
            "peak_fraction": per_second / peak,
        }
    return rates


def phase_summary(runs: list[dict]) -> dict | None:
    """`phase_rates` averaged over each side's runs; None unless every run has them."""
    rates = {side: [phase_rates(r) for r in runs if r["side"] == side] for side in SIDES}
    if any(rate is None for side in SIDES for rate in rates[side]):
        return None
    return {
        side: {
            phase: {key: _mean([rate[phase][key] for rate in rates[side]]) for key in figures}
            for phase, figures in rates[side][0].items()
        }
        for side in SIDES
    }


def paired_difference(ours: list[float | None], theirs: list[float | None]) -> dict | None:
    """Mean over seeds of ours - theirs (runs paired by seed) and its standard error (sample
    standard deviation / sqrt(n)); None when fewer than two seeds have both values."""
    diffs = [a - b for a, b in zip(ours, theirs, strict=True) if a is not None and b is not None]
    if len(diffs) < 2:
        return None
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    return {"mean": statistics.mean(diffs), "se": se, "seeds": len(diffs)}


def pooled_runs(paths: list[Path]) -> list[dict]:
    """The runs of several --out files as one set (replications on other seeds); a seed may
    appear in only one file per side."""
    runs = [run for path in paths for run in json.loads(path.read_text())["runs"]]
    seen = Counter((r["side"], r["seed"]) for r in runs)
    if repeated := sorted(key for key, count in seen.items() if count > 1):
        raise SystemExit(f"--summarize: {repeated[0][0]} seed {repeated[0][1]} is in two files")
    return runs


def summarize(runs: list[dict], key: str = "kl") -> dict:
    """The table's figures; `key` picks the curve's KL measure (exact, or "kl_sampled": k1)."""
    # sorted by seed, so the sides pair up seed by seed
    by_side = {
        side: sorted((r for r in runs if r["side"] == side), key=lambda r: r["seed"])
        for side in SIDES
    }
    ups = {side: _mean([throughput(r) for r in by_side[side]]) for side in SIDES}
    cpu = "update_cpu_seconds"
    ups_cpu = {side: _mean([throughput(r, cpu) for r in by_side[side]]) for side in SIDES}
    common_kl = min(max(p[key] for p in r["curve"]) for r in runs)
    gains: dict[str, dict[str, float]] = {side: {} for side in SIDES}
    differences: dict[str, dict | None] = {}
    for fraction in KL_FRACTIONS:
        per_seed = {}
        for side in SIDES:
            values = [gain_at(r["curve"], fraction * common_kl, key) for r in by_side[side]]
            per_seed[side] = values
            gains[side][f"{fraction:g}"] = _mean([v for v in values if v is not None])
        differences[f"{fraction:g}"] = paired_difference(per_seed["ours"], per_seed["trl"])
    ours_gain, trl_gain = gains["ours"]["1"], gains["trl"]["1"]
    summary = {
        "updates_per_second": ups,
        "throughput_ratio": ups["ours"] / ups["trl"],
        "cpu_throughput_ratio": ups_cpu["ours"] / ups_cpu["trl"],
        "max_load_average": max(r["load_average"] for r in runs),
        "common_kl": common_kl,
        "gain_by_kl_fraction": gains,
        # reported beside the rule, not part of it: how far apart the sides are in seed-SEs
        "gain_difference_by_kl_fraction": differences,
        "gain_ratio": ours_gain / trl_gain if trl_gain > 0 else None,
        "target_throughput_met": ups["ours"] / ups["trl"] >= 1.5,
        "target_gain_met": common_kl > 0 and ours_gain >= trl_gain,
    }
    if key == "kl" and (phases := phase_summary(runs)):
        summary["phases"] = phases
        summary["peak_flops_per_second"] = sorted({r["peak_flops_per_second"] for r in runs})
    if key == "kl" and all("kl_sampled" in p for r in runs for p in r["curve"]):
        # the same runs read with the noisier sampled (k1) KL, which earlier runs used
        alt = summarize(runs, "kl_sampled")
        summary["with_sampled_kl"] = {
            name: alt[name] for name in ("common_kl", "gain_ratio", "target_gain_met")
        } | {"difference": alt["gain_difference_by_kl_fraction"]["1"]}
    return summary


def run_line(r: dict, kl: float | None) -> str:
    """One run's row of the table; gain at `kl` (None: not yet known) read off its curve."""
    final = r["curve"][-1]
    gain = None if kl is None else gain_at(r["curve"], kl)
    return (
        f"{r['side']:<4}  {r['seed']:>4}  {1 / throughput(r):8.3f}  {final['kl']:8.3f}  "
        f"{final['score'] - r['curve'][0]['score']:+10.3f}  "
        f"{'n/a' if gain is None else f'{gain:+.3f}':>14}"
    )


def table(runs: list[dict], summary: dict) -> str:
    kl = summary["common_kl"]
    lines = ["side  seed  s/update  final KL  final gain  gain@common KL",
             "----  ----  --------  --------  ----------  --------------"]  # fmt: skip
    lines += [run_line(r, kl) for r in runs]
    gains = summary["gain_by_kl_fraction"]
    lines += ["", "mean reward gain over SFT at matched held-out KL (nats/sequence):"]
    for fraction in KL_FRACTIONS:
        ours, theirs = gains["ours"][f"{fraction:g}"], gains["trl"][f"{fraction:g}"]
        line = f"  KL {fraction * kl:7.3f}: ours {ours:+.3f}  trl {theirs:+.3f}"
        if diff := summary["gain_difference_by_kl_fraction"][f"{fraction:g}"]:
            line += f"  ours - trl {diff['mean']:+.3f} (seed SE {diff['se']:.3f})"
        lines.append(line)
    ratio = summary["gain_ratio"]
    met = {True: "MET", False: "NOT MET"}
    lines += [
        "",
        f"update throughput ours/theirs: {summary['throughput_ratio']:.2f}x "
        f"(target >= 1.5x: {met[summary['target_throughput_met']]}); "
        f"per CPU-second: {summary['cpu_throughput_ratio']:.2f}x",
        f"reward gain at KL {kl:.3f} ours/theirs: "
        f"{'n/a (TRL gain <= 0)' if ratio is None else f'{ratio:.2f}'} "
        f"(target ours >= theirs: {met[summary['target_gain_met']]})",
    ]
    if alt := summary.get("with_sampled_kl"):
        ratio, diff = alt["gain_ratio"], alt["difference"]
        lines.append(
            f"  read with the sampled (k1) KL instead: common KL {alt['common_kl']:.3f}, ratio "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'}"
            + (f", ours - trl {diff['mean']:+.3f} (seed SE {diff['se']:.3f})" if diff else "")
        )
    if "phases" in summary:
        lines += ["", *phase_table(summary)]
    cores = os.cpu_count() or 1
    if summary["max_load_average"] > cores:
        lines.append(
            f"warning: load average reached {summary['max_load_average']:.1f} on {cores} cores; "
            "other processes shared the CPU, so wall-clock timings are noisy"
        )
    return "\n".join(lines)


def phase_table(summary: dict) -> list[str]:
    """Seconds, FLOPs, FLOP/s and fraction of the matmul peak per phase and side."""
    peaks = ", ".join(f"{peak / 1e9:.1f}" for peak in summary["peak_flops_per_second"])
    lines = [f"phases per update (float32 matmul peak measured: {peaks} GFLOP/s):",
             "phase       side  s/update  GFLOP/update  GFLOP/s  of peak",
             "----------  ----  --------  ------------  -------  -------"]  # fmt: skip
    for side in SIDES:
        for phase, rate in summary["phases"][side].items():
            lines.append(
                f"{phase:<10}  {side:<4}  {rate['seconds']:8.3f}  {rate['flops'] / 1e9:12.2f}  "
                f"{rate['flops_per_second'] / 1e9:7.2f}  {rate['peak_fraction']:7.1%}"
            )
    return lines


def _spec(args, cfg, paths: dict, seed: int) -> dict:
    ppo = cfg.policy.ppo.model_copy(update={"updates": args.updates or cfg.policy.ppo.updates})
    return {
        "seed": seed,
        "paths": paths,
        "ppo": ppo.model_dump(mode="json"),
        "updates": ppo.updates,
        "eval_every": args.eval_every,
        "eval_samples": args.eval_samples,
        "eval_seed": cfg.evaluate.seed,
        "eval_batch": cfg.evaluate.batch_size,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=None, help="seeds first..first+N-1 (default: run.seed)"
    )
    parser.add_argument(
        "--updates", type=int, default=None, help="default: the config's policy.ppo.updates"
    )
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-samples", type=int, default=8, help="samples per held-out prompt")
    parser.add_argument("--quick", action="store_true", help=f"a tiny end-to-end run: {QUICK}")
    parser.add_argument("--out", default=None, help="JSON of every curve and the table")
    parser.add_argument(
        "--summarize",
        metavar="JSON",
        nargs="+",
        help="print the table of finished runs' --out files again (several: their runs pooled)",
    )
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config value, as `alignflow run --set` (e.g. policy.ppo.kl.estimator=exact)",
    )
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=SIDES,
        default=list(SIDES),
        help="run these sides only (e.g. ours again after a change); pool the --out files of the "
        "sides' runs with --summarize",
    )
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.eval_samples = 1
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker_main(args.worker, args.spec, args.result)
    if args.summarize:
        runs = pooled_runs([Path(name) for name in args.summarize])
        return print(table(runs, summarize(runs)))
    from alignflow.models import default_device

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    ensure_trl()
    cfg, paths = ensure_models(args.config, args.set)
    check_comparable(cfg)
    first_seed = cfg.run.seed if args.first_seed is None else args.first_seed
    work = BENCH_DIR / Path(args.config).stem / "work"
    work.mkdir(parents=True, exist_ok=True)
    peak = measure_matmul_peak(default_device())
    print(
        f"float32 matmul peak on {peak['device']}: {peak['flops_per_second'] / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    runs = [
        run_worker(side, _spec(args, cfg, paths, first_seed + index), work)
        | {"peak_flops_per_second": peak["flops_per_second"]}
        for index in range(args.seeds)
        for side in SIDES
        if side in args.sides
    ]
    if set(args.sides) != set(SIDES):
        for run in runs:
            print(run_line(run, None))
        print(f"{args.sides[0]} only; the table: --summarize this --out with the other side's")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "peak": peak, "runs": runs}))
        return
    summary = summarize(runs)
    text = table(runs, summary)
    settings = "".join(f" --set {item}" for item in args.set)
    print(
        f"\n{args.config}{settings}: {args.seeds} seeds, {runs[0]['curve'][-1]['update']} updates"
        f"\n{text}"
    )
    print(f"wall time {time.perf_counter() - started:.0f}s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "args": vars(args),
            "peak": peak,
            "runs": runs,
            "summary": summary,
            "table": text,
        }
        Path(args.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
