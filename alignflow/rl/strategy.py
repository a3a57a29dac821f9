"""How the PPO engine optimises, checkpoints and saves its trainable models (policy + critic):
one strategy object, so the trainer never imports DeepSpeed.

- `TorchStrategy`: a torch AdamW in this process; on N launched processes every rank holds a full
  replica and gradients are averaged (data parallelism without DDP wrappers).
- `DeepSpeedStrategy`: a DeepSpeed engine (ZeRO-2 / ZeRO-3, CPU offload) around policy + critic,
  for a stage launched with `--deepspeed CONFIG` (alignflow.launch). The config's "auto" fields
  are filled from `ppo.*`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import Tensor

from alignflow import distributed
from alignflow.config import PPOConfig

OPTIMIZER_FILE = "optimizer.pt"
ENGINE_TAG = "engine"  # DeepSpeed's checkpoint folder inside an update-N checkpoint
ADAM_EPS = 1e-5  # RL losses are noisy and small; eps 1e-8 lets rare huge steps through
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 0.01  # torch AdamW's default, kept equal on both strategies


def param_groups(cfg: PPOConfig, policy, value_model) -> list[dict]:
    """The policy and the critic learn at their own rates; frozen weights are left out."""
    return [
        {"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.learning_rate},
        {
            "params": [p for p in value_model.parameters() if p.requires_grad],
            "lr": cfg.value_learning_rate,
        },
    ]


class TorchStrategy:
    """AdamW on this process; gradients averaged over launched processes, clipped, checked."""

    def __init__(self, cfg: PPOConfig, policy, value_model) -> None:
        self.cfg, self.policy, self.value_model = cfg, policy, value_model
        self.optimizer = torch.optim.AdamW(
            param_groups(cfg, policy, value_model),
            betas=ADAM_BETAS,
            eps=ADAM_EPS,
            weight_decay=ADAM_WEIGHT_DECAY,
        )
        # every rank holds all weights, so they can be compared (PPOTrainer.check_replicas)
        self.replicated = True

    def step(self, loss: Tensor) -> Tensor:
        """Backward, average over ranks, clip, and step unless the gradient is not finite.
        Returns the gradient norm before clipping (a 0-dim tensor)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        distributed.average_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        if torch.isfinite(grad_norm):
            self.optimizer.step()
        return grad_norm

    def generating(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def save(self, directory: Path) -> None:
        """Weights (safetensors, adapters only for LoRA) and optimizer state; rank 0 only."""
        if distributed.is_main():
            self.policy.save_pretrained(directory / "policy")
            self.value_model.save_pretrained(directory / "value")
            torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)

    def load(self, directory: Path) -> None:
        _load_weights(self.policy, directory / "policy")
        _load_weights(self.value_model, directory / "value")
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))

    def policy_state_dict(self) -> dict[str, Tensor] | None:
        """The policy's full weights for saving, or None when `save_pretrained` can read them."""
        return None


class DeepSpeedStrategy:
    """A DeepSpeed engine around policy + critic. Under ZeRO-3 each rank holds a shard of every
    weight: generation gathers the policy once per rollout (not per token), and saving gathers
    the full weights on rank 0."""

    def __init__(self, cfg: PPOConfig, policy, value_model, config: str | Path | dict) -> None:
        import deepspeed

        self.cfg, self.policy, self.value_model = cfg, policy, value_model
        source = config if isinstance(config, dict) else json.loads(Path(config).read_text())
        ds_config = fill_auto(source, cfg, policy, str(config)[:200])
        groups = param_groups(cfg, policy, value_model)
        # An "optimizer" section (e.g. ZeRO-Offload's DeepSpeedCPUAdam) makes DeepSpeed build it.
        client = None
        if "optimizer" not in ds_config:
            client = torch.optim.AdamW(
                groups, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=ADAM_WEIGHT_DECAY
            )
        self.models = torch.nn.ModuleDict({"policy": policy, "value": value_model})
        self.engine, *_ = deepspeed.initialize(
            model=self.models, optimizer=client, model_parameters=groups, config=ds_config
        )
        # The plain optimizer under ZeRO's wrapper: its param groups carry the learning rates
        # the trainer's LR schedule sets.
        self.optimizer = self.engine.basic_optimizer
        self.zero_stage = self.engine.zero_optimization_stage()
        self.replicated = self.zero_stage < 3
        policy.eval(), value_model.eval()  # no dropout: rollout and update must agree

    def step(self, loss: Tensor) -> Tensor:
        """DeepSpeed reduces, clips (config gradient_clipping) and steps. Returns the gradient
        norm before clipping."""
        self.engine.backward(loss)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32)

    def generating(self) -> contextlib.AbstractContextManager:
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.policy.parameters()))

    def save(self, directory: Path) -> None:
        """Every rank writes its shard of weights and optimizer state."""
        self.engine.save_checkpoint(str(directory), tag=ENGINE_TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory), tag=ENGINE_TAG, load_lr_scheduler_states=False
        )
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint in {directory / ENGINE_TAG}")

    def policy_state_dict(self) -> dict[str, Tensor] | None:
        """Under ZeRO-3, the policy's full weights gathered on rank 0 (a collective: every rank
        calls it; other ranks get an empty dict)."""
        if self.zero_stage < 3:
            return None
        full = self.engine._zero3_consolidated_16bit_state_dict() or {}
        return {k.removeprefix("policy."): v for k, v in full.items() if k.startswith("policy.")}


def fill_auto(source: dict, cfg: PPOConfig, policy, name: str) -> dict:
    """A copy of a DeepSpeed config with its "auto" fields set as the PPO engine runs: one
    optimizer step per minibatch, `policy.ppo.max_grad_norm` clipping, the models' own precision, and
    the bucket sizes transformers derives from the hidden size."""
    config = json.loads(json.dumps(source))
    if "scheduler" in config:
        raise ValueError(
            f"DeepSpeed config {name}: remove its 'scheduler' section; PPO sets its own learning "
            "rate schedule (policy.ppo.lr_schedule)"
        )
    world = distributed.world_size()
    hidden = getattr(policy.config, "hidden_size", None) or 1024
    dtype = next(policy.parameters()).dtype
    fixed = {
        "train_micro_batch_size_per_gpu": cfg.minibatch_size // world,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.minibatch_size,
    }
    for key, value in fixed.items():
        if config.get(key, "auto") not in ("auto", value):
            raise ValueError(
                f"DeepSpeed config {name}: {key} is {config[key]}, but PPO steps once per "
                f'minibatch ({key} = {value} from policy.ppo.minibatch_size); set it to "auto"'
            )
        config[key] = value
    auto = {
        "gradient_clipping": cfg.max_grad_norm,
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
        "lr": cfg.learning_rate,  # the policy's; the critic's group keeps its own rate
        "betas": list(ADAM_BETAS),
        "eps": ADAM_EPS,
        "weight_decay": ADAM_WEIGHT_DECAY,
    }
    _fill(config, auto)
    # Mixed precision follows the weights as loaded (bf16 on GPUs that have it, else fp32).
    for section, wanted in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if config.get(section, {}).get("enabled") == "auto":
            config[section]["enabled"] = dtype == wanted
    return config


def _fill(node: dict, values: dict) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _fill(value, values)
        elif value == "auto" and key in values:
            node[key] = values[key]


def _load_weights(model, directory: Path) -> None:
    from safetensors.torch import load_file

    adapter = directory / "adapter_model.safetensors"
    if adapter.exists():  # LoRA PPO saved only its adapter (and the critic's score head)
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    state = load_file(str(directory / "model.safetensors"))
    # Tied embeddings are stored once; strict=False lets the tied twin keep pointing at it.
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"checkpoint {directory} has unexpected weights: {unexpected[:3]}")


def make_strategy(cfg: PPOConfig, policy, value_model, deepspeed: str | Path | dict | None):
    """DeepSpeed when a config is given, else plain torch."""
    if deepspeed is None:
        return TorchStrategy(cfg, policy, value_model)
    if cfg.quantization != "none":
        raise ValueError(
            f"policy.ppo.quantization '{cfg.quantization}' does not run under DeepSpeed: train LoRA "
            "without quantization there, or QLoRA without --deepspeed"
        )
    return DeepSpeedStrategy(cfg, policy, value_model, deepspeed)
