"""Analytic FLOP counts of execution plans (spec §7; paper §6.2, Tables 1-2).

One multiply-add counts as 2 FLOPs, as in ``torch.utils.flop_counter``. For a layer that keeps k of
nh heads (dh = E / nh) on a sample of T tokens:

    QKV projection      2 · T · E · 3·k·dh
    scores  Q Kᵀ        2 · T · T · k·dh
    context A V         2 · T · T · k·dh
    output projection   2 · T · k·dh · E
    FFN                 2 · T · E · I · 2          (does not depend on the heads)

plus the classifier, 2 · E · C per sample. Left out, because they are linear in T·E and small beside
the matrix products (and torch's counter leaves them out too): embedding look-ups, LayerNorm, softmax,
GELU, dropout, bias and residual additions, the attention mask, and the mean pooling.

Training counts forward + backward, as autograd executes it. The backward of a matrix product costs
one forward for the weight gradient (if the weight is trainable) and one for the input gradient (if
anything below needs gradients); the attention products always pass gradients to Q, K and V once the
layer's QKV output needs them. Hence a trainable layer costs 3x its forward, less one QKV projection
when nothing below it is trainable (no input gradient); a frozen layer costs 2x when a trainable part
lies below it (gradients still flow through) and 1x otherwise. With trainable embeddings (BL1) every
layer costs exactly 3x.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from dht.model.config import EncoderConfig
from dht.model.plan import ExecutionPlan


def layer_forward_flops(config: EncoderConfig, tokens: int, kept_heads: int) -> int:
    """Forward FLOPs of one layer keeping ``kept_heads`` heads on a sample of ``tokens`` tokens."""
    T, E, I = tokens, config.hidden_size, config.intermediate_size
    width = kept_heads * config.head_dim  # k·dh
    projections = 2 * T * E * 3 * width + 2 * T * width * E
    attention = 2 * (2 * T * T * width)
    ffn = 2 * 2 * T * E * I
    return projections + attention + ffn


def classifier_flops(config: EncoderConfig) -> int:
    """Forward FLOPs of the classifier on one pooled vector."""
    return 2 * config.hidden_size * config.num_classes


# Every sample's cost is counted, one plan at a time, so the counts are memoised: profiling BL1's
# evaluation on an H100 (BERT-base shape), adding up each sample's layers in Python took nearly as
# long as the forward passes themselves.
@lru_cache(maxsize=1 << 16)
def plan_forward_flops(config: EncoderConfig, plan: ExecutionPlan, tokens: int, classify: bool = True) -> int:
    """Forward FLOPs of ``plan`` on one sample of ``tokens`` tokens (with the classifier if asked)."""
    total = sum(layer_forward_flops(config, tokens, len(kept)) for kept in plan.heads)
    return total + (classifier_flops(config) if classify else 0)


def qkv_forward_flops(config: EncoderConfig, tokens: int, kept_heads: int) -> int:
    """Forward FLOPs of one layer's QKV projection alone."""
    return 2 * tokens * config.hidden_size * 3 * kept_heads * config.head_dim


def plan_train_flops(config: EncoderConfig, plan: ExecutionPlan, tokens: int,
                     frozen: Iterable[int] = (), embeddings_trainable: bool = True) -> int:
    """Forward + backward FLOPs of one training step of ``plan`` on one sample (module docstring)."""
    return _plan_train_flops(config, plan, tokens, frozenset(frozen), embeddings_trainable)


@lru_cache(maxsize=1 << 16)
def _plan_train_flops(config: EncoderConfig, plan: ExecutionPlan, tokens: int, frozen: frozenset[int],
                      embeddings_trainable: bool) -> int:
    grad_below = embeddings_trainable  # does anything below the current layer need gradients?
    total = 0
    for layer, kept in zip(plan.layers, plan.heads):
        forward = layer_forward_flops(config, tokens, len(kept))
        if layer in frozen:
            total += 2 * forward if grad_below else forward
        else:
            total += 3 * forward - (0 if grad_below else qkv_forward_flops(config, tokens, len(kept)))
            grad_below = True
    return total + (3 if grad_below else 2) * classifier_flops(config)


def full_forward_flops(config: EncoderConfig, tokens: int) -> int:
    """Forward FLOPs of the full model (N_L layers, N_h heads) on one sample: the ratios' denominator."""
    return config.num_layers * layer_forward_flops(config, tokens, config.num_heads) + classifier_flops(config)


def full_train_flops(config: EncoderConfig, tokens: int) -> int:
    """Training FLOPs of the full model with every layer trainable on one sample."""
    return 3 * full_forward_flops(config, tokens)


def linucb_flops(samples: int, arms: int, dim: int, update: bool) -> float:
    """Approximate FLOPs of LinUCB: a decision scores every arm (θᵀw + wᵀA⁻¹w ≈ 2d² + 4d);
    an update is a rank-one Sherman–Morrison step (≈ 6d² + 4d) on the chosen arm."""
    if update:
        return samples * (6 * dim * dim + 4 * dim)
    return samples * arms * (2 * dim * dim + 4 * dim)


def thompson_flops(samples: int, arms: int, dim: int, update: bool, newton_steps: int = 3) -> float:
    """Approximate FLOPs of the logistic TS semi-bandit: a decision draws and scores every arm
    (≈ 4d each); an update runs Newton steps over the kept arms (≈ 8d per sample and step)."""
    if update:
        return samples * arms * dim * 8 * max(newton_steps, 1)
    return samples * arms * 4 * dim


# --- Adaptive Computation Modules (../shared/spec/acm.md §6) -------------------------------
def acm_learner_flops(config: EncoderConfig) -> int:
    """Forward FLOPs p of one ACM learner on one token: 2·E·b + 2·b·E with b = I / N (N learners cost
    one dense FFN)."""
    return 4 * config.hidden_size * (config.intermediate_size // config.acm_learners)


def acm_gate_flops(config: EncoderConfig) -> int:
    """Forward FLOPs g of one ACM gate on one token: 2·(E·h + h·(N + 1)), h the gate's hidden width."""
    hidden = config.acm_gate_hidden
    return 2 * (config.hidden_size * hidden + hidden * (config.acm_learners + 1))


def acm_layer_forward_flops(config: EncoderConfig, tokens: int, learners_run: int, gated: bool = True) -> int:
    """Forward FLOPs of one ACM layer on a sample of ``tokens`` real tokens whose tokens ran
    ``learners_run`` learners in all (Σ_j k_j): the layer without its FFN, plus each token's gate (when
    ``gated``) and its learners."""
    dense_ffn = 2 * 2 * tokens * config.hidden_size * config.intermediate_size
    rest = layer_forward_flops(config, tokens, config.num_heads) - dense_ffn
    return rest + (tokens * acm_gate_flops(config) if gated else 0) + learners_run * acm_learner_flops(config)


def acm_forward_flops(config: EncoderConfig, tokens: int, learners_run: Iterable[int], gated: bool = True) -> int:
    """Forward FLOPs of an ACM model on one sample: ``learners_run`` gives Σ_j k_j for each layer."""
    return sum(acm_layer_forward_flops(config, tokens, run, gated) for run in learners_run) + classifier_flops(config)


def acm_train_flops(config: EncoderConfig, tokens: int, learners_run: Iterable[int], gate_grad: str) -> int:
    """Phase-3 training FLOPs of an ACM model on one sample (spec §6): 3× the forward, where
    ``straight_through`` runs all N learners on every token and ``aux_only`` only the chosen ones."""
    if gate_grad == "straight_through":
        learners_run = [tokens * config.acm_learners] * config.num_layers
    return 3 * acm_forward_flops(config, tokens, learners_run)


def acm_distill_flops(config: EncoderConfig, tokens: int) -> int:
    """Phase-1 FLOPs on one sample (spec §6): the teacher's forward, and in every layer all N learners
    forward and backward on every token; a learner's first product needs no input gradient (its input is
    the teacher's), so a learner costs 2·(2·E·b) + 3·(2·b·E) = 2.5·p."""
    learners = config.num_layers * tokens * config.acm_learners * acm_learner_flops(config) * 5 // 2
    return full_forward_flops(config, tokens) + learners


def acm_gate_train_flops(config: EncoderConfig, tokens: int) -> int:
    """Phase-2 FLOPs on one sample (spec §6): the teacher's forward, all N learners forward (frozen) and
    every gate forward and backward (3×) on every token of every layer."""
    per_token = config.acm_learners * acm_learner_flops(config) + 3 * acm_gate_flops(config)
    return full_forward_flops(config, tokens) + config.num_layers * tokens * per_token
