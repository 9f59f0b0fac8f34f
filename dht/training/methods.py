"""Training methods plug into the one loop through these hooks; the registry maps names to them.

A method decides, for a batch, what the network runs (its plans), what the loss is and what that
costs; the loop owns data order, optimisation, checkpoints, timing and reports. A new method is one
class and one ``register`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.data import Batch
from dht.flops import full_forward_flops, full_train_flops, plan_forward_flops, plan_train_flops
from dht.model import DynamicEncoder, ExecutionPlan
from dht.training.config import RunConfig


@dataclass
class StepResult:
    """What one training step computed and cost."""

    loss: Tensor  # scalar, to back-propagate
    flops: float  # FLOPs of the network that ran (paper-style)
    full_flops: float  # FLOPs the full model would have spent on the same tokens
    flops_all_in: float | None = None  # plus overheads (probes, bandits); None means equal to flops
    extra: dict[str, Any] = field(default_factory=dict)  # logged with the step
    records: list[dict[str, Any]] = field(default_factory=list)  # per-sample decisions (decisions.jsonl)

    @property
    def all_in(self) -> float:
        """FLOPs including overheads (equal to ``flops`` for methods without any)."""
        return self.flops if self.flops_all_in is None else self.flops_all_in


@dataclass
class Prediction:
    """Logits for an evaluation batch and what they cost, per sample."""

    logits: Tensor  # (B, C)
    flops: Tensor  # (B,) FLOPs that ran for each sample
    full_flops: Tensor  # (B,) the full model's FLOPs on the same tokens
    flops_all_in: Tensor | None = None  # (B,) plus overheads; None means equal to flops
    routes: list[str] | None = None  # per sample, the path it took ('4L12H', FastBERT's exit '3L'); None: one path

    @property
    def all_in(self) -> Tensor:
        """Per-sample FLOPs including overheads (equal to ``flops`` for methods without any)."""
        return self.flops if self.flops_all_in is None else self.flops_all_in


class Method:
    """Base hooks: the full model on every sample (BL1). Subclasses override what differs."""

    name = "full"

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        self.model = model
        self.run = run

    @property
    def device(self) -> torch.device:
        """Where the network's weights are; batches are moved there (bandit statistics stay on the CPU)."""
        return next(self.model.parameters()).device

    def initialise(self) -> None:
        """Set up weights before training (e.g. copy a teacher's); a resumed run's checkpoint is loaded
        afterwards, and a saved run that is only evaluated never calls this."""

    # --- training ----------------------------------------------------------------------
    def peak_lr(self) -> float:
        """The peak of the learning-rate schedule: the run's --lr (FastBERT's new heads use their own)."""
        return self.run.train.lr

    def training_batches(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Turn the loader's batches into the batches that are trained on (DHT re-queues them)."""
        return batches

    def plans(self, batch: Batch) -> ExecutionPlan | list[ExecutionPlan]:
        """The plan(s) the batch runs during training."""
        return self.model.full_plan()

    def training_step(self, batch: Batch) -> StepResult:
        """Forward one batch and return its loss and cost."""
        plans = self.plans(batch)
        logits = self.model(batch.input_ids, batch.attention_mask, plans)
        loss = F.cross_entropy(logits, batch.labels)
        flops, full = self.train_cost(batch, plans)
        return StepResult(loss, flops, full)

    def train_cost(self, batch: Batch, plans: ExecutionPlan | list[ExecutionPlan]) -> tuple[float, float]:
        """Analytic training FLOPs of the batch under ``plans`` and under the full model."""
        config, frozen = self.model.config, self.model.frozen_layers()
        embeddings_trainable = any(p.requires_grad for p in self.model.embeddings.parameters())
        lengths = batch.attention_mask.sum(1).tolist()
        per_sample = plans if isinstance(plans, list) else [plans] * len(lengths)
        flops = sum(plan_train_flops(config, plan, tokens, frozen, embeddings_trainable)
                    for plan, tokens in zip(per_sample, lengths))
        return flops, sum(full_train_flops(config, tokens) for tokens in lengths)

    def on_epoch_start(self, epoch: int, train_ids: list[list[int]], pad_id: int) -> None:
        """Called before each epoch with the training token ids (DHT recomputes its arm features)."""

    def loader_start(self, batches_done: int) -> int:
        """Loader batches to skip when resuming mid-epoch (methods that re-queue samples track their own)."""
        return batches_done

    def report(self, output: Path) -> dict[str, Any]:
        """Write method-specific plots into the run folder; return extra entries for metrics.json."""
        return {}

    # --- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        """Logits of an evaluation batch and their cost per sample (eval mode: no dropout)."""
        self.model.eval()
        plan = self.plans(batch)
        logits = self.model(batch.input_ids, batch.attention_mask, plan)
        return Prediction(logits, *forward_costs(self.model, batch, [plan] * len(batch)))

    def predict_batches(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Prediction]]:
        """Predict a stream of evaluation batches; yields (batch, prediction) pairs, where a method
        may regroup the samples (DHT queues them by depth) so a yielded batch need not be one given."""
        for batch in batches:
            yield batch, self.predict(batch)

    # --- state beyond the network's weights (bandits, normalisers) ---------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def forward_costs(model: DynamicEncoder, batch: Batch, plans: list[ExecutionPlan]) -> tuple[Tensor, Tensor]:
    """Per-sample forward FLOPs (B,) of ``plans`` and of the full model on the batch's tokens."""
    lengths = batch.attention_mask.sum(1).tolist()
    config = model.config
    flops = torch.tensor([plan_forward_flops(config, plan, t) for plan, t in zip(plans, lengths)], dtype=torch.float64)
    full = torch.tensor([full_forward_flops(config, t) for t in lengths], dtype=torch.float64)
    return flops, full


METHODS: dict[str, Callable[[DynamicEncoder, RunConfig], Method]] = {}


def register(name: str, factory: Callable[[DynamicEncoder, RunConfig], Method]) -> None:
    """Make a method available as ``dht train --method NAME``."""
    METHODS[name] = factory


def make_method(model: DynamicEncoder, run: RunConfig) -> Method:
    """Instantiate the run's method; unknown names are a ValueError listing the known ones."""
    if run.method not in METHODS:
        raise ValueError(f"unknown method {run.method!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[run.method](model, run)


register("full", Method)
