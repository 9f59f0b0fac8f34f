"""Adaptive Computation Modules (Wójcik et al., AAAI 2025; ``../shared/spec/acm.md`` §2, §5).

An ACM replaces a dense FFN by N small learners whose partial sums are all valid outputs and a tiny gate
that picks, per token, how many of them run:

    s_n(z)  = W2_n · GELU(W1_n z + b1_n)           W1_n (b, E), b1_n (b,), W2_n (E, b), b = I / N
    h(z, k) = b_out + Σ_{n=1..k} s_n(z)            k ∈ {0, …, N}           (paper eq. 1)

The ACM sees only real tokens: ``forward_tokens`` gathers them from a padded batch, so pad tokens never
run a learner and are never counted, and writes zeros at the pads (masked out as keys and by pooling).

Choices: in training mode a hard Gumbel-softmax sample (eq. 2) with straight-through gradients to the
gate or, with ``gate_grad = aux_only``, the released code's gated execution, through which the task loss
never reaches the gate; in eval mode the argmax of the gate's logits less ``λ·n`` (``gate_bias``); with
``fixed_k`` set, every token runs that many learners and the gate does not run (the static ladder); the
knob and the ladder are inference settings, training ignores them.
Each forward leaves its choices in ``ACM.last`` for the method's losses and per-sample FLOPs.

Dimension legend: M real tokens, E hidden size, N learners, b learner width, K = N + 1 choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GATE_GRADS = ("straight_through", "aux_only")


@dataclass
class ACMChoices:
    """What one ACM forward chose: per real token its sample (M,) and learner count k (M,), and in
    ``sample`` mode the hard one-hot choice ν̂ (M, K) that carries the straight-through gradient."""

    sample: Tensor  # (M,) long, row of the token's sample in the batch
    k: Tensor  # (M,) long, learners run
    onehot: Tensor | None  # (M, K) float, hard choices with gradients (training only)
    batch: int  # B, samples in the batch


class ACM(nn.Module):
    """N learners and a gate in place of one FFN (module docstring). Raises ValueError when the FFN width
    does not split into N learners."""

    def __init__(self, hidden_size: int, intermediate_size: int, learners: int, gate_hidden: int = 16) -> None:
        super().__init__()
        if learners < 1 or intermediate_size % learners:
            raise ValueError(f"an ACM needs N >= 1 learners dividing the FFN width {intermediate_size}, got {learners}")
        E, N, b = hidden_size, learners, intermediate_size // learners
        self.learners, self.width = N, b
        self.w1 = nn.Parameter(torch.empty(N, b, E))
        self.b1 = nn.Parameter(torch.zeros(N, b))
        self.w2 = nn.Parameter(torch.empty(N, E, b))
        self.b_out = nn.Parameter(torch.zeros(E))  # one shared output bias, added for every k (spec §2 [D])
        # g(z) = Linear(16 -> N + 1)(GELU(Linear(E -> 16)(z))) (spec §2 [D]; k_min = 0 for an FFN)
        self.gate = nn.Sequential(nn.Linear(E, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, N + 1))
        for n in range(N):  # the paper's random learners (kaiming-uniform, as nn.Linear)
            nn.init.kaiming_uniform_(self.w1[n], a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.w2[n], a=math.sqrt(5))
        self.gate_grad = "straight_through"
        self.temperature = 0.8  # Gumbel-softmax T (the authors' code)
        self.gate_bias = 0.0  # λ of the inference knob: choice n's logit is lowered by λ·n
        self.fixed_k: int | None = None  # every token runs this many learners, no gate (the static ladder)
        self.last: ACMChoices | None = None

    # --- the learners ------------------------------------------------------------------
    def learner_outputs(self, z: Tensor) -> Tensor:
        """Every learner on every token: z (M, E) -> s (N, M, E)."""
        hidden = F.gelu(torch.baddbmm(self.b1[:, None, :], z.expand(self.learners, *z.shape), self.w1.transpose(1, 2)))
        return torch.bmm(hidden, self.w2.transpose(1, 2))

    def partial_sums(self, z: Tensor, detach: bool = False) -> Tensor:
        """h(z, n) for n = 0..N (eq. 1): z (M, E) -> (N + 1, M, E).

        detach: h(z, n) = sg(h(z, n − 1)) + s_n(z), so learner n gets only the gradient of its own partial
        sum (the authors' ``forward_all`` default); otherwise each partial sum's loss reaches every learner
        in it (``distill_mode: joint``, spec §4)."""
        s = self.learner_outputs(z)
        before = torch.cumsum(s, 0) - s + self.b_out  # h(z, n - 1) = b_out + Σ_{m<n} s_m
        sums = (before.detach() if detach else before) + s
        return torch.cat([self.b_out.expand(1, *z.shape), sums])

    def gated_forward(self, z: Tensor, k: Tensor) -> Tensor:
        """h(z_j, k_j) for every token, running learner n only on the tokens with k_j >= n (spec §5):
        tokens sorted by k (descending, stable), learner n runs as one dense pair of products on the prefix
        that needs it. z (M, E), k (M,) long in 0..N -> (M, E)."""
        order = torch.argsort(k, descending=True, stable=True)
        counts = torch.bincount(k, minlength=self.learners + 1)  # tokens per k
        needing = counts.flip(0).cumsum(0).flip(0).tolist()  # needing[n]: tokens with k >= n
        ordered = z.index_select(0, order)
        out = self.b_out.expand(z.shape[0], -1)
        for n in range(1, self.learners + 1):
            m = needing[n]
            if not m:
                break
            prefix = ordered[:m]
            s = F.linear(F.gelu(F.linear(prefix, self.w1[n - 1], self.b1[n - 1])), self.w2[n - 1])
            out = out.index_add(0, torch.arange(m, device=z.device), s)
        return torch.empty_like(out).index_copy(0, order, out)

    # --- the gate ----------------------------------------------------------------------
    def gate_logits(self, z: Tensor) -> Tensor:
        """Gate logits for choices k = 0..N, lowered by λ·k at inference (the knob): z (M, E) -> (M, K)."""
        logits = self.gate(z)
        if self.gate_bias and not self.training:
            logits = logits - self.gate_bias * torch.arange(self.learners + 1, device=z.device, dtype=logits.dtype)
        return logits

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Real tokens z (M, E) -> (output (M, E), k (M,), hard one-hot choice (M, K) or None)."""
        if self.fixed_k is not None and not self.training:
            k = torch.full((z.shape[0],), self.fixed_k, dtype=torch.long, device=z.device)
            return self.gated_forward(z, k), k, None
        logits = self.gate_logits(z)
        if not self.training:
            k = logits.argmax(-1)
            return self.gated_forward(z, k), k, None
        # Hard Gumbel-softmax (eq. 2): the forward uses one-hot(argmax ν), gradients flow through ν.
        onehot = F.gumbel_softmax(logits, tau=self.temperature, hard=True)
        k = onehot.detach().argmax(-1)
        if self.gate_grad == "aux_only":  # the released code: only the chosen learners run
            return self.gated_forward(z, k), k, onehot
        out = torch.einsum("mk,kme->me", onehot, self.partial_sums(z))  # Σ_n ν̂_n h(z, n)
        return out, k, onehot

    def forward_tokens(self, h: Tensor, mask: Tensor) -> Tensor:
        """The ACM on a padded batch: h (B, T, E), mask (B, T) bool -> (B, T, E), zeros at pad tokens.
        Leaves the choices in ``self.last``."""
        B, T, E = h.shape
        rows = torch.nonzero(mask.reshape(-1)).flatten()
        out, k, onehot = self(h.reshape(B * T, E).index_select(0, rows))
        self.last = ACMChoices(torch.div(rows, T, rounding_mode="floor"), k, onehot, B)
        return h.new_zeros(B * T, E).index_copy(0, rows, out).view(B, T, E)

    # --- initialisation from a dense FFN -----------------------------------------------
    @torch.no_grad()
    def load_slices(self, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor,
                    importance: Tensor | None = None) -> None:
        """Learner n = the n-th block of I / N neurons of the dense FFN (w_in (I, E), b_in (I,), w_out
        (E, I), b_out (E,)), ranked by ``importance`` (I,) descending (spec §4 ``learner_init: slices``);
        at k = N the ACM then equals the FFN exactly. Without ``importance`` the neurons keep their order."""
        order = torch.argsort(importance, descending=True, stable=True) if importance is not None \
            else torch.arange(w_in.shape[0], device=w_in.device)
        blocks = order.view(self.learners, self.width)
        self.w1.copy_(w_in[blocks])  # (N, b, E)
        self.b1.copy_(b_in[blocks])
        self.w2.copy_(w_out[:, blocks].permute(1, 0, 2))  # (N, E, b)
        self.b_out.copy_(b_out)


def neuron_importance(w_out: Tensor, mean_abs_activation: Tensor) -> Tensor:
    """Importance of each FFN neuron (spec §4): its mean |GELU activation| over real tokens (I,) times the
    norm of its column of W2 (E, I) -> (I,)."""
    return mean_abs_activation * w_out.norm(dim=0)


def gate_labels(distances: Tensor, tau: float = 1 / 1.2, k_min: int = 0) -> Tensor:
    """Phase-2 gate labels (paper eq. 4-6, spec §4): d (M, N + 1) distances ||h(z, n) − o|| for n = 0..N ->
    t (M,) long: the smallest n in 2..N with d(n) / d(n − 1) >= τ (the learner that adds too little
    included), N if there is none, and at least k_min."""
    N = distances.shape[1] - 1
    if N < 2:
        return torch.full((distances.shape[0],), max(N, k_min), dtype=torch.long, device=distances.device)
    ratio = distances[:, 1:] / distances[:, :-1].clamp_min(1e-12)  # ratio[:, n-1] = d(n) / d(n-1), n = 1..N
    weak = ratio[:, 1:] >= tau  # n = 2..N
    first = torch.where(weak.any(1), weak.float().argmax(1) + 2, torch.full_like(weak[:, 0], N, dtype=torch.long))
    return first.clamp_min(k_min)
