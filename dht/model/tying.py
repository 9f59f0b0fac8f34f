"""Dynamic layer tying's weight operations (``../shared/spec/layer_tying.md`` §3).

The tying state s has one entry per layer: s[i] is the layer whose weights layer i computes with, always
a root (s[s[i]] = s[i]); s[i] = i means layer i is independent, and s[0] = 0 always.

- ``tie_layer`` (rule 1): layer i's parameters alias its root's storage; the layers that used i's weights
  are re-pointed to that root; i's AdamW moments are freed.
- ``untie_layer`` (rule 2): a real copy of the root's current weights, fresh moments.
- Gradients (rule 3): ``source_only`` (the authors' code) turns a tied layer's ``requires_grad`` off, so
  its position passes input gradients but its weights learn only at the root's own position; ``shared``
  (ALBERT-style) keeps them on and ``fold_shared_gradients`` adds each tied position's weight gradient
  into its root's before the optimizer step, so the root learns from every position that uses it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

TIE_GRADIENTS = ("source_only", "shared")


def layer_parameters(model: nn.Module, layer: int) -> list[nn.Parameter]:
    """Layer ``layer``'s parameters, in a fixed order (the same for every layer)."""
    return list(model.layers[layer].parameters())


def root_of(state: Sequence[int], layer: int) -> int:
    """Follow s from ``layer`` until a layer that uses its own weights."""
    while state[layer] != layer:
        layer = state[layer]
    return layer


def _free_moments(optimizer: torch.optim.Optimizer | None, parameters: list[nn.Parameter]) -> None:
    if optimizer is not None:
        for p in parameters:
            optimizer.state.pop(p, None)  # AdamW starts fresh moments (step 0) when it next updates p


def _alias(model: nn.Module, layer: int, root: int, tie_gradients: str) -> None:
    for mine, theirs in zip(layer_parameters(model, layer), layer_parameters(model, root)):
        mine.data = theirs.data  # same storage: the layer computes with the root's current weights
        mine.requires_grad_(tie_gradients == "shared")
        mine.grad = None


def tie_layer(model: nn.Module, state: list[int], layer: int, target: int, tie_gradients: str = "source_only",
              optimizer: torch.optim.Optimizer | None = None) -> list[int]:
    """Tie ``layer`` to ``target`` < ``layer`` (rule 1); returns the new state. Raises ValueError for a
    target that is not an earlier layer, or layer 0."""
    if not 0 <= target < layer < len(state):
        raise ValueError(f"layer {layer} can tie only to an earlier layer, not {target}")
    state = list(state)
    root = root_of(state, target)
    dependents = [k for k in range(len(state)) if k != layer and state[k] == layer]
    _free_moments(optimizer, layer_parameters(model, layer))
    _alias(model, layer, root, tie_gradients)
    state[layer] = root
    for k in dependents:  # they used layer's weights: now its root's (the same values)
        _alias(model, k, root, tie_gradients)
        state[k] = root
    return state


def untie_layer(model: nn.Module, state: list[int], layer: int, optimizer: torch.optim.Optimizer | None = None
                ) -> list[int]:
    """Make ``layer`` independent (rule 2): a copy of its root's current weights, trainable, with fresh
    AdamW moments; returns the new state (unchanged if it was independent)."""
    state = list(state)
    if state[layer] == layer:
        return state
    for mine, theirs in zip(layer_parameters(model, layer), layer_parameters(model, state[layer])):
        mine.data = theirs.data.clone()
        mine.requires_grad_(True)
        mine.grad = None
    _free_moments(optimizer, layer_parameters(model, layer))
    state[layer] = layer
    return state


def apply_state(model: nn.Module, state: Sequence[int], tie_gradients: str = "source_only") -> None:
    """Re-alias the layers of a saved state onto their roots (after loading weights saved as copies)."""
    for layer, root in enumerate(state):
        if root != layer:
            if state[root] != root:
                raise ValueError(f"tying state {list(state)}: layer {layer} points at {root}, which is not a root")
            _alias(model, layer, root, tie_gradients)


@torch.no_grad()
def fold_shared_gradients(model: nn.Module, state: Sequence[int]) -> None:
    """``shared`` gradients: add each tied layer's weight gradients into its root's and drop them, so that
    the root's gradient is the sum over the positions that use it."""
    for layer, root in enumerate(state):
        if root == layer:
            continue
        for mine, theirs in zip(layer_parameters(model, layer), layer_parameters(model, root)):
            if mine.grad is not None:
                theirs.grad = mine.grad.clone() if theirs.grad is None else theirs.grad.add_(mine.grad)
                mine.grad = None


def unique_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The tensors with distinct storage (tied layers' parameters share their root's)."""
    seen: set[int] = set()
    unique = []
    for tensor in tensors:
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in seen:
            seen.add(pointer)
            unique.append(tensor)
    return unique


def trainable_elements(model: nn.Module) -> int:
    """Elements of the parameters that train (``requires_grad``), each storage counted once (spec §5)."""
    return sum(p.numel() for p in unique_tensors([p for p in model.parameters() if p.requires_grad]))
