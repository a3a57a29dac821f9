"""The stage graph and the output layout, in one dependency-free place.

A stage is a function of the config and its upstream stages' results, by name: `UPSTREAM[stage]`
lists the stages it reads, and each is handed to it under that stage's name (`prepare=…`,
`sft=…`); a stage this config's shape skips (alignflow.shape) is handed None. What a stage writes
into its folder (`<artifacts_root>/stages/<stage>/<cache_key>/`) is named here once, for the
stages that read it. The work of each stage is in the module of its name in this package; the
Prefect tasks in `tasks/` only wrap it.

Imports nothing but the standard library: the config's validators and the launcher read it.
"""

from __future__ import annotations

STAGES = ("prepare", "sft", "collect", "reward", "policy", "evaluate", "register")

UPSTREAM: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "sft": ("prepare",),
    "collect": ("prepare", "sft"),
    "reward": ("prepare", "sft", "collect"),
    "policy": ("prepare", "sft", "collect", "reward"),
    "evaluate": ("prepare", "sft", "reward", "policy"),
    "register": ("policy", "evaluate"),
}

# Stages whose body splits its work across processes (a TRL Trainer shards data and syncs
# gradients). Any other stage on N processes would do all its work N times into one directory.
# policy: every policy.algorithm (PPO: alignflow.rl averages gradients; dpo, kto, orpo, rloo,
# grpo, rft: alignflow.algorithms' TRL trainers, rank 0 saving and evaluating).
MULTI_PROCESS_STAGES = ("sft", "reward", "policy")

# prepare
BASE_MODEL_DIR = "base_model"  # the locally built tiny model, or a dequantized GGUF
OWN_PREFERENCES_FILE = "preferences.jsonl"  # data.preferences as the data layer wrote them
SFT_EVAL_FILE = "sft_eval.jsonl"  # the SFT rows held out by data.eval_fraction
DATA_REPORT = "data_report.json"
# sft and reward
MODEL_DIR = "model"  # the trained model (reward: ensemble member 0)
MEMBER_METRICS = "member_metrics.json"  # reward: written last, marks a member complete
# collect
PAIRS_FILE = "pairs.jsonl"
COMPARISONS_FILE = "comparisons.jsonl"
RECORDS_FILE = "records.jsonl"  # every labeler's answer to every comparison
# policy
POLICY_DIR = "policy"
ADAPTER_DIR = "adapter"  # LoRA PPO: the trained adapter, kept beside the merged policy
# evaluate
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "eval.json"
TABLE_FILE = "eval.md"
EVAL_CHART = "eval.png"  # the evaluation table as bar charts (alignflow.charts)
CURVES_CHART = "training_curves.png"  # the policy stage's curves per update


def dataset_file(role: str) -> str:
    """prepare's file of a data role (alignflow.shape.DATA_ROLES): `sft.jsonl`, `heldout.jsonl`…"""
    return f"{role}.jsonl"


def member_dir(index: int) -> str:
    """Folder of reward ensemble member `index` in the reward stage (member 0 is MODEL_DIR)."""
    return MODEL_DIR if index == 0 else f"{MODEL_DIR}-{index}"
