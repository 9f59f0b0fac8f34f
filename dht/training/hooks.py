"""The hooks through which a method plugs into the one loop, and the registry that names methods.

A method decides, for a batch, what the network runs (its plans), what the loss is and what that
costs; the loop owns data order, optimisation, checkpoints, timing and reports. A new method is one
module in ``dht/methods/`` holding a ``Method`` subclass with its ``Options`` dataclass, decorated
with ``@register``. This module imports no method: the methods register themselves when
``dht.methods`` is imported (the CLI and the bench do), so the loop never depends on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dht.data import Batch
from dht.flops import full_forward_flops, full_train_flops, plan_forward_flops, plan_train_flops
from dht.model import DynamicEncoder, ExecutionPlan
from dht.training.config import RunConfig, TrainConfig
from dht.training.distributed import World
from dht.training.options import MethodOptions


class NonFiniteError(ValueError):
    """A training step met a value that is not finite (a loss, a gradient, the weights, a method's
    states); the loop stops the run before anything of that step is saved."""


@dataclass
class StepResult:
    """What one training step computed and cost."""

    loss: Tensor  # scalar, to back-propagate
    flops: float  # FLOPs of the network that ran (paper-style)
    full_flops: float  # FLOPs the full model would have spent on the same tokens
    flops_all_in: float | None = None  # plus overheads (probes, bandits); None means equal to flops
    extra: dict[str, Any] = field(default_factory=dict)  # logged with the step
    records: list[dict[str, Any]] = field(default_factory=list)  # per-sample decisions (decisions.jsonl)
    # Under torchrun, for a method that shards its own batches (``Method.shards_itself``): the samples of
    # the global batch this rank's ``loss`` averages; FLOPs and records are then the global batch's.
    shard: int | None = None

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


@dataclass(frozen=True)
class BenchRun:
    """A run a method contributes to ``dht bench``: its row name, its options, the run folder it trains
    (rows that differ only in inference options share one) and the inference options it is evaluated
    with. A method whose options have a ``teacher`` gets the bench's BL1 run as its teacher."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    folder: str = ""
    overrides: dict[str, Any] | None = None
    method: str = ""  # the registered method's name, filled in by the bench
    oracles: bool = True  # the bench scores its oracle routers (for a method with routes)

    @property
    def run(self) -> str:
        return self.folder or self.name


@dataclass(frozen=True)
class Knob:
    """An inference option that trades accuracy for cost, for ``dht evaluate RUN --budget R``: the run's
    inference FLOP ratio falls (weakly) as the option moves from ``dearest`` to ``cheapest``. ``curve``:
    the values ``dht bench`` evaluates each trained run at, its operating points on the Pareto plots."""

    option: str
    dearest: float
    cheapest: float
    curve: tuple[float, ...] = ()


class Method:
    """Base hooks: the full model on every sample, as BL1 trains it. Subclasses override what differs."""

    name: ClassVar[str] = ""  # ``--method NAME``
    title: ClassVar[str] = ""  # how tables name its rows ("BL1 (full model)"); default: the row's name
    Options: ClassVar[type[MethodOptions]] = MethodOptions  # its settings (none by default)
    knob: ClassVar[Knob | None] = None  # its accuracy-for-cost knob at inference, if it has one

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        self.model = model
        self.run = run
        self.options = self.Options.from_dict(run.options, self.name)

    @classmethod
    def knob_for(cls, options: dict[str, Any]) -> Knob | None:
        """The knob of a run whose options (its run.json's, with an evaluation's overrides) are
        ``options``; by default the method's one (``knob``)."""
        return cls.knob

    @property
    def active_knob(self) -> Knob | None:
        """This run's knob under its current options (``knob_for``)."""
        return type(self).knob_for(self.options.to_dict())

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        """The runs ``dht bench`` trains for this method on a backbone of ``num_layers`` layers."""
        return [BenchRun(cls.name)]

    route_legend = ""  # what a route's name means, where it is not DHT's 4L12H or FastBERT's 3L (dht train's line)

    @classmethod
    def row_title(cls, row: str) -> str:
        """A table row's label for one of this method's runs (``row`` is its bench name)."""
        return cls.title or row

    @property
    def device(self) -> torch.device:
        """Where the network's weights are; batches are moved there (bandit statistics stay on the CPU)."""
        return next(self.model.parameters()).device

    def check_training_rows(self, rows: int) -> None:
        """Refuse settings that do not fit a training split of ``rows`` rows (ValueError naming the flag);
        called when a fresh run is prepared, before anything is written."""

    def initialise(self) -> None:
        """Set up weights before training (e.g. copy a teacher's); a resumed run's checkpoint is loaded
        afterwards, and a saved run that is only evaluated never calls this."""

    # --- training ----------------------------------------------------------------------
    def optimizer_parameters(self) -> list[nn.Parameter]:
        """The parameters AdamW is built over, once, before training: the trainable ones. A method that
        turns training on and off as it goes (layer tying) lists every parameter it may train."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called with the optimizer once it exists (and its state is loaded when resuming), for methods
        that change which parameters it holds moments for."""

    def on_train_start(self, ids: list[list[int]], labels: list[int], pad_id: int, total_steps: int) -> None:
        """Called once before the first step of this process (also when resuming) with the training
        split's token ids and labels and the run's number of optimizer steps."""

    def on_train_end(self, ids: list[list[int]], labels: list[int], pad_id: int) -> None:
        """Called once the last training step is done, before the final evaluation (again when a run
        stopped after its last checkpoint is resumed), with the training split (ACM calibrates its gates)."""

    def lr_group(self, name: str) -> str:
        """The learning-rate group of the model's parameter ``name`` (its ``lr_group`` in the optimizer):
        a method may set a group's ``lr_scale`` in ``after_backward`` to scale the schedule's rate for that
        step. "": the one group of every parameter."""
        return ""

    def after_backward(self) -> None:
        """Called between ``loss.backward()`` and gradient clipping (layer tying folds shared gradients)."""

    # The learning-rate schedule's clock: optimizer steps, or (True) the share of the training samples seen,
    # for a method whose number of steps per epoch is not known in advance (DHT's queues).
    schedule_by_samples: bool = False

    def group_lr(self, group: str, lr: float) -> float:
        """This step's learning rate for the optimizer group named ``group`` (``lr_group``), from the
        schedule's ``lr``; the group's ``lr_scale`` multiplies it. Default: the schedule's."""
        return lr

    def schedule_samples(self, total_samples: int) -> int:
        """With ``schedule_by_samples``: over how many of the run's ``total_samples`` the schedule runs to 0
        (past it the schedule's rate is 0, which ``group_lr`` may override; DHT's --full-depth-warmup).
        Default: all of them."""
        return total_samples

    # Under torchrun (dht/training/distributed.py): whether the method takes the global batches and trains on
    # its rank's rows itself (``world``; StepResult.shard), keeping state beside the weights identical on every
    # rank (DHT's bandits); else the loop gives it its rank's shard of each batch.
    shards_itself: ClassVar[bool] = False
    world: World = World()  # this process's place under torchrun; the loop sets it before training

    lr_flag: ClassVar[str] = "--lr"  # the flag of the learning rate ``peak_lr`` returns

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

    def extra_training_cost(self) -> tuple[float, float]:
        """FLOPs and seconds spent outside the loop's steps (ACM's conversion), added to the all-in cost."""
        return 0.0, 0.0

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
        return plan_prediction(self.model, batch, self.plans(batch))

    def predict_batches(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Prediction]]:
        """Predict a stream of evaluation batches; yields (batch, prediction) pairs, where a method
        may regroup the samples (DHT queues them by depth) so a yielded batch need not be one given."""
        for batch in batches:
            yield batch, self.predict(batch)

    def statistics(self) -> dict[str, Any]:
        """Method-specific statistics of the predictions made since the last call (ACM's learner usage),
        added to the split's scores; the call clears them."""
        return {}

    def set_inference_options(self, **changes: Any) -> None:
        """Change inference options (``inference=True`` fields) of a trained method, e.g. its knob;
        a ValueError for any other option, or an invalid value."""
        changeable = {field.name for field in self.Options.fields() if field.inference}
        if set(changes) - changeable:
            raise ValueError(f"method {self.name} has no inference option {', '.join(set(changes) - changeable)}")
        previous, self.options = self.options, self.options.replace(**changes)
        try:
            self.check_device()
        except ValueError:
            self.options = previous  # a refused change leaves the method as it was
            raise

    def export_layers(self) -> tuple[int, ...]:
        """The layers ``dht export`` writes, in order: those the run's full plan passes through (every layer
        by default; a BL2 student's own, since the teacher's other layers are not part of the student)."""
        return tuple(range(self.model.config.num_layers))

    def check_device(self) -> None:
        """Refuse options this device cannot run (ValueError naming the flag); called once the network is
        on its device, before anything is written or evaluated, and after each ``set_inference_options``."""

    def fixed_routes(self) -> list[str]:
        """The paths a sample can take at inference (DHT's arms, FastBERT's exits), shallowest first;
        none for a method with one path. The oracle rows of ``dht evaluate --oracle`` try each."""
        return []

    def predict_route_batches(self, batches: Iterable[Batch], route: str) -> Iterator[tuple[Batch, Prediction]]:
        """Like ``predict_batches``, but every sample takes ``route`` (one of ``fixed_routes``)."""
        raise NotImplementedError(f"method {self.name} has no fixed routes")

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


@torch.no_grad()
def plan_prediction(model: DynamicEncoder, batch: Batch, plan: ExecutionPlan) -> Prediction:
    """Every sample of ``batch`` through ``plan`` (eval mode: no dropout), with its per-sample cost."""
    model.eval()
    logits = model(batch.input_ids, batch.attention_mask, plan)
    return Prediction(logits, *forward_costs(model, batch, [plan] * len(batch)))


def in_batch_order(batch: Batch, parts: list[tuple[Batch, Prediction]]) -> Prediction:
    """One Prediction for ``batch`` from the parts a method regrouped its samples into (by ``index``),
    rows back in the batch's order."""
    position = {index: row for row, index in enumerate(batch.index.tolist())}
    rows = torch.tensor([position[index] for part, _ in parts for index in part.index.tolist()])
    merged = []
    for name in ("logits", "flops", "full_flops", "all_in"):
        values = torch.cat([getattr(prediction, name) for _, prediction in parts])
        merged.append(torch.empty_like(values).index_copy_(0, rows.to(values.device), values))
    routes = [""] * len(rows)
    for row, route in zip(rows.tolist(), (route for _, prediction in parts for route in prediction.routes or ())):
        routes[row] = route
    return Prediction(*merged, routes)


METHODS: dict[str, type[Method]] = {}  # in registration order: dht.methods registers BL1 first
M = TypeVar("M", bound=type[Method])


# Names of run settings and command-line flags that every method shares; an option may not take one.
RESERVED = {f.name for f in dataclasses.fields(RunConfig)} | {f.name for f in dataclasses.fields(TrainConfig)} | {
    "output", "resume", "device", "quiet", "budget", "oracle", "train_word_embeddings", "run_dir", "command"}


def register(method: M) -> M:
    """Class decorator: make a method available as ``dht train --method NAME`` and to ``dht bench``.

    Raises ValueError for a missing or taken name, and TypeError for an option the CLI cannot carry (a
    type other than bool, int, float or str, optionally ``| None``, or a reserved name)."""
    if not method.name or (method.name in METHODS and METHODS[method.name] is not method):
        raise ValueError(f"method {method.__name__} needs a name of its own, got {method.name!r}")
    for option in method.Options.fields():
        if option.base_type not in (bool, int, float, str) or option.name in RESERVED:
            raise TypeError(f"method {method.name}: option {option.name!r} of type {option.type} cannot be a "
                            "flag (types: bool, int, float, str; names other than the shared flags')")
        for other in METHODS.values():
            same = [f for f in other.Options.fields() if f.name == option.name and other is not method]
            if same and same[0].base_type is not option.base_type:
                raise TypeError(f"method {method.name}: option {option.name!r} is a {option.base_type.__name__}, "
                                f"but method {other.name} has it as a {same[0].base_type.__name__}")
    METHODS[method.name] = method
    return method


def method_type(name: str) -> type[Method]:
    """The registered method called ``name``; a ValueError listing the known ones otherwise."""
    if name not in METHODS:
        known = ", ".join(METHODS) or "none (import dht.methods to register the built-in ones)"
        raise ValueError(f"unknown method {name!r}; choose from {known}")
    return METHODS[name]


def make_method(model: DynamicEncoder, run: RunConfig) -> Method:
    """Instantiate the run's method on ``model``."""
    return method_type(run.method)(model, run)
