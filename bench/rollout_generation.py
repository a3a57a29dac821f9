"""How much the KV cache buys PPO rollouts on the tiny model.

    .venv/bin/python bench/rollout_generation.py [--batch 32] [--new-tokens 40] [--repeats 3]

Times HF `generate` on a batch of left-padded demo prompts with the KV cache (what the PPO engine
uses) against the same call without it, in one process, and prints the ratio. Sampling is seeded so
both variants generate the same number of tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from alignflow import demo
from alignflow.config import TinyModelConfig
from alignflow.models import build_tiny_model, train_tokenizer
from alignflow.rl.rollout import encode_prompts


def _time_generate(model, ids, mask, new_tokens: int, use_cache: bool, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        torch.manual_seed(0)
        started = time.perf_counter()
        model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=True, top_k=0, use_cache=use_cache,
        )  # fmt: skip
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    spec = TinyModelConfig()
    tokenizer = train_tokenizer(demo.corpus(0, 0.2), spec.vocab_size)
    model = build_tiny_model(spec, tokenizer, seed=0).eval()
    prompts = [row["prompt"] for row in demo.prompt_rows(0, args.batch, 0.3, 0.2, salt=0)]
    ids, mask = encode_prompts(tokenizer, prompts)
    with torch.no_grad():
        _time_generate(model, ids, mask, 4, True, 1)  # warm-up
        cached = _time_generate(model, ids, mask, args.new_tokens, True, args.repeats)
        uncached = _time_generate(model, ids, mask, args.new_tokens, False, args.repeats)
    tokens = args.batch * args.new_tokens
    print(f"batch {args.batch} x {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"  without KV cache (baseline): {uncached:.3f} s  ({tokens / uncached:,.0f} tok/s)")
    print(f"  with KV cache              : {cached:.3f} s  ({tokens / cached:,.0f} tok/s)")
    print(f"  speed-up (baseline / cached): {uncached / cached:.2f}x")


if __name__ == "__main__":
    main()
