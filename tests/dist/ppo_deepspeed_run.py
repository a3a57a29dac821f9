"""Run under `torchrun --nproc_per_node 1` by test_launch_deepspeed.py: the same short PPO run on
the micro models with plain torch, under a DeepSpeed engine, and under DeepSpeed again killed after
update 3 (checkpoint at 2) and resumed. Writes each run's history (results.json) and saved policy.

    python -m torch.distributed.run --standalone --nproc_per_node 1 \\
        tests/dist/ppo_deepspeed_run.py DS_CONFIG.json MODELS.json OUT_DIR
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a file by torchrun: make `tests` importable

UPDATES = 4


def main(ds_path: str, models_path: str, out: str) -> None:
    from alignflow.config import PPOConfig
    from tests.stage.ppo_setup import Crash, MicroModels, crash_after, make_trainer

    spec = json.loads(Path(models_path).read_text())
    models = MicroModels(
        spec["sft_dir"], spec["rm_dir"], spec["prompt_rows"], PPOConfig(**spec["ppo"])
    )
    ds_config = json.loads(Path(ds_path).read_text())
    out_dir = Path(out)
    settings = {"updates": UPDATES, "lr_schedule": "linear", "reward_normalization": True}

    def run(name: str, deepspeed: dict | None, **extra):
        trainer = make_trainer(models, out_dir / name, deepspeed=deepspeed, **settings, **extra)
        trainer.train()
        return trainer

    results = {}
    for name, deepspeed in (("torch", None), ("deepspeed", ds_config)):
        trainer = run(name, deepspeed)
        trainer.save_policy(out_dir / name / "policy")
        results[name] = trainer.history
    with contextlib.suppress(Crash):
        run("resumed", ds_config, log_metrics=crash_after(3))
    resumed = run("resumed", ds_config)
    results["resumed"] = resumed.history
    results["resumed_from"] = resumed.resumed_from
    resumed.save_policy(out_dir / "resumed" / "policy")
    results["optimizer_steps"] = _adam_steps(resumed.optimizer)
    (out_dir / "results.json").write_text(json.dumps(results))


def _adam_steps(optimizer) -> int:
    """The step count AdamW holds (equal for every parameter tensor it updates)."""
    steps = {int(state["step"]) for state in optimizer.state.values() if "step" in state}
    (count,) = steps
    return count


if __name__ == "__main__":
    main(*sys.argv[1:4])
