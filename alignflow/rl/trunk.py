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


def _inputs(model) -> list[Tensor]:
    """What the trunk's layers see besides their own weights: the input embeddings and the
    backbone's buffers outside the layer stack (rotary frequencies)."""
    module = _unwrapped(model)
    stack_name, _ = decoder_layers(module, "ppo shared trunk")
    buffers = [b for name, b in module.named_buffers() if not name.startswith(stack_name)]
    return [module.get_input_embeddings().weight, *buffers]


def _tensors(layer: nn.Module) -> list[Tensor]:
    return [*layer.parameters(), *layer.buffers()]


def _trains(layer: nn.Module) -> bool:
    return any(param.requires_grad for param in layer.parameters())


def _same(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def shared_depth(models: Sequence) -> int:
    """How many bottom decoder layers every model in `models` holds frozen and identical (with
    the same input embeddings, frozen too, and backbone buffers), confirmed by a probe (`_agrees`):
    0 when none, when a model's layer stack cannot be found, or when the probe disagrees. At most
    one layer fewer than the shallowest model has: a layer must be left to start at."""
    try:
        stacks = [layer_stack(model) for model in models]
    except ValueError:
        return 0
    inputs = [_inputs(model) for model in models]
    if any(embeddings.requires_grad for embeddings, *_ in inputs) or not all(
        _same(inputs[0], other) for other in inputs[1:]
    ):
        return 0
    count = min(len(stack) for stack in stacks)
    depth = 0
    while depth < count - 1 and not any(_trains(stack[depth]) for stack in stacks):
        first = _tensors(stacks[0][depth])
        if not all(_same(first, _tensors(stack[depth])) for stack in stacks[1:]):
            break
        depth += 1
    return depth if depth and all(_agrees(models[0], model, depth) for model in models) else 0


@torch.no_grad()
def _output(model, ids: Tensor) -> Tensor:
    ones = torch.ones_like(ids)
    out = model(input_ids=ids, attention_mask=ones, position_ids=ones.cumsum(-1) - 1)
    return out.logits.float()


def _agrees(source, model, depth: int) -> bool:
    """Whether `model` started at layer `depth` on `source`'s trunk gives what its whole pass
    gives, on a few tokens: the weights compared equal, this checks what they do not say (a
    setting in the config, a layer that carries state to the next)."""
    ids = torch.arange(1, 9, device=_unwrapped(source).device).repeat(2, 1)
    try:
        with recording(source, depth) as recorded:
            _output(source, ids)
        whole = _output(model, ids)
        with starting_at(model, recorded[0]):
            part = _output(model, ids)
    except Exception:  # noqa: BLE001 - a model the trunk cannot start inside runs whole
        return False
    return bool(torch.allclose(part, whole, rtol=1e-3, atol=1e-3))


def _hidden_argument(args: tuple, kwargs: dict) -> Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


class _Passthrough(nn.Module):
    """A skipped decoder layer: returns the hidden states it is given. Keeps the attributes a
    model's layer loop may read off its layers."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        for name in ("attention_type", "layer_type", "layer_idx", "is_sliding"):
            if hasattr(layer, name):
                setattr(self, name, getattr(layer, name))

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
        # a copy: a compiled generate (static cache) reuses its output buffers
        recorded.append(TrunkStates(depth, _hidden_argument(args, kwargs).detach().clone()))

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
    if any(s.hidden.shape[0] != len(sequences) for s in steps):  # beams: rows reordered
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
            stack[index] = _Passthrough(bottom[index])
        yield
    finally:
        for index, layer in enumerate(bottom):
            stack[index] = layer
        handle.remove()
