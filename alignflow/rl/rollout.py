"""Sampling and scoring with HF models: left-padded batched `generate` (KV cache), per-token
log-probs, and per-token scalar heads (reward and value models).

Layout used everywhere: `query_ids (b, q)` left-padded, `response_ids (b, t)` right-padded; the
sequence is their concatenation, and response token i is predicted from position q - 1 + i.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from alignflow.config import SamplingConfig
from alignflow.progress import Progress
from alignflow.rl.functional import entropy_from_logprobs, kl_exact
from alignflow.rl.trunk import TrunkStates, generated_trunk, recording, starting_at


def prompt_text(tokenizer, prompt: list[dict]) -> str:
    """The prompt as the chat template renders it, with the generation prompt."""
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def encode_prompts(
    tokenizer, prompts: Sequence[list[dict]], device=None, max_length: int | None = None
):
    """Chat-format prompts, tokenized and left-padded for generation. Returns (ids, mask)."""
    tokenizer.padding_side = "left"
    batch = tokenizer(
        [prompt_text(tokenizer, messages) for messages in prompts],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
        truncation=max_length is not None,
        max_length=max_length,
    )
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def reply_text(tokenizer, prompt: list[dict], completion: str) -> str:
    """`completion` as the chat template writes a reply after `prompt`'s generation prompt, through
    its end-of-turn token (EOS) and nothing after it: what a policy trained on the template
    generates (Qwen3's empty think block included; not the newline Qwen3 writes after
    `<|im_end|>`). The completion and the EOS when the template renders the prompt differently
    once a reply follows."""
    end = tokenizer.eos_token
    prefix = prompt_text(tokenizer, prompt)
    full = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": completion}], tokenize=False
    )
    stop = full.find(end, len(prefix)) if full.startswith(prefix) else -1
    return full[len(prefix) : stop + len(end)] if stop >= 0 else completion + end


def completion_ids(tokenizer, prompt: list[dict], completion: str) -> list[int]:
    """The reply's token ids (`reply_text`), ending with the EOS id: the tokens a scorer sees after
    the prompt's. Tokenized apart from the prompt, as sampled tokens follow the prompt's."""
    ids = tokenizer(reply_text(tokenizer, prompt, completion), add_special_tokens=False)
    ids = list(ids["input_ids"])
    return ids if ids[-1:] == [tokenizer.eos_token_id] else [*ids, tokenizer.eos_token_id]


def prompt_ids(tokenizer, prompt: list[dict]) -> list[int]:
    """The prompt's token ids with the generation prompt, as `encode_prompts` gives them."""
    return list(tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])


def encode_completions(
    tokenizer, prompts: Sequence[list[dict]], completions: Sequence[str], device=None
) -> tuple[Tensor, Tensor, int, Tensor]:
    """Text completions in the rollout layout: the prompts as `encode_prompts` gives them, then each
    completion's reply tokens (`completion_ids`, ending with EOS), right-padded. Reward training,
    PPO, RLOO/GRPO and the evaluation all score this layout, at the EOS.

    Returns (sequence (b, q + t), attention_mask (b, q + t), q, response_mask (b, t)).
    """
    query, query_mask = encode_prompts(tokenizer, prompts, device)
    responses = [
        completion_ids(tokenizer, prompt, text)
        for prompt, text in zip(prompts, completions, strict=True)
    ]
    width = max(len(ids) for ids in responses)
    pad = tokenizer.pad_token_id
    response = torch.tensor([ids + [pad] * (width - len(ids)) for ids in responses], device=device)
    lengths = torch.tensor([len(ids) for ids in responses], device=device)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    sequence = torch.cat([query, response], dim=1)
    return sequence, torch.cat([query_mask, mask], dim=1), query.shape[1], mask


def completion_batches(
    tokenizer, prompts: Sequence[list[dict]], completions: Sequence[str], batch_size: int,
    device=None,
):  # fmt: skip
    """`encode_completions` over consecutive batches of `batch_size` (prompt, completion) pairs."""
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        yield encode_completions(tokenizer, prompts[start:end], completions[start:end], device)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, matching what `generate` uses. (b, L) -> (b, L)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _forward_inputs(sequence: Tensor, attention_mask: Tensor) -> dict[str, Tensor | bool]:
    return {
        "input_ids": sequence,
        "attention_mask": attention_mask,
        "position_ids": position_ids(attention_mask),
        "use_cache": False,
    }


def response_mask(response_ids: Tensor, stop_ids: int | Sequence[int]) -> Tensor:
    """1 for response tokens up to and including the first stop token (any of `stop_ids`: a model
    may stop at several, e.g. Llama-3's `<|eot_id|>` and `<|end_of_text|>`), 0 after.
    (b, t) -> (b, t) long."""
    stops = torch.tensor([stop_ids] if isinstance(stop_ids, int) else list(stop_ids))
    is_stop = torch.isin(response_ids, stops.to(response_ids.device)).long()
    after_stop = (is_stop.cumsum(-1) - is_stop) > 0
    return (~after_stop).long()


def stop_token_ids(model) -> list[int]:
    """Every token the model's generation stops at (its generation config's EOS list), first the
    end-of-turn token (`models.fit_to_tokenizer` puts it first)."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _generate(
    model, query_ids: Tensor, query_mask: Tensor, sampling: SamplingConfig, greedy: bool, **extra
):
    """HF `generate` with our sampling settings and stop tokens; returns (its output, pad id)."""
    config = model.generation_config
    # a model that ships no pad (Llama-3.1) and was loaded without our tokenizer: pad with its EOS
    pad = config.pad_token_id if config.pad_token_id is not None else stop_token_ids(model)[0]
    output = model.generate(
        input_ids=query_ids,
        attention_mask=query_mask,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_k=None if greedy else sampling.top_k,
        top_p=None if greedy else sampling.top_p,
        pad_token_id=pad,
        eos_token_id=config.eos_token_id,
        use_cache=True,
        **extra,
    )
    return output, pad


def _responses(model, sequences: Tensor, query_len: int, pad: int) -> Tensor:
    response = sequences[:, query_len:]
    return response.masked_fill(response_mask(response, stop_token_ids(model)) == 0, pad)


@torch.no_grad()
def generate(
    model, query_ids: Tensor, query_mask: Tensor, sampling: SamplingConfig, greedy: bool = False
) -> Tensor:
    """Sample responses; returns response_ids (b, t) with everything after EOS set to pad."""
    output, pad = _generate(model, query_ids, query_mask, sampling, greedy)
    return _responses(model, output, query_ids.shape[1], pad)


@torch.no_grad()
def generate_with_trunk(
    model, query_ids: Tensor, query_mask: Tensor, sampling: SamplingConfig, depth: int,
    greedy: bool = False,
) -> tuple[Tensor, TrunkStates | None]:  # fmt: skip
    """`generate`, and the hidden states entering layer `depth` at every position of the sampled
    sequences (alignflow.rl.trunk.generated_trunk), recorded by generate's own forward passes: no
    pass over the bottom layers follows sampling. Returns (response_ids (b, t), trunk or None)."""
    with recording(model, depth) as recorded:
        output, pad = _generate(
            model, query_ids, query_mask, sampling, greedy, return_dict_in_generate=True,
            num_beams=1,
        )  # fmt: skip
    trunk = generated_trunk(model, recorded, output.past_key_values, output.sequences, query_mask)
    return _responses(model, output.sequences, query_ids.shape[1], pad), trunk


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' own models do): the LM
    head then runs on response positions only, not on the prompt's."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "peft_model", inner)  # lora.DisabledAdapter
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _response_distributions(
    model, sequence: Tensor, attention_mask: Tensor, query_len: int, temperature: float,
    trunk: TrunkStates | None = None,
) -> Tensor:  # fmt: skip
    """Full log-softmax (b, t, v), float32, at sampling temperature, of the positions that
    predict the response tokens. `trunk`: this batch's hidden states below the layers `model`
    trains (alignflow.rl.trunk), so only the layers above them run."""
    width = sequence.shape[1] - query_len
    inputs = _forward_inputs(sequence, attention_mask)
    if _keeps_logits(model):  # positions q - 1 .. end predict the response (and one past it)
        inputs["logits_to_keep"] = width + 1
    with starting_at(model, trunk):
        logits = model(**inputs).logits
    return (logits[:, -(width + 1) : -1] / temperature).float().log_softmax(dim=-1)


def response_logprobs(
    model,
    sequence: Tensor,
    attention_mask: Tensor,
    query_len: int,
    temperature: float,
    with_entropy: bool = True,
    trunk: TrunkStates | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs and entropies of the response tokens under `model`, at sampling temperature.

    Args: sequence, attention_mask (b, q + t). Returns (logprobs, entropy), each (b, t); entropy
    is None unless `with_entropy`. The log-softmax over the vocabulary is computed once for both.
    `trunk`: as for `_response_distributions`.
    """
    response = sequence[:, query_len:]
    logprobs = _response_distributions(
        model, sequence, attention_mask, query_len, temperature, trunk
    )
    token_logprobs = _token_logprobs(logprobs, response)
    return token_logprobs, entropy_from_logprobs(logprobs) if with_entropy else None


def response_logprobs_and_kl(
    model, sequence: Tensor, attention_mask: Tensor, query_len: int, temperature: float,
    ref_distributions: Tensor, trunk: TrunkStates | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """`response_logprobs` with entropies, and the exact KL (`kl_exact`) of the model's next-token
    distributions to `ref_distributions` (the reference's, (b, t, v) log-softmax at the same
    temperature, `Sampled.ref_distributions`) at each response position, both from one
    log-softmax. Returns (logprobs, entropy, kl), each (b, t); kl carries the gradient."""
    distributions = _response_distributions(
        model, sequence, attention_mask, query_len, temperature, trunk
    )
    return (
        _token_logprobs(distributions, sequence[:, query_len:]),
        entropy_from_logprobs(distributions),
        kl_exact(distributions, ref_distributions),
    )


@torch.no_grad()
def completion_logprobs(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    completions: Sequence[str],
    batch_size: int = 32,
    per_token: bool = False,
) -> Tensor:
    """Log-prob of each completion (its tokens, then EOS) after its chat prompt, summed, or with
    `per_token` its mean per token. Returns (n,).

    Tokenized as the rollouts are scored (`encode_completions`): the prompt with the generation
    prompt, left-padded, then the reply as the chat template writes it.
    """
    model.eval()
    out = []
    for sequence, attention, query_len, mask in completion_batches(
        tokenizer, prompts, completions, batch_size, model.device
    ):
        logprobs, _ = response_logprobs(
            model, sequence, attention, query_len, 1.0, with_entropy=False
        )
        total = (logprobs * mask).sum(-1)
        out.append((total / mask.sum(-1).clamp(min=1) if per_token else total).float().cpu())
    return torch.cat(out)


def _token_logprobs(distributions: Tensor, tokens: Tensor) -> Tensor:
    """The entry of each token in its position's log-softmax: (b, t, v), (b, t) -> (b, t)."""
    return distributions.gather(dim=-1, index=tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class Sampled:
    """Responses sampled from a policy, with their log-probs under it and under a reference."""

    sequence: Tensor  # (b, q + t) query then response
    attention_mask: Tensor  # (b, q + t)
    query_len: int
    response: Tensor  # (b, t)
    mask: Tensor  # (b, t) response tokens up to and including EOS
    logprobs: Tensor  # (b, t)
    ref_logprobs: Tensor  # (b, t)
    # (b, t) exact KL(policy || reference) of the next-token distributions at each response
    # token (0 past the end), when sample_with_logprobs was asked for it
    token_kl: Tensor | None = None
    # hidden states entering the first layer the models do not share, when asked for them
    trunk: TrunkStates | None = None
    # (b, t, v) the reference's log-softmax at each response position, when asked to keep it
    ref_distributions: Tensor | None = None

    @property
    def exact_kl(self) -> Tensor | None:
        """Per-sequence exact KL(policy || reference) in nats (`token_kl` summed over each
        response), or None when it was not computed. Returns (b,)."""
        return None if self.token_kl is None else self.token_kl.sum(-1)

    @property
    def sampled_kl(self) -> Tensor:
        """Per-sequence KL(policy || reference) in nats read off the sampled tokens: the k1 terms
        log p - log q summed over each response, EOS included. Unbiased, noisy. Returns (b,)."""
        return ((self.logprobs - self.ref_logprobs) * self.mask).sum(-1)


@torch.no_grad()
def sample_with_logprobs(
    policy, reference, tokenizer, prompts: Sequence[list[dict]], sampling: SamplingConfig,
    greedy: bool = False, exact_kl: bool = False, trunk_depth: int = 0,
    keep_reference: bool = False,
) -> Sampled:  # fmt: skip
    """Generate from `policy` and score the responses under both models at sampling temperature.

    With `exact_kl`, also the exact KL of the two next-token distributions (`kl_exact`) summed over
    each response's tokens: the sequence-level KL the k1 sum estimates, with much less variance,
    from the same two forward passes; it holds two (b, t, v) float32 distributions at once (and
    one row's temporaries while comparing them). `keep_reference` keeps the reference's
    distributions (`Sampled.ref_distributions`, b x t x vocab float32) for a later exact KL.

    With `trunk_depth` > 0 (policy and reference share that many frozen bottom layers:
    alignflow.rl.trunk.shared_depth), sampling records the hidden states entering layer
    `trunk_depth` (else the policy's scoring pass does), both scoring passes start there, and
    `Sampled.trunk` holds them for later passes over the same batch."""
    query_ids, query_mask = encode_prompts(tokenizer, prompts, policy.device)
    trunk = None
    if trunk_depth:
        response, trunk = generate_with_trunk(
            policy, query_ids, query_mask, sampling, trunk_depth, greedy
        )
    else:
        response = generate(policy, query_ids, query_mask, sampling, greedy=greedy)
    mask = response_mask(response, stop_token_ids(policy))
    sequence = torch.cat([query_ids, response], dim=1)
    attention = torch.cat([query_mask, mask], dim=1)
    q = query_ids.shape[1]
    args = (sequence, attention, q, sampling.temperature)
    with recording(policy, trunk_depth if trunk is None else 0) as recorded:
        dist = _response_distributions(policy, *args, trunk=trunk)
    trunk = trunk or (recorded[0] if recorded else None)
    logprobs = _token_logprobs(dist, response)
    if not exact_kl:
        dist = None  # freed before the reference's forward
    ref_dist = _response_distributions(reference, *args, trunk=trunk)
    ref_logprobs = _token_logprobs(ref_dist, response)
    kl = None
    if exact_kl:  # row by row: kl_exact's (1, t, v) temporaries instead of (b, t, v) ones
        rows = zip(dist.split(1), ref_dist.split(1), strict=True)
        kl = torch.cat([kl_exact(d, r) for d, r in rows]) * mask
    kept = ref_dist if keep_reference else None
    return Sampled(sequence, attention, q, response, mask, logprobs, ref_logprobs, kl, trunk, kept)


def token_scores(
    scalar_model, sequence: Tensor, attention_mask: Tensor, trunk: TrunkStates | None = None
) -> Tensor:
    """A sequence-classification model's scalar head applied at every position. (b, L) -> (b, L).

    The reward model's score for a response is the entry at its last token (EOS); the value of the
    state before response token i is the entry at position q - 1 + i. `trunk`: as for
    `response_logprobs`.
    """
    if hasattr(scalar_model, "get_base_model"):  # a peft model: LoRA layers are injected in place
        scalar_model = scalar_model.get_base_model()
    backbone = getattr(scalar_model, scalar_model.base_model_prefix)
    with starting_at(backbone, trunk):
        hidden = backbone(**_forward_inputs(sequence, attention_mask)).last_hidden_state
    return scalar_model.score(hidden).squeeze(-1).float()


def decode(tokenizer, response_ids: Tensor, mask: Tensor) -> list[str]:
    return [
        tokenizer.decode(ids[m.bool()], skip_special_tokens=True).strip()
        for ids, m in zip(response_ids, mask, strict=True)
    ]


def sample_texts(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    sampling: SamplingConfig,
    batch_size: int,
    greedy: bool = False,
    desc: str = "generating",
) -> list[str]:
    """Generate one response per prompt, in batches, showing progress (in prompts) as `desc`."""
    stops = stop_token_ids(model)
    texts: list[str] = []
    with Progress(desc, len(prompts)) as progress:
        for start in range(0, len(prompts), batch_size):
            ids, mask = encode_prompts(tokenizer, prompts[start : start + batch_size], model.device)
            response = generate(model, ids, mask, sampling, greedy=greedy)
            texts.extend(decode(tokenizer, response, response_mask(response, stops)))
            progress.update(len(texts))
    return texts
