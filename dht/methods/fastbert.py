"""BL3: FastBERT (Liu et al. 2020; spec §8): self-distilled exits after every layer, batched early exit.

Training takes a fine-tuned BL1 run, adds a classifier after every layer but the last (on the same
mean-pooled states as the final classifier), freezes everything else and trains those branches to match
the final classifier's distribution on the training texts (KL, no labels). Each branch starts as a copy
of the final classifier: they read states of the same width and pooling, and a freshly initialised
branch stays near-uniform for hundreds of steps at a fine-tuning learning rate (measured: with random
branches `dht bench --quick` never exited early at any speed). For the same reason the branches train
at a head's learning rate (``branch_lr``, 1e-3 by default, ``--branch-lr``), not the fine-tuning ``--lr``:
the pooled states of the lower layers vary little, so their classifiers need weights several times larger
than the final one's before their predictions become confident. Inference exits a sample at
the first layer whose normalised prediction entropy H(p) / log C is below ``speed``; at each layer the
samples still running are regrouped into one smaller batch. A sample's FLOPs are the layers it ran plus
every branch classifier it passed through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.data import Batch
from dht.flops import classifier_flops, full_forward_flops, full_train_flops, plan_forward_flops
from dht.methods.teacher import TeacherOptions, load_teacher_weights, teacher_dir
from dht.model import DynamicEncoder, ExecutionPlan
from dht.search.exits import normalised_entropy
from dht.training.config import RunConfig
from dht.training.hooks import BenchRun, Knob, Method, Prediction, StepResult, register
from dht.training.options import option

SPEEDS = (0.1, 0.5, 0.8)  # the bench's exit thresholds (FastBERT's paper reports this range)


@dataclass(frozen=True)
class FastBERTOptions(TeacherOptions):
    """BL3's settings."""

    speed: float = option(0.5, "exit at the first layer whose normalised entropy is below this, in [0, 1]",
                          inference=True)
    branch_lr: float = option(1e-3, "peak learning rate of the branch classifiers (> 0)")

    def __post_init__(self) -> None:
        if not 0 <= self.speed <= 1:
            raise ValueError(f"--speed must be in [0, 1], got {self.speed}")
        if not self.branch_lr > 0:
            raise ValueError(f"--branch-lr must be > 0, got {self.branch_lr}")


@torch.no_grad()
def early_exit_predict(model: DynamicEncoder, input_ids: Tensor, mask: Tensor, speed: float) -> tuple[Tensor, Tensor]:
    """Classify with early exit; return logits (B, C) and the number of layers each sample ran (B,)."""
    B, L = input_ids.shape[0], model.config.num_layers
    everything = tuple(range(model.config.num_heads))
    device = input_ids.device
    logits = torch.empty(B, model.config.num_classes, device=device)
    depth = torch.full((B,), L, dtype=torch.long, device=device)
    active = torch.arange(B, device=device)  # rows of the original batch still running
    h = model.embed(input_ids)
    for layer in range(L):
        h = model.layers[layer](h, mask[:, None, None, :], everything)
        if layer == L - 1:
            logits[active] = model.classify(h, mask)
            break
        branch = model.branches[layer](model.pool(h, mask))
        done = normalised_entropy(branch) < speed
        logits[active[done]] = branch[done]
        depth[active[done]] = layer + 1
        if done.all():
            break
        keep = ~done
        active, h, mask = active[keep], h[keep], mask[keep]
        T = int(mask.sum(1).max())  # the remaining samples may need less padding
        h, mask = h[:, :T], mask[:, :T]
    return logits, depth


@register
class FastBERTMethod(Method):
    """BL3: branch classifiers self-distilled from the final one; early-exit inference."""

    name = "fastbert"
    Options = FastBERTOptions
    # 0 never exits early, 1 exits at the first branch; the bench draws the speed curve at every tenth.
    knob = Knob("speed", dearest=0.0, cheapest=1.0, curve=tuple(i / 10 for i in range(11)))

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        super().__init__(model, run)
        self.options: FastBERTOptions
        self.branch_lr = self.options.branch_lr
        model.add_branch_classifiers()
        model.requires_grad_(False)
        model.branches.requires_grad_(True)

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        """One training run, evaluated at each of ``SPEEDS`` (the speed only decides where inference exits)."""
        return [BenchRun(f"fastbert-{s}", {"speed": s}, "fastbert", {"speed": s}) for s in SPEEDS]

    def initialise(self) -> None:
        load_teacher_weights(self.model, teacher_dir(self.options.teacher))
        self.model.branches_from_classifier()

    lr_flag = "--branch-lr"

    def peak_lr(self) -> float:
        return self.branch_lr

    def training_step(self, batch: Batch) -> StepResult:
        """Self-distillation: every branch matches the final classifier's distribution (KL)."""
        model, mask = self.model, batch.attention_mask
        everything = tuple(range(model.config.num_heads))
        with torch.no_grad():
            h = model.embed(batch.input_ids)
            pooled = []
            for layer in model.layers:
                h = layer(h, mask[:, None, None, :], everything)
                pooled.append(model.pool(h, mask))
            target = F.log_softmax(model.classifier(pooled[-1]), -1)
        losses = [F.kl_div(F.log_softmax(branch(p), -1), target, reduction="batchmean", log_target=True)
                  for branch, p in zip(model.branches, pooled)]
        lengths = mask.sum(1).tolist()
        branch_cost = 3 * classifier_flops(model.config) * len(model.branches)  # forward + both grads
        flops = sum(full_forward_flops(model.config, t) + branch_cost for t in lengths)
        full = sum(full_train_flops(model.config, t) for t in lengths)
        return StepResult(torch.stack(losses).mean(), flops, full)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        self.model.eval()
        logits, depth = early_exit_predict(self.model, batch.input_ids, batch.attention_mask, self.options.speed)
        return self._exit_prediction(batch, logits, depth.tolist())

    def _exit_prediction(self, batch: Batch, logits: Tensor, depth: list[int]) -> Prediction:
        """Logits of samples that exited after ``depth`` layers each, with what that cost: the layers
        run, every branch classifier passed, and the final classifier for those that reached the top."""
        config, L = self.model.config, self.model.config.num_layers
        flops, full = [], []
        for t, d in zip(batch.attention_mask.sum(1).tolist(), depth):
            branches = d if d < L else L - 1  # each branch passed costs one small classifier
            flops.append(plan_forward_flops(config, ExecutionPlan.first(d, config.num_heads), t, classify=d == L)
                         + branches * classifier_flops(config))
            full.append(full_forward_flops(config, t))
        return Prediction(logits, torch.tensor(flops, dtype=torch.float64), torch.tensor(full, dtype=torch.float64),
                          routes=[f"{d}L" for d in depth])

    def fixed_routes(self) -> list[str]:
        """Exit after layer 1, 2, ..., N_L."""
        return [f"{d}L" for d in range(1, self.model.config.num_layers + 1)]

    @torch.no_grad()
    def predict_route_batches(self, batches: Iterable[Batch], route: str) -> Iterator[tuple[Batch, Prediction]]:
        """Every sample exits after the route's layer, whatever its entropy."""
        self.model.eval()
        model, d = self.model, int(route.rstrip("L"))
        for batch in batches:
            mask = batch.attention_mask
            h = model.run_plan(model.embed(batch.input_ids), mask, ExecutionPlan.first(d, model.config.num_heads))
            head = model.classifier if d == model.config.num_layers else model.branches[d - 1]
            yield batch, self._exit_prediction(batch, model.classify(h, mask, head), [d] * len(batch))
