"""Shape buckets and CUDA-graph replay of the folded layers, for Transformer⁻¹ (spec ``transformer_inverse.md``
§11, our mapping of the paper's "CUDA Graph pre-compilation").

The running samples of a halting loop are padded up to a shape bucket: rows up to one of ``BATCH_BUCKETS``,
tokens up to one of ``LENGTH_BUCKETS``; padded rows attend to their first token only, and padded rows and
tokens are never read back or counted. ``LayerGraphs`` holds one set of static buffers per bucket (B, T):
the states h (B, T, E), the mask (B, T), the pooled states (B, E) and the exit's logits (B, C). At load it
captures, for every (layer ℓ, width w, B, T), one graph of: the folded layer on h, written back into h; the
pooling; the shared exit classifier. A replay then runs one layer and its exit with no Python and no kernel
launch per operation; the caller reads the exit, decides who halts, and ``keep`` compacts the rest into
their (possibly smaller) bucket.

Why per layer, and why the weights are not inputs: a graph whose layer index were a device tensor would
have to copy that layer's weights into static buffers at each replay; a graph per layer reads the folded
stack's views where they are (zero-copy), for 6 × |W| × 7 × 6 graphs (252 for one width, 504 for two).
Every graph shares one memory pool: replays run one at a time on one stream, and what a graph leaves for
the next lives in the static buffers, which stay allocated.

What is not in the graphs (a [D] departure from spec §11, which puts "the policy's per-layer features" in
them): the policy's step and the halting bookkeeping run eagerly after each replay. The policy's recurrent
state shrinks with every halt, so capturing it would mean padding its state per bucket as well; its step is
a few small products, and its cost is what ``dht bench-paths`` reports as the switching overhead per layer.

Dimension legend: B rows of a bucket, T tokens of a bucket, n running samples (≤ B), E hidden, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from dht.model.folding import FoldedStack, folded_layer

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # spec §11: the running samples are padded up to one of these
LENGTH_BUCKETS = (16, 32, 48, 64, 96, 128)  # and their tokens up to one of these

# A capture turns a function on static buffers into its replay: a function that runs the same work on the
# same buffers again. ``cuda_graph_capture`` records a CUDA graph; ``rerun_capture`` calls the function again.
Capture = Callable[[Callable[[], None]], Callable[[], None]]


def bucket(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size``; ``size`` itself beyond the largest."""
    return next((b for b in buckets if b >= size), size)


def cuda_graph_capture(device: torch.device | str = "cuda", pool: tuple[int, int] | None = None) -> Capture:
    """Capture on CUDA ``device`` (``torch.cuda.CUDAGraph``), every graph in ``pool`` (one
    ``torch.cuda.graph_pool_handle()`` by default). Each function runs once on a side stream first, as
    PyTorch asks before a capture (cuBLAS workspaces and lazy initialisation happen outside the graph)."""
    with torch.cuda.device(device):
        pool = torch.cuda.graph_pool_handle() if pool is None else pool

    def capture(fn: Callable[[], None]) -> Callable[[], None]:
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                fn()
        return graph.replay

    return capture


def rerun_capture(fn: Callable[[], None]) -> Callable[[], None]:
    """A replay that calls ``fn`` again: what a graph does (the same work on the same static buffers),
    without CUDA. The tests use it to check the buffers' bookkeeping on a CPU."""
    return fn


@dataclass
class _Buffers:
    """The static tensors of one shape bucket (B, T); every graph of that bucket reads and writes these."""

    h: Tensor  # (B, T, E)
    mask: Tensor  # (B, T) bool
    pooled: Tensor  # (B, E)
    logits: Tensor  # (B, C)


class LayerGraphs:
    """One replay per (layer, width, B, T) of the folded layer + pooling + exit (module docstring).

    pool: (h (B, T, E), mask (B, T)) -> (B, E), and classifier: (B, E) -> (B, C), both without randomness (eval
    mode). Shapes beyond the largest buckets are refused by ``load`` (ValueError): the caller splits rows
    into chunks of ``max_rows``, and ``length_buckets`` must reach the longest sample.
    """

    def __init__(self, folded: FoldedStack, pool: Callable[[Tensor, Tensor], Tensor], classifier: nn.Module,
                 widths: Sequence[int], hidden_size: int, num_classes: int, device: torch.device | str,
                 capture: Capture, batch_buckets: Sequence[int] = BATCH_BUCKETS,
                 length_buckets: Sequence[int] = LENGTH_BUCKETS) -> None:
        self.batch_buckets, self.length_buckets = tuple(batch_buckets), tuple(length_buckets)
        self.max_rows = self.batch_buckets[-1]
        # A graph holds the addresses of what it reads, not the tensors: the folded stack and the classifier
        # must outlive the graphs, so they are kept here.
        self.folded, self.classifier = folded, classifier
        self.buffers: dict[tuple[int, int], _Buffers] = {}
        self.replays: dict[tuple[int, int, int, int], Callable[[], None]] = {}
        num_layers = folded.w_qkv.shape[0]
        with torch.no_grad():
            for B in self.batch_buckets:
                for T in self.length_buckets:
                    mask = torch.zeros(B, T, dtype=torch.bool, device=device)
                    mask[:, 0] = True  # never a row with no key: attention would be NaN there
                    buffers = _Buffers(torch.zeros(B, T, hidden_size, device=device), mask,
                                       torch.zeros(B, hidden_size, device=device),
                                       torch.zeros(B, num_classes, device=device))
                    self.buffers[B, T] = buffers
                    for layer in range(num_layers):
                        for width in widths:
                            step = _layer_step(buffers, folded, layer, width, pool, classifier)
                            self.replays[layer, width, B, T] = capture(step)
                    buffers.h.zero_()  # the capture's first call ran the layers on these
        self.shape: tuple[int, int] | None = None  # the current bucket
        self.rows, self.tokens = 0, 0  # running samples, and their longest length

    def load(self, h: Tensor, mask: Tensor) -> None:
        """Place the running samples, h (n, T', E) and mask (n, T') bool, in their bucket's buffers: rows
        and tokens past them zeroed, padded rows given their first token (ValueError beyond the buckets)."""
        n, tokens = mask.shape
        shape = bucket(n, self.batch_buckets), bucket(tokens, self.length_buckets)
        if shape not in self.buffers:
            raise ValueError(f"{n} samples of {tokens} tokens exceed the largest shape bucket "
                             f"({self.max_rows} x {self.length_buckets[-1]})")
        buffers = self.buffers[shape]
        buffers.h.zero_()
        buffers.h[:n, :tokens] = h
        buffers.mask.zero_()
        buffers.mask[:n, :tokens] = mask
        buffers.mask[n:, 0] = True
        self.shape, self.rows, self.tokens = shape, n, tokens

    def layer(self, layer: int, width: int) -> tuple[Tensor, Tensor]:
        """Replay ``layer`` at ``width`` on the loaded samples: their pooled states (n, E) and exit logits
        (n, C), views of the static buffers that the next replay overwrites."""
        assert self.shape is not None, "load the running samples first"
        self.replays[(layer, width, *self.shape)]()
        buffers = self.buffers[self.shape]
        return buffers.pooled[: self.rows], buffers.logits[: self.rows]

    def keep(self, keep: Tensor) -> None:
        """Keep the running samples where ``keep`` (n,) bool is true, their padding trimmed to the longest
        one left, in the bucket that fits them (the loop's compaction, spec §8)."""
        assert self.shape is not None, "load the running samples first"
        buffers = self.buffers[self.shape]
        h, mask = buffers.h[: self.rows, : self.tokens][keep], buffers.mask[: self.rows, : self.tokens][keep]
        tokens = int(mask.sum(1).max())
        self.load(h[:, :tokens], mask[:, :tokens])


def _layer_step(buffers: _Buffers, folded: FoldedStack, layer: int, width: int,
                pool: Callable[[Tensor, Tensor], Tensor], classifier: nn.Module) -> Callable[[], None]:
    """The work one graph holds: layer ``layer`` at ``width`` on the bucket's states, in place, then the
    pooled states and the exit's logits into their buffers."""
    weights = folded.weights(layer, width)  # views: the graph reads the folded stack where it is

    def step() -> None:
        h = folded_layer(buffers.h, buffers.mask[:, None, None, :], weights, folded.head_dim, folded.eps)
        buffers.h.copy_(h)
        pooled = pool(buffers.h, buffers.mask)
        buffers.pooled.copy_(pooled)
        buffers.logits.copy_(classifier(pooled))

    return step
