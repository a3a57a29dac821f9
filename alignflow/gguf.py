"""GGUF checkpoints (llama.cpp, Ollama) as plain safetensors model folders: a user's
`model.gguf_file`, and the real SmolLM2 that alignflow.real fetches as a GGUF."""

from __future__ import annotations

from pathlib import Path


def convert_gguf(folder: str, gguf_file: str, out: Path, dtype: str = "float32") -> int:
    """A GGUF checkpoint (llama.cpp, Ollama) as a plain safetensors model folder in `out`: weights
    dequantized to `dtype`, the tokenizer and chat template read from the file. Every stage after
    this reads normal folders. Returns the model's parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    # dequantize: unpack every block into dense tensors, so the model saves as safetensors
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=gguf_file,
        dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(gguf_file=gguf_file, dequantize=True),
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model.num_parameters()
