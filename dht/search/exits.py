"""What DHT's shallower exits can do beyond the paper (ours; issue 23's levers).

Self-distilled exits (training): a step that runs a sample to depth L passes the shallower exit depths
of DHT's layout on the way (after the first b layers, then after each group of c). Reading the
classifier there costs a pooling and one linear layer per exit, and lets those exits learn from the
deepest one's prediction, detached (the deepest exit is the teacher, as FastBERT's branches learn from
its final classifier): the shallow arms the bandits pick at inference then read states the classifier
has been trained on.

Continuation (inference): the bandits choose a sample's depth before it runs, from the probe's states.
A sample whose exit is unsure there (normalised entropy above a threshold, FastBERT's uncertainty)
continues to the next depth of the arm list, so the a-priori choice is corrected a posteriori.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dht.search.arms import Arm, SearchConfig
from dht.search.layout import arm_layout


def self_distillation(exit_logits: list[Tensor], final_logits: Tensor) -> Tensor:
    """Mean over exits of KL(p_final ‖ p_exit), averaged over samples; p_final is detached.

    exit_logits: one (B, C) tensor per shallower exit; final_logits: (B, C). Returns a scalar (0 when
    there are no exits)."""
    if not exit_logits:
        return final_logits.new_zeros(())
    target = final_logits.detach().float().log_softmax(-1)
    terms = [F.kl_div(logits.float().log_softmax(-1), target, log_target=True, reduction="batchmean")
             for logits in exit_logits]
    return torch.stack(terms).mean()


def normalised_entropy(logits: Tensor) -> Tensor:
    """H(softmax(logits)) / log C for logits (B, C) -> (B,), in [0, 1] (FastBERT's uncertainty, §3)."""
    log_p = F.log_softmax(logits.float(), -1)
    return -(log_p.exp() * log_p).sum(-1) / math.log(logits.shape[-1])


def next_arms(search: SearchConfig, arms: tuple[Arm, ...]) -> list[int | None]:
    """For each arm (by index), the arm an unsure sample continues to, or None.

    The next arm has the next greater depth in the list and the same head count when the list has it,
    else the most heads at that depth (tree search's arms are depths only). Its layout must extend the
    current one (same first b layers, same groups so far), so the states after the current arm's last
    layer are those the next arm would have had there. P-DHT after its switch has no continuation: its
    top layers always run, so no arm's layout extends another's.
    """
    depths = sorted({arm.depth for arm in arms})
    result: list[int | None] = []
    for arm in arms:
        deeper = [d for d in depths if d > arm.depth]
        if arm.top or not deeper:
            result.append(None)
            continue
        candidates = [i for i, a in enumerate(arms) if a.depth == deeper[0] and not a.top]
        if not candidates:
            result.append(None)
            continue
        same = [i for i in candidates if arms[i].heads == arm.heads]
        best = same[0] if same else max(candidates, key=lambda i: arms[i].heads or 0)
        now, then = arm_layout(search, arm, False), arm_layout(search, arms[best], False)
        extends = now.prefix == then.prefix and then.groups[:len(now.groups)] == now.groups
        result.append(best if extends else None)
    return result
