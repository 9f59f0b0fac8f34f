"""ACMization, phases 1-2 (``../shared/spec/acm.md`` §4): from a BL1 teacher's FFNs to learners and gates.

``method`` is the ACM method (dht.methods.acm, which imports this module): its model with ACMs, its
frozen teacher and its options. The teacher runs in eval mode; forward hooks capture, for every layer
and every real token, its FFN's input z and output o (and, for the slice init, the GELU activations).
Each ACM trains on the teacher's z, so the ACMs are independent.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.data import Batch, iterate_batches
from dht.flops import acm_distill_flops, acm_gate_train_flops, full_forward_flops
from dht.model import DynamicEncoder
from dht.model.acm import gate_labels, neuron_importance
from dht.training.hooks import Method

IMPORTANCE_ROWS = 512  # training rows the neurons are ranked on for the slice init (spec §4)


@torch.no_grad()
def capture_ffn(teacher: DynamicEncoder, batch: Batch, activations: bool = False) -> list[tuple[Tensor, ...]]:
    """Per layer, the teacher's FFN input z (M, E) and output o (M, E) on the batch's real tokens, and with
    ``activations`` its GELU activations (M, I)."""
    seen: list[dict[str, Tensor]] = [{} for _ in teacher.layers]
    hooks = []
    for layer, store in zip(teacher.layers, seen):
        hooks.append(layer.ffn_in.register_forward_hook(lambda m, i, o, s=store: s.update(z=i[0])))
        hooks.append(layer.ffn_out.register_forward_hook(lambda m, i, o, s=store: s.update(a=i[0], o=o)))
    try:
        teacher(batch.input_ids, batch.attention_mask)
    finally:
        for hook in hooks:
            hook.remove()
    T = seen[0]["z"].shape[1]  # the teacher trims the batch to its longest sample
    rows = torch.nonzero(batch.attention_mask[:, :T].reshape(-1)).flatten()
    keys = ("z", "o", "a") if activations else ("z", "o")
    return [tuple(store[key].reshape(-1, store[key].shape[-1]).index_select(0, rows) for key in keys)
            for store in seen]


@torch.no_grad()
def slice_init(model: DynamicEncoder, teacher: DynamicEncoder, ids: list[list[int]], labels: list[int],
               pad_id: int, batch_size: int) -> float:
    """``learner_init: slices``: each ACM's learner n = the n-th quarter of its teacher FFN's neurons ranked
    by importance on the first ``IMPORTANCE_ROWS`` training rows; at k = N each ACM equals its FFN. Returns
    the FLOPs of the teacher's passes over those rows."""
    device = next(model.parameters()).device
    sums = [torch.zeros(model.config.intermediate_size, device=device) for _ in model.layers]
    tokens = 0
    for batch in iterate_batches(ids[:IMPORTANCE_ROWS], labels[:IMPORTANCE_ROWS], batch_size, pad_id, shuffle=False):
        captured = capture_ffn(teacher, batch.to(device), activations=True)
        for total, (_, _, a) in zip(sums, captured):
            total += a.abs().sum(0)
        tokens += len(captured[0][0])
    for acm, layer, total in zip(model.acms(), teacher.layers, sums):
        importance = neuron_importance(layer.ffn_out.weight, total / max(tokens, 1))
        acm.load_slices(layer.ffn_in.weight, layer.ffn_in.bias, layer.ffn_out.weight, layer.ffn_out.bias, importance)
    return float(sum(full_forward_flops(model.config, len(row)) for row in ids[:IMPORTANCE_ROWS]))


def phase_batches(ids: list[list[int]], labels: list[int], pad_id: int, batch_size: int, steps: int, seed: int,
                  device: torch.device) -> Iterator[Batch]:
    """``steps`` shuffled training batches on ``device`` (epochs repeat in new orders), seeded."""
    done, epoch = 0, 0
    while done < steps:
        generator = torch.Generator().manual_seed(seed * 1000 + 500 + epoch)
        for batch in iterate_batches(ids, labels, batch_size, pad_id, shuffle=True, generator=generator,
                                     sort_by_length=True):
            if done == steps:
                return
            done += 1
            yield batch.to(device)
        epoch += 1


def cosine_adam(parameters: list[torch.nn.Parameter], lr: float, steps: int) -> tuple[torch.optim.Adam, Any]:
    """Adam with a cosine decay from ``lr`` to 0 over ``steps`` (phases 1 and 2)."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=0.0)


def distillation_loss(method: Method, captured: list[tuple[Tensor, ...]], detach: bool) -> Tensor:
    """Phase-1 loss (paper eq. 3): the mean over ACMs, tokens and n = 0..N of ||h(z, n) − o||²."""
    losses = [((acm.partial_sums(z, detach) - o) ** 2).sum(-1).mean()
              for acm, (z, o) in zip(method.model.acms(), captured)]
    return torch.stack(losses).mean()


def distill_learners(method: Method, ids: list[list[int]], labels: list[int], pad_id: int) -> dict[str, Any]:
    """Phase 1: the learners (and b_out) fit the teacher's FFN outputs at every n; returns its cost."""
    o, config, run = method.options, method.model.config, method.run.train
    steps = math.ceil(o.distill_epochs * math.ceil(len(ids) / run.batch_size))
    parameters = [p for acm in method.model.acms() for p in (acm.w1, acm.b1, acm.w2, acm.b_out)]
    optimizer, schedule = cosine_adam(parameters, 3e-4 if o.learner_init == "slices" else 1e-3, steps)
    started, flops, loss = time.perf_counter(), 0.0, torch.tensor(0.0)
    for batch in phase_batches(ids, labels, pad_id, run.batch_size, steps, run.seed, method.device):
        loss = distillation_loss(method, capture_ffn(method.teacher, batch), o.distill_mode == "detach")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        flops += sum(acm_distill_flops(config, t) for t in batch.attention_mask.sum(1).tolist())
    for p in parameters:
        p.grad = None
    return {"seconds": time.perf_counter() - started, "steps": steps, "flops": flops, "last_loss": loss.item()}


def pretrain_gates(method: Method, ids: list[list[int]], labels: list[int], pad_id: int) -> dict[str, Any]:
    """Phase 2: the gates learn the labels of ``gate_labels`` from the frozen learners' distances to the
    teacher; returns its cost, the labels' shares and the learners' median relative error per layer and k."""
    o, config, run = method.options, method.model.config, method.run.train
    steps = math.ceil(o.gate_epochs * math.ceil(len(ids) / run.batch_size))
    acms = method.model.acms()
    parameters = [p for acm in acms for p in acm.gate.parameters()]
    optimizer, schedule = cosine_adam(parameters, 1e-2, steps)
    label_counts = torch.zeros(o.learners + 1)
    errors: list[list[Tensor]] = [[] for _ in acms]
    started, flops = time.perf_counter(), 0.0
    for batch in phase_batches(ids, labels, pad_id, run.batch_size, steps, run.seed + 1, method.device):
        losses = []
        for layer, (acm, (z, target)) in enumerate(zip(acms, capture_ffn(method.teacher, batch))):
            with torch.no_grad():
                distances = (acm.partial_sums(z) - target).norm(dim=-1).T  # (M, N + 1)
                errors[layer].append((distances / target.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu())
                t = gate_labels(distances)
                label_counts += torch.bincount(t.cpu(), minlength=o.learners + 1)
            losses.append(F.cross_entropy(acm.gate(z), t))
        loss = torch.stack(losses).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        flops += sum(acm_gate_train_flops(config, t) for t in batch.attention_mask.sum(1).tolist())
    for p in parameters:
        p.grad = None
    median_error = [[round(v, 4) for v in torch.cat(e).median(0).values.tolist()] for e in errors]
    return {"seconds": time.perf_counter() - started, "steps": steps, "flops": flops, "last_loss": loss.item(),
            "label_shares": [round(v, 4) for v in (label_counts / label_counts.sum()).tolist()],
            "median_relative_error": median_error}  # per layer, k = 0..N


def convert(method: Method, ids: list[list[int]], labels: list[int], pad_id: int) -> dict[str, Any]:
    """Initialise the learners (``learner_init``), then phases 1 and 2; returns each phase's record."""
    started, init_flops = time.perf_counter(), 0.0
    if method.options.learner_init == "slices":
        init_flops = slice_init(method.model, method.teacher, ids, labels, pad_id, method.run.train.batch_size)
    else:
        with torch.no_grad():
            for acm, layer in zip(method.model.acms(), method.teacher.layers):
                acm.b_out.copy_(layer.ffn_out.bias)
    init_seconds = time.perf_counter() - started
    phase1 = distill_learners(method, ids, labels, pad_id)
    # The slice init's teacher passes belong to the conversion.
    phase1["seconds"] += init_seconds
    phase1["flops"] += init_flops
    return {"phase1": phase1, "phase2": pretrain_gates(method, ids, labels, pad_id)}
