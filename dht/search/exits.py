"""Self-distilled exits (ours, not the paper's; issue 23's first lever).

A training step that runs a sample to depth L passes the shallower exit depths of DHT's layout on the
way (after the first b layers, then after each group of c). Reading the classifier there costs a pooling
and one linear layer per exit, and lets those exits learn from the deepest one's prediction, detached
(the deepest exit is the teacher, as FastBERT's branches learn from its final classifier): the shallow
arms the bandits pick at inference then read states the classifier has been trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
