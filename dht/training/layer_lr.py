"""Learning rates per encoder layer that make up for the steps a layer sat out (ours, for DHT).

Under DHT, a layer above the shallowest exit receives gradients only in the steps whose samples reach it
(``bench/replay_batches.py``: on AG News 8-20% of the steps reach layers 5-6), and AdamW leaves a parameter
without a gradient untouched. Its weights therefore move far less than BL1's in the same run. Here each
layer's learning rate is the schedule's times ``min(cap, steps / steps that updated the layer)``, counted
from the run's start: a layer every step reaches keeps the schedule's rate, one reached by a fifth of them
takes up to five times it. Adam's steps are about the learning rate in size, whatever the gradient's scale,
so this restores the layer's total movement, not the size of its gradients.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

LAYER_NAME = re.compile(r"^layers\.(\d+)\.")  # DynamicEncoder's parameter names: layers.{i}.…


def layer_group(name: str) -> str:
    """The learning-rate group of a DynamicEncoder parameter: ``layer{i}`` for layer i's, "" otherwise."""
    found = LAYER_NAME.match(name)
    return f"layer{found.group(1)}" if found else ""


class LayerLR:
    """The per-layer learning-rate factors ``min(cap, steps / updates_i)`` of a model's encoder layers.

    ``observe(model)`` after each backward counts the layers whose parameters received a gradient
    (``grad is not None``: the loop zeroes gradients to None, so a layer no sample reached has none);
    ``apply(optimizer)`` writes each layer group's factor into its ``lr_scale``, which the loop multiplies
    into the schedule's rate. Raises ValueError for a cap below 1.
    """

    def __init__(self, num_layers: int, cap: float) -> None:
        if not 1 <= cap < float("inf"):
            raise ValueError(f"the learning-rate cap must be finite and >= 1, got {cap}")
        self.cap = cap
        self.steps = 0
        self.updates = [0] * num_layers

    def observe(self, model: nn.Module) -> None:
        """Count one step and, per layer, whether any of its parameters received a gradient."""
        self.steps += 1
        for i, layer in enumerate(model.layers):
            if any(p.grad is not None for p in layer.parameters()):
                self.updates[i] += 1

    def factors(self) -> list[float]:
        """Per layer, ``min(cap, steps / updates)``; 1 before the first step, ``cap`` for a layer never
        updated yet."""
        return [1.0 if self.steps == 0 else min(self.cap, self.steps / u) if u else self.cap
                for u in self.updates]

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        """Set each layer group's ``lr_scale`` (groups named ``layer{i}`` by ``layer_group``)."""
        factors = self.factors()
        for group in optimizer.param_groups:
            name = group.get("lr_group", "")
            if name.startswith("layer"):
                group["lr_scale"] = factors[int(name[len("layer"):])]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "updates": list(self.updates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.updates = int(state["steps"]), [int(u) for u in state["updates"]]
