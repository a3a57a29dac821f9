"""Peak memory of full vs. LoRA vs. QLoRA PPO, on the tiny model and a larger local one.

    .venv/bin/python bench/ppo_memory.py [--sizes tiny,large] [--updates 2]

For each size a random-init Llama is built locally (tokenizer trained on the demo text) and saved
as the SFT model and as the reward model. Each (size, mode) then runs `--updates` PPO updates in its
own process, through the pipeline's own model loading (`alignflow.algorithms.ppo.ppo_models`, `load_rewarder`), and
reports its peak memory (`torch.cuda.max_memory_allocated` on a GPU, else the growth of the process's
peak RSS over its RSS before any model was loaded; on CPU this includes load-time copies, since
bitsandbytes quantizes after reading full weights) and the memory held in tensors after the updates
(weights, gradients, optimizer state). Figures are ratios against full PPO of that size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = {
    "tiny": {},  # TinyModelConfig defaults: hidden 128, 3 layers
    "large": {"hidden_size": 768, "num_layers": 8, "num_heads": 12, "intermediate_size": 2048},
}
MODES = {
    "full": {},
    "lora": {"lora": {"r": 16}},
    "qlora": {"lora": {"r": 16}, "quantization": "4bit"},
}
ROOT = Path(".bench/ppo_memory")


def build_models(size: str) -> Path:
    """SFT and reward-model folders for `size` (random init), built once."""
    from alignflow import demo
    from alignflow.config import TinyModelConfig
    from alignflow.models import build_tiny_model, load_scalar_head_model, train_tokenizer

    out = ROOT / size
    if (out / "reward" / "model.safetensors").exists():
        return out
    spec = TinyModelConfig(**SIZES[size])
    tokenizer = train_tokenizer(demo.corpus(0, 0.2), spec.vocab_size)
    build_tiny_model(spec, tokenizer, seed=0).save_pretrained(out / "sft")
    tokenizer.save_pretrained(out / "sft")
    load_scalar_head_model(str(out / "sft"), pad_token_id=tokenizer.pad_token_id).save_pretrained(
        out / "reward"
    )
    tokenizer.save_pretrained(out / "reward")
    return out


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(size: str, mode: str, updates: int) -> dict:
    """One PPO run; returns its peak memory in MiB and seconds per update."""
    import bitsandbytes  # noqa: F401  imported before measuring: RSS of code, not of models
    import peft  # noqa: F401
    import torch

    from alignflow import demo
    from alignflow.algorithms.ppo import ppo_models
    from alignflow.config import build_config
    from alignflow.models import default_device, load_tokenizer
    from alignflow.rl.rewards import load_rewarder
    from alignflow.rl.trainer import PPOTrainer

    folder, device = ROOT / size, default_device()
    ppo = {"updates": updates, "rollout_batch_size": 16, "minibatch_size": 8, "ppo_epochs": 2}
    cfg = build_config({"policy": {"ppo": {**ppo, **MODES[mode]}}})
    before = rss_mib()
    tokenizer = load_tokenizer(str(folder / "sft"))
    policy, reference, value = ppo_models(
        cfg, str(folder / "sft"), str(folder / "reward"), tokenizer, device
    )
    trainer = PPOTrainer(
        cfg.policy.ppo, policy, reference, load_rewarder(cfg, [str(folder / "reward")], tokenizer, device),
        value, tokenizer, demo.prompt_rows(0, 64, 0.3, 0.2, salt=0), seed=0,
        output_dir=folder / f"run-{mode}",
    )  # fmt: skip
    started = time.perf_counter()
    for _ in range(updates):
        trainer.step()
    seconds = (time.perf_counter() - started) / updates
    held = {"held_mib": tensor_mib(trainer), "seconds_per_update": seconds}
    if device == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, **held}
    return {"peak_mib": rss_mib() - before, **held}


def tensor_mib(trainer) -> float:
    """MiB held in tensors by the four roles' weights (a shared base counted once), gradients and
    optimizer state: what stays resident between updates, free of allocator and load-time noise."""
    import torch

    models = [trainer.policy, trainer.value_model, *trainer.rewarder.models]
    if isinstance(trainer.reference, torch.nn.Module):  # not the policy's adapter-off view
        models.append(trainer.reference)
    tensors = {id(t): t for m in models for t in (*m.parameters(), *m.buffers())}
    tensors |= {id(p.grad): p.grad for m in models for p in m.parameters() if p.grad is not None}
    for state in trainer.optimizer.state.values():
        tensors |= {id(v): v for v in state.values() if torch.is_tensor(v)}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,large")
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.updates)))
        return
    for size in args.sizes.split(","):
        build_models(size)
        results = {}
        for mode in MODES:
            done = subprocess.run(
                [sys.executable, __file__, "--worker", size, mode, "--updates", str(args.updates)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        peak, held = results["full"]["peak_mib"], results["full"]["held_mib"]
        print(f"{size}: {args.updates} updates of 16 rollouts (ratios to full PPO)")
        print("  mode        peak memory       held in tensors    s/update")
        for mode, result in results.items():
            print(
                f"  {mode:6s} {result['peak_mib']:8.0f} MiB {result['peak_mib'] / peak:5.2f}x"
                f" {result['held_mib']:8.0f} MiB {result['held_mib'] / held:5.2f}x"
                f"   {result['seconds_per_update']:.2f}"
            )


if __name__ == "__main__":
    main()
