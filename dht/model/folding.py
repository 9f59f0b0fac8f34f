"""Layer folding for Transformer⁻¹ (spec ``transformer_inverse.md`` §10): the N_L layers as one layer body
over stacked weights, so switching layer or width is an index into tensors that already exist.

``FoldedStack`` stacks every layer's tensors into one (N_L, ...) tensor each, with each layer's heads
permuted once by importance (the q/k/v rows and the output projection's input columns: an exact
re-parameterisation), so a width of w heads is the prefix ``[: w·dh]``. ``body(h, attn_mask, layer, width)``
runs one layer through views of those tensors: no gather of weights, no new graph per path. It equals
``DynamicEncoder``'s layer on the same heads (tested to 1e-5 in float32).

What we did not build of §10: the two ping-pong activation buffers (eager PyTorch allocates each
product's output; the memory this costs is measured, not assumed away).

Dimension legend: B batch, T tokens, E hidden, N_L layers, nh heads, dh head width, w kept heads, I FFN.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.model.encoder import DynamicEncoder


class FoldedStack:
    """The encoder's layers folded into stacked tensors (views, not trainable parameters).

    head_order: per layer, the heads in the order widths take them (most important first); None keeps
    0..nh-1. Raises ValueError for a model with ACMs (their FFNs are not dense) or a bad order.
    """

    def __init__(self, model: DynamicEncoder, head_order: Sequence[Sequence[int]] | None = None) -> None:
        config = model.config
        if config.acm_learners:
            raise ValueError("layer folding needs dense FFNs; this model has ACMs")
        nh, dh, E = config.num_heads, config.head_dim, config.hidden_size
        order = [list(range(nh))] * config.num_layers if head_order is None else [list(o) for o in head_order]
        if len(order) != config.num_layers or any(sorted(o) != list(range(nh)) for o in order):
            raise ValueError(f"head_order must give each of {config.num_layers} layers a permutation of 0..{nh - 1}")
        self.num_heads, self.head_dim, self.eps = nh, dh, config.layer_norm_eps
        self.head_order = [tuple(o) for o in order]
        w_qkv, b_qkv, w_o = [], [], []
        with torch.no_grad():
            for layer, heads in zip(model.layers, order):
                index = torch.tensor(heads, device=layer.attention.qkv.weight.device)
                attention = layer.attention
                # (3, nh, dh, E) -> heads permuted -> (nh, 3, dh, E): a width-w prefix is the first w heads' q, k, v.
                w = attention.qkv.weight.view(3, nh, dh, E).index_select(1, index).transpose(0, 1)
                b = attention.qkv.bias.view(3, nh, dh).index_select(1, index).transpose(0, 1)
                w_qkv.append(w.reshape(3 * nh * dh, E))
                b_qkv.append(b.reshape(3 * nh * dh))
                w_o.append(attention.out.weight.view(E, nh, dh).index_select(1, index).reshape(E, nh * dh))
            self.w_qkv = torch.stack(w_qkv)  # (N_L, nh·3·dh, E), head-major
            self.b_qkv = torch.stack(b_qkv)  # (N_L, nh·3·dh)
            self.w_o = torch.stack(w_o)  # (N_L, E, nh·dh)
            stack = lambda get: torch.stack([get(layer).detach().clone() for layer in model.layers])
            self.b_o = stack(lambda l: l.attention.out.bias)  # (N_L, E)
            self.norm1 = (stack(lambda l: l.attention_norm.weight), stack(lambda l: l.attention_norm.bias))
            self.w_in, self.b_in = stack(lambda l: l.ffn_in.weight), stack(lambda l: l.ffn_in.bias)  # (N_L, I, E)
            self.w_out, self.b_out = stack(lambda l: l.ffn_out.weight), stack(lambda l: l.ffn_out.bias)
            self.norm2 = (stack(lambda l: l.ffn_norm.weight), stack(lambda l: l.ffn_norm.bias))

    def heads(self, layer: int, width: int) -> tuple[int, ...]:
        """The original indices of the heads a width keeps in ``layer`` (ascending)."""
        return tuple(sorted(self.head_order[layer][:width]))

    def weights(self, layer: int, width: int) -> tuple[Tensor, ...]:
        """Views of ``layer``'s tensors at ``width`` heads, in ``folded_layer``'s order (no copy)."""
        dh = self.head_dim
        return (self.w_qkv[layer, : 3 * width * dh], self.b_qkv[layer, : 3 * width * dh],
                self.w_o[layer, :, : width * dh], self.b_o[layer], self.norm1[0][layer], self.norm1[1][layer],
                self.w_in[layer], self.b_in[layer], self.w_out[layer], self.b_out[layer],
                self.norm2[0][layer], self.norm2[1][layer])

    def body(self, h: Tensor, attn_mask: Tensor, layer: int, width: int) -> Tensor:
        """One folded layer, eval mode (no dropout): h (B, T, E), attn_mask (B, 1, 1, T) bool -> (B, T, E),
        keeping the layer's ``width`` most important heads."""
        return folded_layer(h, attn_mask, self.weights(layer, width), self.head_dim, self.eps)


def folded_layer(h: Tensor, attn_mask: Tensor, weights: tuple[Tensor, ...], head_dim: int, eps: float,
                 head_mask: Tensor | None = None) -> Tensor:
    """A post-LayerNorm BERT layer on given weights (``FoldedStack.weights``): the function one compiled
    artefact per shape serves for every layer and width, since the weights are its inputs. ``head_mask``
    (B, w) scales each kept head's context (Michel et al.'s mask m, for ``head_importance``)."""
    w_qkv, b_qkv, w_o, b_o, g1, beta1, w_in, b_in, w_out, b_out, g2, beta2 = weights
    B, T, E = h.shape
    width = w_qkv.shape[0] // (3 * head_dim)
    qkv = F.linear(h, w_qkv, b_qkv)
    q, key, v = qkv.view(B, T, width, 3, head_dim).permute(3, 0, 2, 1, 4)  # each (B, w, T, dh)
    context = F.scaled_dot_product_attention(q, key, v, attn_mask=attn_mask)
    if head_mask is not None:
        context = context * head_mask[:, :, None, None]
    context = context.transpose(1, 2).reshape(B, T, width * head_dim)
    h = F.layer_norm(h + F.linear(context, w_o, b_o), (E,), g1, beta1, eps)
    ffn = F.linear(F.gelu(F.linear(h, w_in, b_in)), w_out, b_out)
    return F.layer_norm(h + ffn, (E,), g2, beta2, eps)


def head_importance(model: DynamicEncoder, batches: Iterable[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """I_{l,h} = the mean over samples of |Σ_tokens ∂L/∂m_{l,h}| at m = 1, L the cross-entropy of the deepest
    exit, m a mask on each head's context (Michel et al., 2019, eq. 2; spec §3). Eval mode (no dropout).

    batches: (input_ids (B, T), mask (B, T) bool, labels (B,)). Returns (N_L, nh), larger = more important."""
    model.eval()
    folded = FoldedStack(model)
    L, nh = model.config.num_layers, model.config.num_heads
    total, count = torch.zeros(L, nh), 0
    for input_ids, mask, labels in batches:
        with torch.no_grad():
            h = model.embed(input_ids)
        m = torch.ones(L, len(input_ids), nh, device=h.device, requires_grad=True)
        for layer in range(L):
            h = folded_layer(h, mask[:, None, None, :], folded.weights(layer, nh), folded.head_dim, folded.eps,
                             m[layer])
        loss = F.cross_entropy(model.classifier(model.pool(h, mask)), labels, reduction="sum")  # per-sample gradients
        (gradient,) = torch.autograd.grad(loss, m)
        total += gradient.abs().sum(1).cpu()
        count += len(input_ids)
    return total / max(count, 1)
