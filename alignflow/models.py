"""Build or load models and tokenizers: the tiny local factory, the real `from_pretrained` path, LoRA.

Security defaults: `trust_remote_code` only when the config opts in, and weights as safetensors only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from alignflow.config import LoraConfig, ModelConfig, TinyModelConfig
from alignflow.data import templates

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PAD, EOS = "<pad>", "</s>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]

# The tiny model's own format: role tokens, and the assistant turn ends exactly at EOS, so the
# reward model, the value head and PPO all read the score at the same last token. Function calls
# and the tools list are written as ChatML writes them; a loss_weight-0 turn is context only.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|system|>\n' }}" + templates.QWEN_TOOLS_SYSTEM + "{{- '\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{#- already written in the tools block #}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\n' }}"
    + templates.QWEN_REPLY
    + "{%- set reply = reply + '</s>' %}"
    + templates.TRAINED_IF_WEIGHTED
    + "{%- else %}"
    "{{- '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer trained on the task's own text, with our chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(spec: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int):
    """A random-init Llama-architecture causal LM sized for CPU demos."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def check_base_model(model_cfg: ModelConfig) -> None:
    """Fail in seconds, before any training, when the base model or its chat template won't do."""
    if model_cfg.source != "pretrained":
        if model_cfg.chat_template is not None:
            raise ValueError(
                "model.chat_template is for model.source 'pretrained'; the tiny model has its own "
                "template (remove model.chat_template)"
            )
        return
    from transformers import AutoConfig

    from alignflow import real

    trust, gguf = model_cfg.trust_remote_code, model_cfg.gguf_file
    path = real.resolve(str(model_cfg.name_or_path))
    if gguf and Path(path).is_dir() and not (Path(path) / gguf).is_file():
        raise ValueError(f"model.gguf_file: no file {gguf!r} in {path!r}")
    try:
        AutoConfig.from_pretrained(
            path, trust_remote_code=trust, **({"gguf_file": gguf} if gguf else {})
        )
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model.name_or_path: cannot load {path!r}: not a local model "
            f"folder, nor a hub id that can be reached ({type(error).__name__})"
        ) from None
    # a GGUF's template is checked once the prepare stage has converted it
    if model_cfg.chat_template is None and not gguf:
        check_chat_template(path, trust)


def check_chat_template(path: str, trust_remote_code: bool) -> None:
    """A one-line ValueError when the model at `path` has no chat template SFT can train with."""
    try:
        tokenizer = load_tokenizer(path, trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model.name_or_path: cannot load a tokenizer from {path!r} ({type(error).__name__})"
        ) from None
    try:
        templates.resolve_chat_template(tokenizer)
    except ValueError:
        raise ValueError(
            f"model.chat_template: {path!r} has no chat template of its own; set "
            f"model.chat_template to one of the built-in ones: {', '.join(templates.TEMPLATES)}"
        ) from None
    if _has_generation_markers(tokenizer.chat_template):
        return
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    try:  # no markers: the reply's tokens are found by rendering the turns (assistant_spans)
        text, [(start, end)] = assistant_spans(tokenizer, probe)
        if "Hello there." not in text[start:end]:
            raise ValueError("the reply is not inside its span")
    except ValueError as error:
        raise ValueError(
            f"model.chat_template: {path!r}'s own chat template has no {{% generation %}} markers "
            f"and its replies cannot be located by rendering the turns ({error}); set "
            f"model.chat_template to one of the built-in ones: {', '.join(templates.TEMPLATES)}"
        ) from None


_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _has_generation_markers(template: str | None) -> bool:
    return bool(template) and bool(_GENERATION.search(template))


def _with_training_markers(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a model's own template `{% generation %}` markers where TRL knows its family (Qwen,
    Llama-3, Gemma, ...): TRL's patched version renders the same text, with the markers added."""
    if not tokenizer.chat_template or _has_generation_markers(tokenizer.chat_template):
        return
    from trl.chat_template_utils import get_training_chat_template

    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        return  # left as is; check_base_model reports it before any training
    if patched is not None:
        tokenizer.chat_template = patched


# Pads that families ship under other names, in the order they are tried (see `padding_token`)
_PAD_NAMES = (
    re.compile(r"^[<\[|｜▁]*pad[>\]|｜▁]*$", re.IGNORECASE),  # <pad>, <|pad|>, [PAD], <｜▁pad▁｜>
    re.compile(r"pad", re.IGNORECASE),  # <|finetune_right_pad_id|>, <|fim_pad|>, ...
    re.compile(r"end_?of_?text", re.IGNORECASE),  # Llama-3's <|end_of_text|>, <|endoftext|>
)


def padding_token(tokenizer: PreTrainedTokenizerBase, shipped: str | None) -> str:
    """The token to pad with: never the end-of-turn token (EOS) when the vocabulary has another.

    A scalar head (reward and value models, in TRL's RewardTrainer as in transformers) reads its
    score at the last token that is not padding; with pad == EOS that is the token *before* the
    EOS ending the reply. So: the shipped pad when it differs from EOS, else a vocabulary token named
    as a pad or end-of-text (Llama-3.1 ships no pad: `<|end_of_text|>`; DeepSeek-V3 pads with its EOS:
    `<｜▁pad▁｜>`), else UNK (SmolLM2: `<|endoftext|>`), else BOS, else EOS itself (the reward stage
    then refuses to train: `check_padding`)."""
    eos = tokenizer.eos_token
    if shipped and shipped != eos:
        return shipped
    added = [token.content for _, token in sorted(tokenizer.added_tokens_decoder.items())]
    for pattern in _PAD_NAMES:
        for name in added:
            if name != eos and pattern.search(name):
                return name
    for name in (tokenizer.unk_token, tokenizer.bos_token):
        if name and name != eos:
            return name
    return eos


def check_padding(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """A one-line ValueError when padding is the EOS: a scalar head would read the wrong token."""
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            f"{where}: the tokenizer pads with its end-of-turn token {tokenizer.eos_token!r} and has "
            "no other token to pad with; a reward model would read its score before the reply's "
            "end (add a pad token to the tokenizer, e.g. tokenizer.add_special_tokens"
            "({'pad_token': '<|pad|>'}), and save it with the model)"
        )


def load_tokenizer(
    path: str,
    trust_remote_code: bool = False,
    padding_side: str = "right",
    chat_template: str | None = None,
):
    """Load a tokenizer, with built-in template `chat_template` (model.chat_template) when named.

    A built-in template's special tokens are added and its end-of-turn token becomes EOS, so
    generation stops where a reply ends: load the model with `load_causal_lm(..., tokenizer=)`
    to match. `padding_side` is not persisted by transformers 5, so it is set on every load.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    shipped_pad = tokenizer.pad_token
    if chat_template is not None:
        templates.apply_template(tokenizer, chat_template)
        tokenizer.eos_token = templates.end_of_turn_token(chat_template)
    else:
        _with_training_markers(tokenizer)
    tokenizer.pad_token = padding_token(tokenizer, shipped_pad)
    tokenizer.padding_side = padding_side
    return tokenizer


def default_device() -> str:
    """Where stages that drive models themselves (collect, PPO, evaluate) put them."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fit_to_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give `model` rows for tokens a chat template added, and stop its generation at their EOS."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    text_config, generation = model.config.get_text_config(), model.generation_config
    text_config.pad_token_id = generation.pad_token_id = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    if eos is None:
        return
    text_config.eos_token_id = eos
    stops = generation.eos_token_id
    stops = [] if stops is None else [stops] if isinstance(stops, int) else list(stops)
    if stops[:1] != [eos]:  # first: the end-of-turn token (rollout.stop_token_ids)
        generation.eos_token_id = [eos, *(stop for stop in stops if stop != eos)]


def check_safetensors(folder: Path) -> None:
    """Refuse a local model or adapter folder whose weights are pickles only (`*.bin`, `*.pt`):
    unpickling runs whatever code the file holds. Raises ValueError naming the folder."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(
        p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")
    )
    what = "pickled weights only (" + ", ".join(pickles[:3]) + ")" if pickles else "no weights"
    raise ValueError(
        f"{folder}: {what}; alignflow loads safetensors only (convert with "
        "save_pretrained(..., safe_serialization=True))"
    )


def load_causal_lm(
    path: str,
    trust_remote_code: bool = False,
    device: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """Load a causal LM; with `tokenizer`, fitted to it (see `fit_to_tokenizer`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    if tokenizer is not None:
        fit_to_tokenizer(model, tokenizer)
    return model.to(device) if device else model


class _DropMessages(logging.Filter):
    """Drops log records whose message contains `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def load_scalar_head_model(
    path: str, trust_remote_code: bool = False, pad_token_id=None, device: str | None = None
):
    """A sequence-classification model with one output: the reward model and the value model.

    From a causal LM (the SFT model) its `score` head is new: transformers' LOAD REPORT table says
    so as a warning every time, which reads like an error. That table is silenced for this call and
    the loading info checked here instead: anything missing besides the head is still a warning."""
    from transformers import AutoModelForSequenceClassification

    # Dropped by a filter on that one record, not by raising the logger's level: transformers
    # checks a tensor-parallel plan, and warns "layers were not sharded", when that level is set.
    report = logging.getLogger("transformers.modeling_utils")
    load_report = _DropMessages("LOAD REPORT")
    report.addFilter(load_report)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, trust_remote_code=trust_remote_code, use_safetensors=True,
            output_loading_info=True,
        )  # fmt: skip
    finally:
        report.removeFilter(load_report)
    missing = [key for key in info["missing_keys"] if key.split(".")[0] != "score"]
    if missing or info["mismatched_keys"]:
        log.warning("%s: weights not in the checkpoint, initialized fresh: %s", path,
                    ", ".join(sorted(missing) + [str(k) for k in info["mismatched_keys"]])[:500])  # fmt: skip
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model.to(device) if device else model


def peft_lora_config(lora: LoraConfig | None, task_type: str, model=None):
    """peft's LoraConfig for a `lora` section (None: no LoRA); `model`, the one the adapter goes
    on, is needed when `lora.top_layers` is set."""
    if lora is None:
        return None
    from peft import LoraConfig as PeftLoraConfig

    targets = lora.target_modules
    if lora.top_layers is not None:
        targets = top_layer_modules(model, lora.top_layers, targets)
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type=task_type,
    )


def decoder_layers(model, where: str) -> tuple[str, int]:
    """(the module name of `model`'s stack of decoder layers, their count): the first ModuleList
    as long as the config's num_hidden_layers (a PeftModel's included). `where` names the caller
    in the one-line error when there is none."""
    import torch

    count = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, count
    raise ValueError(f"{where}: no stack of {count} decoder layers in the model")


def top_layer_modules(model, top: int, targets: list[str] | str) -> list[str]:
    """The full names of the linear modules LoRA adapts in the model's top `top` decoder layers:
    every linear one ("all-linear"), or those whose own name is in `targets`. (peft's own
    layers_to_transform refuses "all-linear".)"""
    import torch

    if isinstance(targets, str) and targets != "all-linear":
        raise ValueError(
            f"lora.top_layers needs lora.target_modules 'all-linear' or a list of module names, "
            f"not the pattern {targets!r}"
        )
    stack, count = decoder_layers(model, "lora.top_layers")
    prefixes = tuple(f"{stack}.{index}." for index in range(max(0, count - top), count))
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith(prefixes)
        and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets)
    ]


def trainer_device_kwargs() -> dict:
    """TRL configs default to bf16 and gradient checkpointing; pick what this machine can do.

    Under a launcher (alignflow.launch): DDP over gloo on CPU (nccl needs GPUs), and DeepSpeed
    when the stage was started with `--deepspeed`.
    """
    import os

    import torch

    from alignflow import distributed
    from alignflow.launch import DEEPSPEED_ENV

    on_gpu = torch.cuda.is_available()
    kwargs = {
        "use_cpu": not on_gpu,
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "activation_checkpointing": False,  # transformers 5's name (gradient_… warns)
    }
    if distributed.world_size() > 1:
        kwargs["ddp_backend"] = distributed.backend()
    if os.environ.get(DEEPSPEED_ENV):
        kwargs["deepspeed"] = os.environ[DEEPSPEED_ENV]
    return kwargs


def trainer_kwargs(section, output_dir: Path, seed: int) -> dict:
    """TrainingArguments shared by the TRL stages, from a stage's config section."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": section.epochs,
        "per_device_train_batch_size": section.batch_size,
        "learning_rate": section.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": section.warmup_ratio,  # a float below 1 is a fraction of all steps
        "max_length": section.max_length,
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": section.save_steps,
        "save_total_limit": 1,  # a crash loses at most one save interval
        "report_to": "none",  # tracking.trainer_callback logs to the stage's MLflow run
        "seed": seed,
        **trainer_device_kwargs(),
    }


def periodic_checkpoints(minutes: float | None):
    """A TrainerCallback that also saves a checkpoint once `minutes` of training have passed since
    the last save (None: steps only), so a kill loses minutes of work, not the stage, however
    large `save_steps` is. Rank 0's clock decides for every rank (saving is collective)."""
    import time

    from transformers import TrainerCallback

    from alignflow import distributed

    class PeriodicCheckpoints(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            due = minutes is not None and time.monotonic() - self.last >= minutes * 60
            if distributed.world_size() > 1:
                due = distributed.broadcast_object(due)
            if due:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last = time.monotonic()
            return control

    return PeriodicCheckpoints()


def last_checkpoint(directory: Path) -> str | None:
    """The newest `checkpoint-N` a Trainer left behind, to resume a crashed stage from."""
    checkpoints = sorted(
        directory.glob("checkpoint-*"), key=lambda path: int(path.name.rsplit("-", 1)[-1])
    )
    return str(checkpoints[-1]) if checkpoints else None


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as its chat template renders it, and the character span of each trained
    assistant turn, for templates without `{% generation %}` markers (Qwen3, DeepSeek-V3, SmolLM2
    as they ship). A turn's span runs from the end of the generation prompt before it (its header:
    everything the template writes for a reply, e.g. Qwen3's `<think>` block, is trained) to the end
    of its end-of-turn token, and the newline the template writes after it. Turns with
    `loss_weight` 0 are skipped. A ValueError when the template renders earlier turns differently
    once a reply follows, or a reply has no end-of-turn token."""
    full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    end_of_turn = tokenizer.eos_token
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("loss_weight", 1) == 0:
            continue
        prefix = tokenizer.apply_chat_template(
            messages[:index], tools=tools, tokenize=False, add_generation_prompt=True
        )
        if not full.startswith(prefix):
            raise ValueError(f"turn {index}: the template renders the turns before it differently")
        end = full.find(end_of_turn, len(prefix))
        if end < 0:
            raise ValueError(f"turn {index}: no end-of-turn token {end_of_turn!r} after the reply")
        end += len(end_of_turn)
        spans.append((len(prefix), end + 1 if full.startswith("\n", end) else end))
    return full, spans


def _masked_by_spans(tokenizer, messages: list[dict], tools: list | None) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` from `assistant_spans`: a token is trained when its
    characters overlap a span."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    masks = [
        int(any(start < span_end and end > span_start for span_start, span_end in spans))
        for start, end in encoded["offset_mapping"]
    ]
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": masks}


def tokenize_conversations(tokenizer: PreTrainedTokenizerBase, rows: list[dict]):
    """SFT rows → a `datasets.Dataset` of `input_ids` + `assistant_masks`, rendered by the chat
    template with each row's own `tools`.

    Tokenized here, row by row, rather than by TRL from a `messages` column: an Arrow column would
    merge every row's tool-call `arguments` into one struct (each call gaining every other call's
    keys as nulls) and drop `tools`. Rows whose template marks no token for training (every reply
    has loss_weight 0) are left out and counted.

    Returns:
        (dataset, rows left out)
    """
    from datasets import Dataset

    ids, masks, untrained = [], [], 0
    marked = _has_generation_markers(tokenizer.chat_template)
    for row in rows:
        if not marked:  # a template as it ships: the replies are found by rendering the turns
            encoded = _masked_by_spans(tokenizer, row["messages"], row.get("tools"))
        else:
            encoded = tokenizer.apply_chat_template(
                row["messages"],
                tools=row.get("tools"),
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
        if 1 not in encoded["assistant_masks"]:
            untrained += 1
            continue
        ids.append(list(encoded["input_ids"]))
        masks.append(list(encoded["assistant_masks"]))
    return Dataset.from_dict({"input_ids": ids, "assistant_masks": masks}), untrained
