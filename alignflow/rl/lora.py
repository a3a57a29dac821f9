"""LoRA and QLoRA PPO: policy and reference share one (optionally 4-/8-bit) base model.

The policy is the base with a trainable LoRA adapter; the reference is the same base with the adapter
switched off, so no second copy of the weights exists. The critic is the reward model's architecture
with its own LoRA adapter (and a trainable score head), quantized like the policy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignflow.config import PPOConfig


class DisabledAdapter:
    """The frozen reference: `peft_model` run with its adapter disabled. Offers what the rollout
    code calls on a model (call, device, eval, requires_grad_)."""

    def __init__(self, peft_model) -> None:
        self.peft_model = peft_model

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.peft_model.device

    def eval(self) -> DisabledAdapter:
        return self

    def requires_grad_(self, requires_grad: bool = True) -> DisabledAdapter:
        return self  # nothing of its own: the base is frozen by peft, the adapter is the policy's


def quantization_config(kind: str):
    """transformers' BitsAndBytesConfig for `policy.ppo.quantization` (None for "none")."""
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # QLoRA's recipe: NF4 with double quantization; compute in float32 on CPU, bf16 on GPU.
    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _load(model_class, path: str, cfg: PPOConfig, trust: bool, device: str, **kwargs):
    quantization = quantization_config(cfg.quantization)
    model = model_class.from_pretrained(
        path,
        trust_remote_code=trust,
        use_safetensors=True,
        quantization_config=quantization,
        # quantized weights are placed while loading; a plain model is moved after
        **({"device_map": {"": device}} if quantization else {}),
        **kwargs,
    )
    return model if quantization else model.to(device)


def _with_adapter(model, cfg: PPOConfig, task_type: str, seed: int):
    """`model` with a fresh LoRA adapter whose random init is a function of `seed` alone, so two
    runs with one seed (or a run and its resumed twin) start from the same adapter."""
    from peft import get_peft_model

    from alignflow.models import peft_lora_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_lora_config(cfg.lora, task_type, model))


def lora_policy(sft_dir: str, cfg: PPOConfig, trust: bool, device: str, seed: int = 0):
    """(policy, reference): the SFT model with a fresh LoRA adapter, and its adapter-off view."""
    from transformers import AutoModelForCausalLM

    base = _load(AutoModelForCausalLM, sft_dir, cfg, trust, device)
    policy = _with_adapter(base, cfg, "CAUSAL_LM", seed)
    return policy, DisabledAdapter(policy)


def lora_value_model(
    rm_dir: str, cfg: PPOConfig, trust: bool, pad_token_id: int, device: str, seed: int = 0
):
    """The critic: the reward model with a LoRA adapter; peft's SEQ_CLS task trains `score` too."""
    from transformers import AutoModelForSequenceClassification

    model = _load(AutoModelForSequenceClassification, rm_dir, cfg, trust, device, num_labels=1)
    model.config.pad_token_id = pad_token_id
    return _with_adapter(model, cfg, "SEQ_CLS", seed + 1)


def merge_adapter(sft_dir: str, adapter_dir: Path, out: Path, trust: bool) -> None:
    """Save SFT + adapter as one plain full-precision model (what evaluation and the registry load).

    The base is reloaded unquantized: merging into 4-bit weights would round the update away.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        sft_dir, trust_remote_code=trust, use_safetensors=True
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
