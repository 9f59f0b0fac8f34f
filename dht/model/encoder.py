"""A BERT encoder that runs a different depth and head set per sample, and really skips the rest.

Dimension legend used in shape comments:
    B batch, T tokens, E hidden size, nh heads per layer, k kept heads, dh head width (E / nh),
    I FFN width, C classes.

Heads are contiguous dh-wide slices of the Q/K/V projections' outputs and of the output
projection's inputs (as in BERT). A layer that keeps k heads gathers only those slices of the
weights and multiplies by them, so its projection and attention cost scale with k / nh; the FFN
always runs in full. A batch whose samples follow different plans is partitioned by plan, each
group runs densely (trimmed to its own longest sample), and the results are put back in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dht.model.acm import ACM
from dht.model.config import EncoderConfig
from dht.model.plan import ExecutionPlan


@dataclass(frozen=True)
class HeadParts:
    """Kept heads of one layer for a batch in parts: the samples at ``rows[i]`` keep ``heads[i]`` (a
    shared tuple, or an (n_i, N_h) bool mask of each sample's own heads). Attention runs part by part;
    the rest of the layer (residuals, norms, FFN) runs once on the whole batch."""

    rows: tuple[Tensor, ...]  # (n_i,) long each; together every row of the batch once
    heads: tuple["Heads", ...]

    @cached_property  # every layer of a group uses it
    def inverse(self) -> Tensor:
        """Position of each batch row in the parts' concatenation, (B,)."""
        return inverse_permutation(torch.cat(self.rows))


def inverse_permutation(order: Tensor) -> Tensor:
    """``order`` (n,) lists rows 0..n-1 in some order; return where each row sits in it, (n,)."""
    return torch.empty_like(order).index_copy_(0, order, torch.arange(len(order), device=order.device))


# Kept heads of one layer: shared by the batch (a tuple), per sample (a (B, N_h) bool mask), or in parts.
Heads = Union[tuple[int, ...], Tensor, HeadParts]


def kept_mask(head_sets: Sequence[Sequence[int]], num_heads: int, device: torch.device | None = None) -> Tensor:
    """One head set per sample -> the (B, N_h) bool mask of kept heads that per-sample attention takes."""
    kept = torch.zeros(len(head_sets), num_heads, dtype=torch.bool)
    for row, heads in enumerate(head_sets):
        kept[row, list(heads)] = True
    return kept.to(device) if device is not None else kept


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout (BERT)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, T) -> hidden states (B, T, E); single-segment input (token type 0)."""
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)
        h = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        return self.dropout(self.norm(h))


class SelfAttention(nn.Module):
    """Multi-head self-attention whose projections are computed only for the kept heads."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        E, nh = config.hidden_size, config.num_heads
        self.num_heads, self.head_dim = nh, config.head_dim
        # Q, K and V stacked in one matrix so the full-head case is one matmul.
        self.qkv = nn.Linear(E, 3 * E)  # weight (3E, E): rows [q; k; v], each nh x dh
        self.out = nn.Linear(E, E)  # weight (E, E): input columns are nh x dh
        self.dropout_p = config.attention_dropout
        self._index_cache: dict[tuple[int, ...], Tensor] = {}

    def _head_index(self, heads: tuple[int, ...], device: torch.device) -> Tensor:
        index = self._index_cache.get(heads)
        if index is None or index.device != device:
            index = torch.tensor(heads, dtype=torch.long, device=device)
            self._index_cache[heads] = index
        return index

    def forward(self, h: Tensor, attn_mask: Tensor, heads: Heads) -> Tensor:
        """h (B, T, E), attn_mask (B, 1, 1, T) bool (True = attend) -> (B, T, E) using only the kept heads.

        heads: one tuple of head indices for the whole batch, a (B, N_h) bool mask giving each sample
        its own heads (any number each; see ``_per_sample_heads``), or ``HeadParts``.
        """
        if isinstance(heads, HeadParts):
            parts = [self(h.index_select(0, rows), attn_mask.index_select(0, rows), kept)
                     for rows, kept in zip(heads.rows, heads.heads)]
            return torch.cat(parts).index_select(0, heads.inverse)
        if isinstance(heads, Tensor):  # a GPU pays per kernel, a CPU per copied byte: see the two paths
            per_sample = self._per_sample_heads_batched if h.is_cuda else self._per_sample_heads
            return per_sample(h, attn_mask, heads)
        B, T, E = h.shape
        nh, dh, k = self.num_heads, self.head_dim, len(heads)
        if k == nh:
            w_qkv, b_qkv, w_out = self.qkv.weight, self.qkv.bias, self.out.weight
        else:
            index = self._head_index(heads, h.device)
            w_qkv = self.qkv.weight.view(3, nh, dh, E).index_select(1, index).reshape(3 * k * dh, E)
            b_qkv = self.qkv.bias.view(3, nh, dh).index_select(1, index).reshape(3 * k * dh)
            w_out = self.out.weight.view(E, nh, dh).index_select(1, index).reshape(E, k * dh)
        qkv = F.linear(h, w_qkv, b_qkv)  # (B, T, 3*k*dh)
        q, key, v = qkv.view(B, T, 3, k, dh).permute(2, 0, 3, 1, 4)  # each (B, k, T, dh)
        context = self._attend(q, key, v, attn_mask).transpose(1, 2).reshape(B, T, k * dh)
        return F.linear(context, w_out, self.out.bias)  # (B, T, E)

    def _attend(self, q: Tensor, key: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
        """Scaled dot-product attention per kept head: (B, k, T, dh) each -> (B, k, T, dh)."""
        dropout_p = self.dropout_p if self.training else 0.0
        return F.scaled_dot_product_attention(q, key, v, attn_mask=attn_mask, dropout_p=dropout_p)

    @staticmethod
    def _head_slots(kept: Tensor, attn_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One slot per kept (sample, head) pair of kept (B, N_h) bool, sample-major: each slot's sample
        (S,), its head (S,), and its attention mask (S, 1, 1, T). Attention then runs over (S, 1, T, dh),
        so samples may keep different numbers of heads."""
        pairs = torch.nonzero(kept)  # (S, 2)
        slot_rows, slot_heads = pairs[:, 0], pairs[:, 1]
        return slot_rows, slot_heads, attn_mask.index_select(0, slot_rows)

    def _per_sample_heads(self, h: Tensor, attn_mask: Tensor, kept: Tensor) -> Tensor:
        """Sample b keeps the heads where kept[b] (B, N_h) is True: projections run head by head over
        the samples that keep that head, so the FLOPs are exactly the kept heads' and no weight is
        copied per sample (gathering a weight slice per sample costs several times the matmul it feeds).

        Every gather and scatter is index_select / index_copy_ / index_add_, whose CPU backward is
        deterministic (advanced indexing's is not when indices repeat), so resumed runs match.
        """
        B, T, E = h.shape
        nh, dh = self.num_heads, self.head_dim
        slot_rows, slot_heads, slot_mask = self._head_slots(kept, attn_mask)
        S = len(slot_rows)
        w_qkv = self.qkv.weight.view(3, nh, dh, E).transpose(0, 1).reshape(nh, 3 * dh, E)  # head j's q, k, v rows
        b_qkv = self.qkv.bias.view(3, nh, dh).transpose(0, 1).reshape(nh, 3 * dh)
        w_out = self.out.weight.view(E, nh, dh)
        slots = [torch.nonzero(slot_heads == j).flatten() for j in range(nh)]  # head j's slots
        kept_by = [(j, slot, slot_rows.index_select(0, slot)) for j, slot in enumerate(slots) if len(slot)]
        qkv = h.new_empty(S, T, 3 * dh)
        for j, slot, rows in kept_by:
            qkv.index_copy_(0, slot, F.linear(h.index_select(0, rows), w_qkv[j], b_qkv[j]))
        q, key, v = qkv.view(S, 1, T, 3, dh).unbind(3)  # each (S, 1, T, dh)
        context = self._attend(q, key, v, slot_mask).view(S, T, dh)
        out = h.new_zeros(B, T, E)
        for j, slot, rows in kept_by:
            out.index_add_(0, rows, F.linear(context.index_select(0, slot), w_out[:, j]))
        return out + self.out.bias

    def _per_sample_heads_batched(self, h: Tensor, attn_mask: Tensor, kept: Tensor) -> Tensor:
        """``_per_sample_heads`` as three batched products over the heads instead of 2 x N_h small ones
        (the GPU path: there, 24 small kernels per layer cost 7x BL1's layer at batch 32).

        Head j's samples fill row j of an (N_h, M) grid, M = the most samples any head has; the grid's
        spare cells repeat sample 0, their projections are never read and their context is zero, so the
        result equals the head-by-head path. The spare cells are work the FLOP count does not include:
        (N_h·M − S) / S of these layers' projections (S kept pairs), about a fifth when Thompson sampling
        keeps 8 of 12 heads for 32 samples. On a CPU the head-by-head path is faster (MiniLM's attention
        layer, 32 samples x 60 tokens, 8 of 12 heads each: 22 ms against 29 ms), so it stays there.
        """
        B, T, E = h.shape
        nh, dh = self.num_heads, self.head_dim
        slot_rows, slot_heads, slot_mask = self._head_slots(kept, attn_mask)
        S = len(slot_rows)
        order = torch.argsort(slot_heads, stable=True)  # slots grouped by head, samples ascending
        counts = torch.bincount(slot_heads, minlength=nh)
        M = int(counts.max())
        first = torch.cumsum(counts, 0) - counts  # each head's first position in ``order``
        grouped = slot_heads[order]
        cell_of_slot = torch.empty_like(order)
        cell_of_slot[order] = grouped * M + torch.arange(S, device=h.device) - first[grouped]
        row_of_cell = torch.zeros(nh * M, dtype=torch.long, device=h.device)
        row_of_cell[cell_of_slot] = slot_rows
        w_qkv = self.qkv.weight.view(3, nh, dh, E).transpose(0, 1).reshape(nh, 3 * dh, E)
        b_qkv = self.qkv.bias.view(3, nh, dh).transpose(0, 1).reshape(nh, 1, 3 * dh)
        grid = h.index_select(0, row_of_cell).view(nh, M * T, E)
        qkv = torch.baddbmm(b_qkv, grid, w_qkv.transpose(1, 2)).view(nh * M, T, 3 * dh)
        q, key, v = qkv.index_select(0, cell_of_slot).view(S, 1, T, 3, dh).unbind(3)  # each (S, 1, T, dh)
        context = self._attend(q, key, v, slot_mask).view(S, T, dh)
        context = context.new_zeros(nh * M, T, dh).index_copy(0, cell_of_slot, context).view(nh, M * T, dh)
        w_out = self.out.weight.view(E, nh, dh).permute(1, 2, 0)  # (nh, dh, E)
        out = h.new_zeros(B, T, E).index_add_(0, row_of_cell, torch.bmm(context, w_out).view(nh * M, T, E))
        return out + self.out.bias


class Layer(nn.Module):
    """One post-LayerNorm transformer layer: attention and GELU FFN, each with a residual."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        E, eps = config.hidden_size, config.layer_norm_eps
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(E, eps=eps)
        if config.acm_learners:  # Adaptive Computation Modules: learners and a gate in place of the FFN
            self.acm = ACM(E, config.intermediate_size, config.acm_learners, config.acm_gate_hidden)
        else:
            self.ffn_in = nn.Linear(E, config.intermediate_size)
            self.ffn_out = nn.Linear(config.intermediate_size, E)
        self.ffn_norm = nn.LayerNorm(E, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, h: Tensor, attn_mask: Tensor, heads: Heads) -> Tensor:
        """h (B, T, E) -> (B, T, E)."""
        h = self.attention_norm(h + self.dropout(self.attention(h, attn_mask, heads)))
        if hasattr(self, "acm"):
            ffn = self.acm.forward_tokens(h, attn_mask[:, 0, 0, :])
        else:
            ffn = self.ffn_out(F.gelu(self.ffn_in(h)))  # exact (erf) GELU, as BERT's "gelu"
        return self.ffn_norm(h + self.dropout(ffn))


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of h (B, T, E) over the real tokens of mask (B, T) -> (B, E)."""
    weights = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class DynamicEncoder(nn.Module):
    """BERT encoder + classifier whose forward follows one execution plan per sample."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.classifier_dropout = nn.Dropout(config.hidden_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_classes)
        if config.branch_classifiers:  # FastBERT's students: exits after layers 0 .. N_L - 2
            self.branches = nn.ModuleList(nn.Linear(config.hidden_size, config.num_classes)
                                          for _ in range(config.num_layers - 1))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # --- building blocks (the DHT loop composes these directly) -------------------------
    def full_plan(self) -> ExecutionPlan:
        """The plan that runs every layer with every head."""
        return ExecutionPlan.full(self.config.num_layers, self.config.num_heads)

    def embed(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, T) -> embeddings (B, T, E)."""
        return self.embeddings(input_ids)

    def run_plan(self, h: Tensor, mask: Tensor, plan: ExecutionPlan | Sequence[ExecutionPlan]) -> Tensor:
        """Run the layers of ``plan`` on h (B, T, E): one plan for all samples, or one per sample
        as long as they all share a shape (same layers, same head count in each)."""
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, T)
        for layer, heads in zip(*per_layer_heads(plan, self.config.num_heads, h.device)):
            h = self.layers[layer](h, attn_mask, heads)
        return h

    def pool(self, h: Tensor, mask: Tensor) -> Tensor:
        """h (B, T, E) -> sentence vectors (B, E): mean over real tokens, or the first token."""
        return masked_mean(h, mask) if self.config.pooling == "mean" else h[:, 0]

    def classify(self, h: Tensor, mask: Tensor, head: nn.Linear | None = None) -> Tensor:
        """Last executed layer's states h (B, T, E) -> logits (B, C), through ``head`` (a branch
        classifier) or the final classifier."""
        return (head or self.classifier)(self.classifier_dropout(self.pool(h, mask)))

    # --- the whole model ---------------------------------------------------------------
    def forward(self, input_ids: Tensor, mask: Tensor,
                plans: ExecutionPlan | Sequence[ExecutionPlan] | None = None,
                hidden: Tensor | None = None) -> Tensor:
        """Classify a batch, sample i following plans[i] (one plan for all, or the full model).

        input_ids, mask: (B, T); mask is True for real tokens.
        hidden: optional (B, T, E) states to start from instead of the embeddings (e.g. the
            output of an earlier probe over the layers before the plans' first layer).
        Returns logits (B, C), in the batch's order.
        """
        mask = mask.bool()
        if plans is None or isinstance(plans, ExecutionPlan):
            plan = plans or self.full_plan()
            return self._run_group(input_ids, mask, plan, hidden)
        if len(plans) != input_ids.shape[0]:
            raise ValueError(f"got {len(plans)} plans for a batch of {input_ids.shape[0]}")
        groups = group_by_shape(plans)
        if len(groups) == 1:
            return self._run_group(input_ids, mask, plans, hidden)
        logits = input_ids.new_empty((input_ids.shape[0], self.config.num_classes), dtype=self.classifier.weight.dtype)
        for index in groups.values():
            rows = torch.tensor(index, device=input_ids.device)
            sub_hidden = hidden.index_select(0, rows) if hidden is not None else None
            logits[rows] = self._run_group(input_ids.index_select(0, rows), mask.index_select(0, rows),
                                           [plans[i] for i in index], sub_hidden)
        return logits

    def _run_group(self, input_ids: Tensor, mask: Tensor, plan: ExecutionPlan | Sequence[ExecutionPlan],
                   hidden: Tensor | None) -> Tensor:
        for distinct in ({plan} if isinstance(plan, ExecutionPlan) else set(plan)):
            distinct.check(self.config.num_layers, self.config.num_heads)
        T = int(mask.sum(1).max())  # trim the padding this group does not need
        input_ids, mask = input_ids[:, :T], mask[:, :T]
        h = self.embed(input_ids) if hidden is None else hidden[:, :T]
        return self.classify(self.run_plan(h, mask, plan), mask)

    def add_branch_classifiers(self) -> None:
        """Give the model FastBERT's per-layer classifiers (no-op if it has them)."""
        if not self.config.branch_classifiers:
            self.config = self.config.replace(branch_classifiers=True)
            self.branches = nn.ModuleList(nn.Linear(self.config.hidden_size, self.config.num_classes)
                                          for _ in range(self.config.num_layers - 1))
            self.branches.apply(self._init_weights)

    def add_acms(self, learners: int) -> None:
        """Replace every layer's FFN by an ACM of ``learners`` randomly initialised learners and a gate
        (no-op if the model has them); the dense FFN weights are dropped."""
        if self.config.acm_learners:
            return
        self.config = self.config.replace(acm_learners=learners)
        for layer in self.layers:
            del layer.ffn_in, layer.ffn_out
            layer.acm = ACM(self.config.hidden_size, self.config.intermediate_size, learners,
                            self.config.acm_gate_hidden).to(layer.ffn_norm.weight.device)
            layer.acm.gate.apply(self._init_weights)

    def acms(self) -> list[ACM]:
        """The layers' ACMs, bottom first (none for a dense model)."""
        return [layer.acm for layer in self.layers if hasattr(layer, "acm")]

    @torch.no_grad()
    def branches_from_classifier(self) -> None:
        """Set every branch classifier to a copy of the final classifier."""
        for branch in self.branches:
            branch.load_state_dict(self.classifier.state_dict())

    def freeze_layers(self, layers: Sequence[int], embeddings: bool = True) -> None:
        """Stop gradients for the given layers (and the embeddings); used by P-DHT."""
        if embeddings:
            self.embeddings.requires_grad_(False)
        for layer in layers:
            self.layers[layer].requires_grad_(False)

    def frozen_layers(self) -> frozenset[int]:
        """Indices of layers that get no gradient."""
        return frozenset(i for i, layer in enumerate(self.layers)
                         if not any(p.requires_grad for p in layer.parameters()))


def group_by_shape(plans: Sequence[ExecutionPlan]) -> dict[tuple, list[int]]:
    """Map each distinct plan shape to the batch positions that follow it (first-seen order)."""
    groups: dict[tuple, list[int]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault(plan.shape, []).append(i)
    return groups


def per_layer_heads(plan: ExecutionPlan | Sequence[ExecutionPlan], num_heads: int,
                    device: torch.device) -> tuple[tuple[int, ...], list[Heads]]:
    """The layers a same-shape group runs and, per layer, its heads: a shared tuple where all
    samples agree, else a (B, N_h) bool mask of each sample's heads."""
    if isinstance(plan, ExecutionPlan):
        return plan.layers, list(plan.heads)
    first = plan[0]
    if any(p.shape != first.shape for p in plan):
        raise ValueError("run_plan needs plans of one shape (same layers and head counts)")
    heads: list[Heads] = []
    for position in range(first.depth):
        sets = [p.heads[position] for p in plan]
        heads.append(sets[0] if len(set(sets)) == 1 else kept_mask(sets, num_heads, device))
    return first.layers, heads
