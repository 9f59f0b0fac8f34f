"""BL2: DistilBERT-style students (spec §8; paper §6.2).

A student of N layers starts from N uniformly spaced layers of the fine-tuned BL1 teacher (every
other one for N = N_L / 2, as DistilBERT), with the teacher's embeddings and classifier, and trains on
the teacher's soft targets plus the hard labels. It is run as a plan over those layers of one encoder:
the student's computation and cost are those of an N-layer model, and its FLOP ratio is measured
against the full model by the same counter as every other method.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.data import Batch
from dht.flops import full_forward_flops
from dht.methods.teacher import TeacherOptions, load_teacher_weights, teacher_dir
from dht.model import DynamicEncoder, ExecutionPlan
from dht.training.config import RunConfig
from dht.training.hooks import BenchRun, Method, StepResult, register
from dht.training.options import option


@dataclass(frozen=True)
class DistilOptions(TeacherOptions):
    """BL2's settings."""

    layers: int | None = option(None, "student depth (default: half the teacher's layers)")
    temperature: float = option(2.0, "distillation temperature T (> 0)")
    alpha: float = option(0.5, "weight of the soft-target loss against the labels' (in [0, 1])")

    def __post_init__(self) -> None:
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"--layers must be >= 1, got {self.layers}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"--alpha must be in [0, 1], got {self.alpha}")


def student_layers(num_layers: int, depth: int) -> tuple[int, ...]:
    """Uniformly spaced teacher layers for a ``depth``-layer student, starting at the bottom."""
    if not 1 <= depth <= num_layers:
        raise ValueError(f"--layers must be in 1..{num_layers}, got {depth}")
    return tuple(i * num_layers // depth for i in range(depth))


def distillation_loss(student: Tensor, teacher: Tensor, labels: Tensor, temperature: float, alpha: float) -> Tensor:
    """α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α)·CE(student, labels) (Hinton et al. 2015)."""
    soft = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                    reduction="batchmean", log_target=True)
    return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(student, labels)


@register
class DistilMethod(Method):
    """BL2: a student over uniformly spaced teacher layers, distilled from the teacher's logits."""

    name = "distil"
    Options = DistilOptions

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        super().__init__(model, run)
        self.options: DistilOptions
        depth = self.options.layers or model.config.num_layers // 2
        layers = student_layers(model.config.num_layers, depth)
        self.plan = ExecutionPlan(layers, (tuple(range(model.config.num_heads)),) * len(layers))
        self.temperature, self.alpha = self.options.temperature, self.options.alpha
        self.teacher: DynamicEncoder | None = None

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        """Students of 1, 3 and N_L / 2 layers (the paper's BL2 and two more points on the front)."""
        depths = sorted({1, min(3, num_layers), max(1, num_layers // 2)})
        return [BenchRun(f"distil-{d}", {"layers": d}) for d in depths]

    def initialise(self) -> None:
        """Start the student from the teacher; keep a frozen copy of the teacher for its soft targets."""
        load_teacher_weights(self.model, teacher_dir(self.options.teacher))
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)

    def plans(self, batch: Batch) -> ExecutionPlan:
        return self.plan

    def export_layers(self) -> tuple[int, ...]:
        return self.plan.layers

    def training_step(self, batch: Batch) -> StepResult:
        logits = self.model(batch.input_ids, batch.attention_mask, self.plan)
        with torch.no_grad():
            targets = self.teacher(batch.input_ids, batch.attention_mask)
        loss = distillation_loss(logits, targets, batch.labels, self.temperature, self.alpha)
        flops, full = self.train_cost(batch, self.plan)
        teacher = sum(full_forward_flops(self.model.config, t) for t in batch.attention_mask.sum(1).tolist())
        return StepResult(loss, flops, full, flops_all_in=flops + teacher)

