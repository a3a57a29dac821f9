"""A frozen trunk shared by every PPO model: its bottom layers run once per rollout batch.

With LoRA on the top N decoder layers only (`lora.top_layers`), the policy, its reference (the
adapter off), the critic and the reward models, all grown from one base by top-layer adapters,
hold the same embeddings and bottom layers bit for bit. Their hidden states entering the first
layer that differs are then one tensor per rollout batch, recorded while the policy samples
(generate's own forward passes, `generated_trunk`): every pass after sampling (policy and
reference log-probs, values, rewards, each PPO epoch's policy and critic passes) starts there and
runs the top layers only. The result is the same up to float rounding; on SmolLM2-135M with the
top 8 of 30 layers adapted, the forward work after sampling falls to about a quarter.

Whether the models share a trunk, and how deep, is measured (`shared_depth`), never assumed: a
full fine-tune, a reward model trained in full, or weights that differ anywhere below give a
shallower trunk or none, and the forward passes run whole as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from alignflow.models import decoder_layers


@dataclass
class TrunkStates:
    """The hidden states (b, L, d) entering decoder layer `depth`, one row per sequence."""

    depth: int
    hidden: Tensor

    def __getitem__(self, rows: Tensor) -> TrunkStates:
        return TrunkStates(self.depth, self.hidden[rows])


def _unwrapped(model) -> nn.Module:
    """The nn.Module under a DisabledAdapter (the LoRA reference)."""
    return getattr(model, "peft_model", model)


def layer_stack(model) -> nn.ModuleList:
    """The model's ModuleList of decoder layers (`models.decoder_layers`)."""
    module = _unwrapped(model)
    name, _ = decoder_layers(module, "ppo shared trunk")
    return module.get_submodule(name)


def _trunk_tensors(model, depth: int) -> list[Tensor]:
    """Everything that decides the hidden states entering layer `depth`: the input embeddings,
    the bottom `depth` layers' parameters and buffers, and the backbone's own buffers (rotary
    frequencies) outside the layer stack."""
    module = _unwrapped(model)
    stack_name, _ = decoder_layers(module, "ppo shared trunk")
    stack = module.get_submodule(stack_name)
    tensors = [module.get_input_embeddings().weight]
    for layer in stack[:depth]:
        tensors += [*layer.parameters(), *layer.buffers()]
    tensors += [b for name, b in module.named_buffers() if not name.startswith(stack_name)]
    return tensors


def _trains(layer: nn.Module) -> bool:
    return any(param.requires_grad for param in layer.parameters())


def _same(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def shared_depth(models: Sequence) -> int:
    """How many bottom decoder layers every model in `models` holds frozen and identical (input
    embeddings and the backbone's buffers included): 0 when none, or when a model's layer stack
    cannot be found."""
    try:
        stacks = [layer_stack(model) for model in models]
    except ValueError:
        return 0
    count = min(len(stack) for stack in stacks)
    depth = 0
    while depth < count and not any(_trains(stack[depth]) for stack in stacks):
        depth += 1
    # the largest frozen depth at which every model's trunk equals the first model's
    while depth > 0:
        first = _trunk_tensors(models[0], depth)
        if all(_same(first, _trunk_tensors(model, depth)) for model in models[1:]):
            return depth
        depth -= 1
    return 0


def _hidden_argument(args: tuple, kwargs: dict) -> Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


class _Passthrough(nn.Module):
    """A skipped decoder layer: returns the hidden states it is given."""

    def forward(self, *args, **kwargs) -> Tensor:
        return _hidden_argument(args, kwargs)


@contextmanager
def recording(model, depth: int) -> Iterator[list[TrunkStates]]:
    """Within: each forward pass of `model` appends the hidden states entering layer `depth` to
    the yielded list (detached). Nothing is recorded when depth is 0."""
    recorded: list[TrunkStates] = []
    if depth == 0:
        yield recorded
        return

    def record(_module, args, kwargs):
        recorded.append(TrunkStates(depth, _hidden_argument(args, kwargs).detach()))

    handle = layer_stack(model)[depth].register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield recorded
    finally:
        handle.remove()


class _Recorded(Exception):
    """Raised once the bottom layers have run: the rest of the pass is not needed."""


def generated_trunk(
    model, steps: list[TrunkStates], cache, sequences: Tensor, query_mask: Tensor
) -> TrunkStates | None:
    """The trunk states of `sequences` (b, q + t) from those `recording` got during `generate`:
    the prompt's from its first pass, then one position per new token fed back. The last token is
    never fed back: its states come from one more step through the bottom layers only, on
    generate's KV cache (`cache`). None when the recorded positions do not add up to the
    sequences (a caller then records them in a full pass).

    Positions after a row's EOS were fed as pad tokens attended to, unlike in scoring passes (the
    attention mask is 0 there); nothing reads them: losses, values and scores stop at EOS."""
    width, query_len = sequences.shape[1], query_mask.shape[1]
    if not steps or cache is None or sum(s.hidden.shape[1] for s in steps) != width - 1:
        return None
    depth = steps[0].depth
    # generate's mask: every generated position attended to
    mask = torch.cat([query_mask, query_mask.new_ones(len(query_mask), width - query_len)], 1)
    last: list[Tensor] = []

    def stop(_module, args, kwargs):
        last.append(_hidden_argument(args, kwargs).detach())
        raise _Recorded

    handle = layer_stack(model)[depth].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(
            input_ids=sequences[:, -1:], attention_mask=mask,
            position_ids=mask.sum(-1, keepdim=True) - 1, past_key_values=cache, use_cache=True,
        )  # fmt: skip
    except _Recorded:
        pass
    finally:
        handle.remove()
    hidden = torch.cat([*(s.hidden for s in steps), *last], dim=1)
    return TrunkStates(depth, hidden) if hidden.shape[1] == width else None


@contextmanager
def starting_at(model, states: TrunkStates | None) -> Iterator[None]:
    """Within: `model`'s forward passes skip the bottom `states.depth` decoder layers and enter
    layer `states.depth` with `states.hidden`; the batch given to the model must be the one
    `states` was recorded on (same rows, same attention mask). No-op when `states` is None."""
    if states is None or states.depth == 0:
        yield
        return
    stack = layer_stack(model)
    bottom = [stack[index] for index in range(states.depth)]

    def enter(_module, args, kwargs):
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": states.hidden}
        return (states.hidden, *args[1:]), kwargs

    handle = stack[states.depth].register_forward_pre_hook(enter, with_kwargs=True)
    try:
        for index in range(states.depth):
            stack[index] = _Passthrough()
        yield
    finally:
        for index, layer in enumerate(bottom):
            stack[index] = layer
        handle.remove()
