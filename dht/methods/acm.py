"""Adaptive Computation Modules (Wójcik et al., AAAI 2025; ``../shared/spec/acm.md``): every FFN of a trained
BL1 run becomes N learners and a per-token gate, converted in three phases and trained toward a budget β.

- Phase 1, learner distillation (paper eq. 3): the teacher runs frozen; each ACM learns, from the
  teacher's FFN inputs z and outputs o on real tokens, to make every partial sum h(z, n) match o.
- Phase 2, gate pre-training (eq. 4-6): learners frozen; each gate learns the label t of ``gate_labels``.
- Phase 3, end-to-end (eq. 7-12): the whole model, with hard Gumbel choices, trains on
  CE + α_b·L_b + α_e·L_e + α_d·L_d (``budget_loss``, ``entropy_loss``, ``diversity_loss``).

Phases 1-2 run in ``on_train_start`` (they need the training rows) with their own Adam optimisers; their
seconds, steps and FLOPs go into the run's all-in training cost (``extra_training_cost``). An interrupted
conversion starts again from phase 1; phase 3 resumes from its checkpoints like any run. Inference runs
each learner only on the tokens whose gate chose it. After the last step the gate bias λ0 is calibrated
so the gates' argmax spends β (``calibrate_gates``); ``--gate-bias λ`` (the ``--budget`` knob) lowers choice
n's logit by (λ0 + λ)·n, and ``--acm-k n`` runs n learners on every token with the gates off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.data import Batch
from dht.flops import acm_forward_flops, acm_train_flops, full_forward_flops, full_train_flops
from dht.methods.acm_conversion import convert
from dht.methods.teacher import TeacherOptions, teacher_dir, teacher_model
from dht.model import DynamicEncoder
from dht.model.acm import GATE_GRADS, ACMChoices
from dht.training.config import RunConfig
from dht.training.hooks import BenchRun, Knob, Method, Prediction, StepResult, register
from dht.training.options import option

BUDGETS = (0.25, 0.5, 0.75)  # the bench's β (the authors' script trains 0.25 .. 0.75)
HISTOGRAM_BINS = 20  # of the per-sample learner fraction over [0, 1]


@dataclass(frozen=True)
class ACMOptions(TeacherOptions):
    """ACM's settings (spec §7)."""

    beta: float = option(0.5, "β: the share of the learners' FLOPs to spend on average, in (0, 1)")
    learners: int = option(4, "N learners per FFN (must divide the FFN width)")
    temperature: float = option(0.8, "Gumbel-softmax temperature T of the gates in training (> 0)")
    gate_grad: str = option("straight_through", "how the task loss reaches the gates: straight_through "
                            "(all partial sums in training) or aux_only (the authors' code: gated, aux losses only)")
    learner_init: str = option("slices", "slices (the teacher's neurons by importance) or random (the paper)")
    distill_mode: str = option("joint", "phase 1: joint (every partial sum's loss reaches its learners) or "
                               "detach (learner n fits what learners 1..n-1 left; the authors' default)")
    distill_epochs: float = option(1.0, "phase 1 length in epochs (> 0)")
    gate_epochs: float = option(0.25, "phase 2 length in epochs (> 0)")
    alpha_b: float = option(1.0, "weight of the budget loss L_b (>= 0); 1, not the paper's 0.1: see docs/acm.md")
    alpha_e: float = option(0.05, "weight of the entropy loss L_e (>= 0)")
    alpha_d: float = option(0.05, "weight of the diversity loss L_d (>= 0)")
    calibrate: bool = option(True, "after training, set the gate bias λ0 at which the gates' argmax spends β of "
                             "the learners on 512 training rows (kept with the run; --gate-bias adds to it)")
    gate_bias: float = option(0.0, "λ: choice n's gate logit is lowered by (λ0 + λ)·n at inference (the --budget "
                              "knob)", inference=True)
    acm_k: int | None = option(None, "run this many learners on every token, gates off (the static ladder)",
                               inference=True)

    def __post_init__(self) -> None:
        if not 0 < self.beta < 1:
            raise ValueError(f"--beta must be in (0, 1), got {self.beta}")
        if self.learners < 1:
            raise ValueError(f"--learners must be >= 1, got {self.learners}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        choices = {"gate_grad": GATE_GRADS, "learner_init": ("slices", "random"), "distill_mode": ("joint", "detach")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("distill_epochs", "gate_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("alpha_b", "alpha_e", "alpha_d"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.acm_k is not None and not 0 <= self.acm_k <= self.learners:
            raise ValueError(f"--acm-k must be in 0..{self.learners}, got {self.acm_k}")


# --- phase 3's auxiliary losses (paper eq. 7-10, spec §4) ---------------------------------
def choice_counts(onehot: Tensor) -> Tensor:
    """k = Σ_n n·ν̂_n for hard one-hot choices (M, K) over k = 0..K-1, with their gradients -> (M,)."""
    return onehot @ torch.arange(onehot.shape[1], dtype=onehot.dtype, device=onehot.device)


def budget_loss(choices: list[ACMChoices], learners: int, beta: float) -> Tensor:
    """L_b = |Σ_{i,j,l} k_ijl p_l / Σ_{i,j,l} N p_l − β| over the batch's real tokens (eq. 7, pooled as the
    authors' code; every ACM here is an FFN, so p_l cancels)."""
    k = torch.cat([choice_counts(c.onehot) for c in choices])
    return (k.sum() / (learners * len(k)) - beta).abs()


def per_sample_mean(values: Tensor, sample: Tensor, batch: int) -> Tensor:
    """Mean of per-token values (M, ...) over each sample's tokens -> (B, ...)."""
    totals = values.new_zeros(batch, *values.shape[1:]).index_add(0, sample, values)
    counts = torch.bincount(sample, minlength=batch).clamp_min(1).to(values.dtype)
    return totals / counts.view(-1, *([1] * (values.dim() - 1)))


def entropy_loss(choices: list[ACMChoices]) -> Tensor:
    """L_e = −(1 / (|B|·L)) Σ_{i,l} H(a_il) / log K, a_il the share of sample i's real tokens taking each of
    the K choices in ACM l (eq. 8-9, normalised as the code): minimising it spreads the choices within a
    sample."""
    entropies = []
    for c in choices:
        a = per_sample_mean(c.onehot, c.sample, c.batch)  # (B, K)
        entropies.append(-(a * torch.log(a.clamp_min(1e-12))).sum(1) / math.log(a.shape[1]))
    return -torch.stack(entropies).mean()


def diversity_loss(choices: list[ACMChoices], learners: int) -> Tensor:
    """L_d = −(1/|B|²) Σ_{i,m} |b_i − b_m|, b_i = Σ_{j,l} k_ijl / Σ_{j,l} N, sample i's compute (eq. 10 with
    the code's sign: minimising it spreads the compute across samples)."""
    batch = choices[0].batch
    spent = sum(per_sample_mean(choice_counts(c.onehot), c.sample, batch) for c in choices) / (learners * len(choices))
    return -(spent[:, None] - spent[None, :]).abs().mean()


def learners_run(choices: list[ACMChoices]) -> Tensor:
    """Σ_j k_j per sample and ACM: (B, L) long."""
    return torch.stack([torch.zeros(c.batch, dtype=torch.long, device=c.k.device).index_add(0, c.sample, c.k)
                        for c in choices], 1)


@register
class ACMMethod(Method):
    """ACM (module docstring): converted from a BL1 teacher, trained toward the budget β."""

    name = "acm"
    Options = ACMOptions
    route_legend = "k: the learners a token runs per layer, the text's mean"
    # λ's range (added to the calibrated λ0); the bench's curve: on AG News acm-b50 spends 0.90 / 0.80 / 0.60 /
    # 0.51 of BL1's FLOPs at λ = −0.78 / −0.27 / 0.10 / 0.27 (bench/results/ag_news/acm/summary.json), so
    # these points span about 0.55-0.85.
    knob = Knob("gate_bias", dearest=-20.0, cheapest=20.0, curve=(-0.5, -0.25, 0.0, 0.25, 0.5, 1.0))

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        super().__init__(model, run)
        self.options: ACMOptions
        model.add_acms(self.options.learners)
        for acm in model.acms():
            acm.temperature, acm.gate_grad = self.options.temperature, self.options.gate_grad
        self.teacher: DynamicEncoder | None = None
        self.conversion: dict[str, Any] = {}  # per phase: seconds, steps, flops (empty until converted)
        self.calibration: dict[str, Any] = {}  # λ0 and how it was found (empty until calibrated)
        self.apply_inference_options()
        self.usage: list[Tensor] = []  # per prediction batch: (B, L + 1): learners run per layer, tokens
        self.k_counts: list[Tensor] = []  # per prediction batch: (L, K) tokens per layer and choice

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        return [BenchRun(f"acm-b{round(beta * 100)}", {"beta": beta}) for beta in BUDGETS]

    def set_inference_options(self, **changes: Any) -> None:
        super().set_inference_options(**changes)
        self.apply_inference_options()

    def apply_inference_options(self) -> None:
        bias = self.calibration.get("gate_bias", 0.0) + self.options.gate_bias
        for acm in self.model.acms():
            acm.gate_bias, acm.fixed_k = bias, self.options.acm_k

    # --- conversion (phases 1-2) ---------------------------------------------------------
    def initialise(self) -> None:
        """Copy the teacher's weights but its FFNs into the model; keep the teacher for phases 1-2."""
        self.teacher = teacher_model(teacher_dir(self.options.teacher), self.model.config.replace(acm_learners=0))
        self.teacher.to(self.device).eval().requires_grad_(False)
        dense = {key: value for key, value in self.teacher.state_dict().items()
                 if ".ffn_in." not in key and ".ffn_out." not in key}
        missing, unexpected = self.model.load_state_dict(dense, strict=False)
        if unexpected or any(".acm." not in key for key in missing):
            raise ValueError(f"{self.options.teacher}: the teacher's weights do not fit "
                             f"({missing[:3]}, {unexpected[:3]})")

    def on_train_start(self, ids: list[list[int]], labels: list[int], pad_id: int, total_steps: int) -> None:
        """Run phases 1-2 unless this run has done them (a resumed run has); then let the teacher go."""
        if not self.conversion:
            self.conversion = convert(self, ids, labels, pad_id)
        self.teacher = None

    def conversion_cost(self) -> tuple[float, float]:
        """FLOPs and seconds of phases 1-2."""
        phases = [self.conversion[p] for p in ("phase1", "phase2") if p in self.conversion]
        return sum(p["flops"] for p in phases), sum(p["seconds"] for p in phases)

    def extra_training_cost(self) -> tuple[float, float]:
        """FLOPs and seconds of phases 1-2 and of the calibration, added to the run's all-in training cost."""
        flops, seconds = self.conversion_cost()
        return flops + self.calibration.get("flops", 0.0), seconds + self.calibration.get("seconds", 0.0)

    def on_train_end(self, ids: list[list[int]], labels: list[int], pad_id: int) -> None:
        """With ``--calibrate``, set λ0 (``calibrate_gates``) so the argmax spends β of the learners."""
        if self.options.calibrate:
            self.calibration = calibrate_gates(self, ids, labels, pad_id)

    # --- phase 3 --------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> StepResult:
        logits = self.model(batch.input_ids, batch.attention_mask)
        choices = [acm.last for acm in self.model.acms()]
        o = self.options
        task = F.cross_entropy(logits, batch.labels)
        l_b = budget_loss(choices, o.learners, o.beta)
        l_e, l_d = entropy_loss(choices), diversity_loss(choices, o.learners)
        loss = task + o.alpha_b * l_b + o.alpha_e * l_e + o.alpha_d * l_d
        config, tokens = self.model.config, batch.attention_mask.sum(1).tolist()
        run = learners_run(choices).tolist()
        flops = sum(acm_train_flops(config, t, r, o.gate_grad) for t, r in zip(tokens, run))
        full = sum(full_train_flops(config, t) for t in tokens)
        fraction = sum(map(sum, run)) / (o.learners * len(choices) * sum(tokens))
        return StepResult(loss, flops, full, extra={"task_loss": task.item(), "l_b": l_b.item(), "l_e": l_e.item(),
                                                    "l_d": l_d.item(), "learner_fraction": fraction})

    # --- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        """Gated inference (each learner on the tokens that chose it); FLOPs per sample from its choices
        (gates counted unless ``--acm-k`` turns them off)."""
        self.model.eval()
        logits = self.model(batch.input_ids, batch.attention_mask)
        choices = [acm.last for acm in self.model.acms()]
        run = learners_run(choices).cpu()  # (B, L)
        tokens = batch.attention_mask.sum(1).cpu()
        self.usage.append(torch.cat([run, tokens[:, None]], 1))
        self.k_counts.append(torch.stack([torch.bincount(c.k, minlength=self.options.learners + 1).cpu()
                                          for c in choices]))  # (L, K)
        config, gated = self.model.config, self.options.acm_k is None
        flops = torch.tensor([acm_forward_flops(config, t, r, gated) for t, r in zip(tokens.tolist(), run.tolist())],
                             dtype=torch.float64)
        full = torch.tensor([full_forward_flops(config, t) for t in tokens.tolist()], dtype=torch.float64)
        mean_k = run.sum(1).double() / (tokens.double() * run.shape[1])
        return Prediction(logits, flops, full, routes=[f"k{k:.1f}" for k in mean_k.tolist()])

    def statistics(self) -> dict[str, Any]:
        """Learner usage over the predictions since the last call (spec §6): the realised fraction Σk / ΣN
        overall and per layer, each layer's share of tokens per choice k = 0..N, and the histogram of each
        sample's fraction (20 bins over [0, 1]); clears them."""
        if not self.usage:
            return {}
        usage, self.usage = torch.cat(self.usage).double(), []
        k_counts, self.k_counts = torch.stack(self.k_counts).sum(0).double(), []
        run, tokens = usage[:, :-1], usage[:, -1]
        N, L = self.options.learners, run.shape[1]
        per_sample = run.sum(1) / (N * L * tokens)
        return {"acm": {"realised_fraction": float(run.sum() / (N * L * tokens.sum())),
                        "per_layer_fraction": [round(v, 4) for v in (run.sum(0) / (N * tokens.sum())).tolist()],
                        "per_layer_k_shares": [[round(v, 4) for v in row] for row in
                                               (k_counts / k_counts.sum(1, keepdim=True)).tolist()],
                        "sample_fraction_histogram": torch.histc(per_sample, HISTOGRAM_BINS, 0, 1).long().tolist()}}

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"conversion": self.conversion, "calibration": self.calibration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.conversion = dict(state.get("conversion", {}))
        self.calibration = dict(state.get("calibration", {}))  # runs saved before calibration: λ0 = 0
        self.apply_inference_options()

    def report(self, output) -> dict[str, Any]:
        flops, seconds = self.conversion_cost()
        return {"conversion": {**self.conversion, "flops": flops, "seconds": seconds}, "calibration": self.calibration}


def calibrate_gates(method: ACMMethod, ids: list[list[int]], labels: list[int], pad_id: int,
                    tolerance: float = 0.01, steps: int = 20) -> dict[str, Any]:
    """λ0: the gate bias at which the gates' argmax spends β of the learners on 512 seeded training rows
    (``seeded_rows``), by spec §5's bisection (λ ∈ [−20, 20], ±0.01,
    ≤ 20 steps) run with β' = β.

    Why: L_b (eq. 7) steers the Gumbel samples of training toward β, but inference takes the argmax,
    which is sharper: on AG News at α_b = 1 the samples settled at β while the argmax realised 0.185 for
    β = 0.25 and 0.87 for 0.75 (docs/acm.md). Returns λ0, the realised fraction on the rows, the number of
    evaluations and their seconds and FLOPs (counted in the all-in training cost)."""
    from dht.training.evaluation import predict_split
    from dht.training.operating import bisect_knob, seeded_rows

    rows, row_labels = seeded_rows(ids, labels, method.run.train.seed)
    spent = {"flops": 0.0, "seconds": 0.0}

    def fraction_at(bias: float) -> float:
        for acm in method.model.acms():  # the gates alone, whatever --gate-bias and --acm-k say
            acm.gate_bias, acm.fixed_k = bias, None
        method.statistics()  # start counting from here
        result = predict_split(method, rows, row_labels, method.run.train.eval_batch_size, pad_id)
        spent["flops"] += result.totals[2]
        spent["seconds"] += result.seconds
        return method.statistics()["acm"]["realised_fraction"]

    bias, fraction, tried = bisect_knob(fraction_at, method.options.beta, -20.0, 20.0, tolerance, steps)
    method.calibration = {"gate_bias": bias}
    method.apply_inference_options()
    return {"gate_bias": bias, "train_rows": len(rows), "realised_fraction": fraction,
            "evaluations": len(tried), **spent}

