"""The pad token is never the end-of-turn token when the vocabulary has another (a scalar head reads
its score at the last non-pad token), and a tokenizer with no other is refused by the reward stage."""

from __future__ import annotations

import pytest

from alignflow.models import check_padding, padding_token


def _tokenizer(specials: dict[str, str], added: list[str] = ()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["a", "b", *specials.values(), *added])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=specials.get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, additional_special_tokens=list(added), **specials
    )


@pytest.mark.parametrize(
    ("specials", "added", "expected"),
    [
        ({"eos_token": "<eot>", "pad_token": "<pad>"}, [], "<pad>"),  # shipped, distinct
        ({"eos_token": "<eot>", "pad_token": "<eot>"}, ["<｜▁pad▁｜>"], "<｜▁pad▁｜>"),  # DeepSeek-V3
        ({"eos_token": "<|eot_id|>"}, ["<|finetune_right_pad_id|>", "<|end_of_text|>"],
         "<|finetune_right_pad_id|>"),  # Llama-3.1 as Meta ships it
        ({"eos_token": "<|eot_id|>"}, ["<|end_of_text|>"], "<|end_of_text|>"),
        ({"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}, [],
         "<|endoftext|>"),  # SmolLM2
        ({"eos_token": "</s>", "bos_token": "<s>"}, [], "<s>"),
        ({"eos_token": "</s>"}, [], "</s>"),  # nothing else: the EOS, and the reward stage refuses
    ],
)  # fmt: skip
def test_the_pad_is_another_token_than_the_eos_whenever_there_is_one(specials, added, expected):
    tokenizer = _tokenizer(specials, added)
    assert padding_token(tokenizer, specials.get("pad_token")) == expected


def test_a_tokenizer_that_can_only_pad_with_its_eos_is_refused_in_one_line():
    tokenizer = _tokenizer({"eos_token": "</s>"})
    tokenizer.pad_token = padding_token(tokenizer, None)
    with pytest.raises(ValueError, match=r"^reward: the tokenizer pads with its end-of-turn token"):
        check_padding(tokenizer, "reward")
    tokenizer.pad_token = "a"
    check_padding(tokenizer, "reward")
