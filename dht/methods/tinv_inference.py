"""Transformer⁻¹'s inference (spec §8, §11): halting layer by layer on the folded stack.

A batch's features and the predictor's prior are computed once; with the policy, its step 0 picks each
sample's width; the samples of one width then run layer by layer, and after each layer the controller
(the policy's HALT, the predictor's depth, or the entropy exit) halts some of them. The rest are compacted
and their padding trimmed; with ``--buckets`` each layer call is padded up to a fixed shape bucket, warmed
up once (``fold``); with ``--compile`` (on buckets) the folded layer is compiled once per length bucket; with
``--graphs`` (CUDA) each layer and its exit replay a graph captured at load (``dht/model/graphs.py``).

``TInvInference`` is a mixin of ``TInvMethod`` (``dht/methods/tinv.py``), which owns training and state.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from dht.control.policy import HALT, exit_statistics, observation
from dht.data import Batch
from dht.flops import classifier_flops, full_forward_flops, plan_forward_flops
from dht.model import ExecutionPlan
from dht.model.folding import FoldedStack, folded_layer
from dht.model.graphs import BATCH_BUCKETS, LENGTH_BUCKETS, Capture, LayerGraphs, bucket, cuda_graph_capture
from dht.provenance import synchronise
from dht.search.exits import normalised_entropy
from dht.training.hooks import Prediction


def compact(h: Tensor, mask: Tensor, keep: Tensor, graphs: LayerGraphs | None) -> tuple[Tensor, Tensor]:
    """The running samples where ``keep`` (n,) is true, their padding trimmed to the longest left (spec §8):
    h (n, T, E) and mask (n, T) cut down, or, with graphs, moved within the graphs' buffers (h and mask are
    then returned as they were, unused)."""
    if graphs is not None:
        graphs.keep(keep)
        return h, mask
    h, mask = h[keep], mask[keep]
    longest = int(mask.sum(1).max())
    return h[:, :longest], mask[:, :longest]


def route_name(depth: int, width: int) -> str:
    return f"{depth}L{width}H"


def parse_route(route: str) -> tuple[int, int]:
    """'3L8H' -> (3, 8)."""
    depth, width = route.rstrip("H").split("L")
    return int(depth), int(width)


class TInvInference:
    """Halting inference, the fixed routes of the oracles and the folded stack (module docstring)."""

    model: Any
    options: Any
    widths: tuple[int, ...]
    head_order: list[list[int]] | None

    def plan(self, depth: int, width: int) -> ExecutionPlan:
        """The path (depth, width): layers 0..depth−1, each keeping its ``width`` most important heads."""
        return ExecutionPlan(tuple(range(depth)), tuple(self.heads(layer, width) for layer in range(depth)))

    def heads(self, layer: int, width: int) -> tuple[int, ...]:
        order = self.head_order[layer] if self.head_order is not None else range(self.model.config.num_heads)
        return tuple(sorted(list(order)[:width]))

    def predict_batches(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, Prediction]]:
        self.model.eval()
        self.policy.to(self.device)
        folded = self.fold()
        for batch in batches:
            yield batch, self.halting_predict(batch, folded)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        return next(iter(self.predict_batches([batch])))[1]

    def fold(self) -> FoldedStack:
        """The folded layers, rebuilt when the layers' weights or head order changed (training updates the
        weights in place); with ``--buckets`` (or ``--compile``, which implies them), every shape bucket is
        run once first (oneDNN builds its kernels per shape; the compiler compiles); with ``--graphs``, one
        graph per layer, width and shape bucket is captured (``layer_graphs``). The seconds either takes are
        kept in ``warm_up_seconds``."""
        o = self.options
        # The classifier too: captured graphs read its weights where they are.
        weights = tuple((p.data_ptr(), p._version) for p in (*self.model.layers.parameters(),
                                                              *self.model.classifier.parameters()))
        key = (weights, str(self.head_order), o.buckets, o.compile, o.graphs)
        if getattr(self, "_folded", None) is not None and self._folded[0] == key:
            return self._folded[1]
        capture = self.graph_capture() if o.graphs else None  # refused before anything is built
        self._folded, self.layer_graphs = None, None  # the old graphs' memory goes before the new capture
        folded = FoldedStack(self.model, self.head_order)
        start = time.perf_counter()
        config = self.model.config
        with torch.no_grad():
            if capture is not None:
                self.layer_graphs = LayerGraphs(folded, self.model.pool, self.model.classifier, self.widths,
                                                config.hidden_size, config.num_classes, self.device, capture,
                                                BATCH_BUCKETS, self.length_buckets())
            elif o.buckets or o.compile:
                for width in self.widths:
                    for B in BATCH_BUCKETS:
                        for T in LENGTH_BUCKETS:
                            mask = torch.ones(B, T, dtype=torch.bool, device=self.device)
                            self._run_layer(folded, torch.zeros(B, T, config.hidden_size, device=self.device),
                                            mask, 0, width)
        synchronise(self.device)
        self.warm_up_seconds = time.perf_counter() - start if o.buckets or o.compile or o.graphs else 0.0
        self._folded = (key, folded)
        return folded

    def check_device(self) -> None:
        """``--graphs`` runs on a CUDA device only (ValueError elsewhere)."""
        if self.options.graphs and torch.device(self.device).type != "cuda":
            raise ValueError(f"--graphs needs a CUDA device (--device cuda); this run's device is {self.device}")

    def graph_capture(self) -> Capture:
        """How ``--graphs`` captures a layer's work: CUDA graphs (``check_device`` refuses other devices)."""
        self.check_device()
        return cuda_graph_capture(self.device)

    def length_buckets(self) -> tuple[int, ...]:
        """The length buckets up to the run's --max-length, which is the last one."""
        longest = self.run.train.max_length
        return tuple(T for T in LENGTH_BUCKETS if T < longest) + (longest,)

    def _run_layer(self, folded: FoldedStack, h: Tensor, mask: Tensor, layer: int, width: int) -> Tensor:
        """One folded layer on the running samples, padded up to their shape bucket with ``--buckets``
        (padded rows attend to their first token only; padded rows and tokens are cut off again)."""
        n, T = h.shape[:2]
        if self.options.buckets or self.options.compile:  # compiled code is specialised per length
            B_b, T_b = bucket(n, BATCH_BUCKETS), bucket(T, LENGTH_BUCKETS)
            padded = h.new_zeros(B_b, T_b, h.shape[2])
            padded[:n, :T] = h
            padded_mask = mask.new_zeros(B_b, T_b)
            padded_mask[:n, :T] = mask
            padded_mask[n:, 0] = True
            h, mask = padded, padded_mask
        layer_fn = folded_layer
        if self.options.compile:
            if getattr(self, "_compiled", None) is None:
                # Spec §11 asks for one artefact per length and width with the batch dimension dynamic; on the
                # CPU attention's kernel specialises the batch size, so there is one per shape bucket: room for all.
                limit = len(BATCH_BUCKETS) * len(LENGTH_BUCKETS) * len(self.widths) + 2
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
                self._compiled = torch.compile(folded_layer, dynamic=False)
            layer_fn = self._compiled
            if h.shape[0] > 1:  # maybe: on the CPU, attention's kernel may specialise the batch size anyway
                torch._dynamo.maybe_mark_dynamic(h, 0)
                torch._dynamo.maybe_mark_dynamic(mask, 0)
        out = layer_fn(h, mask[:, None, None, :], folded.weights(layer, width), folded.head_dim, folded.eps)
        return out[:n, :T]

    @torch.no_grad()
    def halting_predict(self, batch: Batch, folded: FoldedStack) -> Prediction:
        """Spec §8: the width per sample (policy step 0; full width for the other controllers), then per
        width layer by layer, each sample halting when its controller says so."""
        model, o = self.model, self.options
        config, L = model.config, model.config.num_layers
        mask = batch.attention_mask.bool()
        T = int(mask.sum(1).max())
        input_ids, mask = batch.input_ids[:, :T], mask[:, :T]
        B = len(input_ids)
        tokens = mask.sum(1).tolist()
        logits = torch.empty(B, config.num_classes, device=input_ids.device)
        depth = torch.full((B,), L, dtype=torch.long)
        width = torch.full((B,), self.widths[0], dtype=torch.long)
        if o.controller == "entropy":  # reads neither the token statistics nor the predictor
            features, prior = input_ids.new_zeros((B, 26), dtype=torch.float32), None
        else:
            features = self._features(input_ids, mask)
            prior = self.predictor.predict(features)
        cost_weight = features.new_full((B,), o.cost_weight)
        state = None
        if o.controller == "policy":
            spent = self._spent(tokens, [self.widths[0]] * B, input_ids.device)
            x = observation(prior, features[:, :10], cost_weight, 0, L, spent[:, 0], features.new_ones(B), None)
            out, _, state = self.policy.step(x, None, None, first=True)
            width = torch.tensor(self.widths)[out.argmax(-1).cpu()]
        context = (features, prior, cost_weight)
        # With --graphs a group is at most the largest batch bucket; each chunk halts on its own, as a batch would.
        chunk = self.layer_graphs.max_rows if o.graphs else B
        for w in width.unique().tolist():
            for rows in (width == w).nonzero().squeeze(1).to(input_ids.device).split(chunk):
                group_state = None if state is None else (state[0][rows], state[1][rows])
                group_logits, group_depth = self._halt_group(folded, input_ids[rows], mask[rows], w,
                                                             [None if c is None else c[rows] for c in context],
                                                             group_state)
                logits[rows] = group_logits
                depth[rows.cpu()] = group_depth
        return self._halting_prediction(logits, depth.tolist(), width.tolist(), tokens)

    def _halt_group(self, folded: FoldedStack, input_ids: Tensor, mask: Tensor, width: int,
                    context: list[Tensor], state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """Samples of one width, layer by layer until each halts: their logits (n, C) and depths (n,)."""
        model, o = self.model, self.options
        L, nh = model.config.num_layers, model.config.num_heads
        features, prior, cost_weight = context
        n = len(input_ids)
        T = int(mask.sum(1).max())
        input_ids, mask = input_ids[:, :T], mask[:, :T]
        spent = self._spent(mask.sum(1).tolist(), [width] * n, input_ids.device)
        if o.controller == "predictor":  # the first depth whose cumulative p̂ reaches q (the last one at worst)
            reached = prior.cumsum(1) >= o.predictor_quantile - 1e-6
            reached[:, -1] = True
            needed = reached.float().argmax(1) + 1
        logits = torch.empty(n, model.config.num_classes, device=input_ids.device)
        depth = torch.full((n,), L, dtype=torch.long)
        active = torch.arange(n, device=input_ids.device)
        h, previous, graphs = model.embed(input_ids), None, self.layer_graphs if o.graphs else None
        if graphs is not None:
            graphs.load(h, mask)
        for t in range(L):
            if graphs is not None:  # the layer, the pooling and the exit: one replay, read from static buffers
                pooled, exit_logits = graphs.layer(t, width)
            else:
                h = self._run_layer(folded, h, mask, t, width)
                pooled = model.pool(h, mask)
                exit_logits = model.classifier(pooled)
            if t == L - 1:
                logits[active] = exit_logits
                break
            if o.controller == "policy":
                x = observation(prior[active], features[active, :10], cost_weight[active], t + 1, L,
                                spent[active, t + 1], features.new_full((len(active),), width / nh),
                                exit_statistics(exit_logits, previous))
                out, _, state = self.policy.step(x, pooled, state, first=False)
                halt = out.argmax(-1) == HALT
            elif o.controller == "predictor":
                halt = needed[active] <= t + 1
            else:
                halt = normalised_entropy(exit_logits) < o.entropy_threshold
            logits[active[halt]] = exit_logits[halt]
            depth[active[halt].cpu()] = t + 1
            if halt.all():
                break
            keep = ~halt
            active, previous = active[keep], exit_logits[keep]
            state = None if state is None else (state[0][keep], state[1][keep])
            h, mask = compact(h, mask, keep, graphs)
        return logits, depth

    def _halting_prediction(self, logits: Tensor, depth: list[int], width: list[int], tokens: list[int]) -> Prediction:
        """Per sample: d layers at its width and the exit read at each depth passed (paper-style); all-in adds
        the controller's features, predictor and policy steps (d + 1, or N_L)."""
        config, L, controller = self.model.config, self.model.config.num_layers, self.options.controller
        flops = [plan_forward_flops(config, ExecutionPlan.first(d, config.num_heads, tuple(range(w))), t,
                                    classify=False) + d * classifier_flops(config)
                 for d, w, t in zip(depth, width, tokens)]
        all_in = list(flops)
        if controller != "entropy":
            steps = [min(d + 1, L) if controller == "policy" else 0 for d in depth]
            all_in = [f + self._control_flops([t], [n]) for f, t, n in zip(flops, tokens, steps)]
        full = [full_forward_flops(config, t) for t in tokens]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)
        return Prediction(logits, as_tensor(flops), as_tensor(full), as_tensor(all_in),
                          routes=[route_name(d, w) for d, w in zip(depth, width)])

    def fixed_routes(self) -> list[str]:
        """Every path (depth, width), depth first; the last is the full model."""
        return [route_name(d, w) for d in range(1, self.model.config.num_layers + 1) for w in sorted(self.widths)]

    @torch.no_grad()
    def predict_route_batches(self, batches: Iterable[Batch], route: str) -> Iterator[tuple[Batch, Prediction]]:
        """Every sample takes the route's path and exits through the shared classifier."""
        self.model.eval()
        config = self.model.config
        plan = self.plan(*parse_route(route))
        for batch in batches:
            logits = self.model(batch.input_ids, batch.attention_mask, plan)
            tokens = batch.attention_mask.sum(1).tolist()
            flops = torch.tensor([plan_forward_flops(config, plan, t) for t in tokens], dtype=torch.float64)
            full = torch.tensor([full_forward_flops(config, t) for t in tokens], dtype=torch.float64)
            yield batch, Prediction(logits, flops, full, routes=[route] * len(tokens))

