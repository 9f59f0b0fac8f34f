"""DHT's options (``dht train --method dht``): the search preset, the levers of ours beyond the paper, each
off by default, and the bench's configurations of ours (``OURS``). docs/front.md measures every lever."""

from __future__ import annotations

from dataclasses import dataclass

from dht.search.arms import SEARCHES, read_search_file
from dht.training.options import MethodOptions, option


@dataclass(frozen=True)
class DHTOptions(MethodOptions):
    """DHT's settings: which search (the bandits' own settings live in the search config)."""

    config: str = option("s-dht", f"DHT search: one of {', '.join(SEARCHES)} (the paper's four, then ours: "
                         "F-DHT with an exit after every layer) or a JSON file of SearchConfig fields")
    cost_weight: float = option(0.0, "at inference, each arm's predicted reward minus this times its share of "
                                "the full model's FLOPs: > 0 cheaper arms, < 0 deeper ones", inference=True)
    exit_classifiers: str = option("shared", "shared: one classifier reads every depth (the paper's); per-depth: "
                                   "each exit depth has a classifier of its own (ours)")
    self_distill: float = option(0.0, "weight of self-distilled exits (ours): each training forward's shallower "
                                 "exits learn the deepest exit's detached prediction; 0: the paper")
    full_depth_floor: float = option(0.0, "share of training samples sent to the deepest arm whatever the bandit "
                                     "chose (ours), so the top layers train on them; 0: the paper")
    train_budget: float = option(0.0, "training-time target (ours): the share of the full model's forward FLOPs that "
                                 "the bandits' greedy choices are steered to by a cost weight adapted online; "
                                 "0: none (the paper)")
    layer_lr_cap: float = option(1.0, "ours: each encoder layer's learning rate times the inverse of the share of "
                                 "steps that reached it, up to this cap (dht/training/layer_lr.py); 1: the paper")
    full_depth_warmup: float = option(0.0, "ours: the first W share of the training samples trains the whole network "
                                      "(its own learning-rate schedule), then the encoder freezes and the bandits "
                                      "learn to route it (dht/methods/dht_warmup.py); 0: the paper")
    warmup_lr: float = option(0.0, "ours, with --full-depth-warmup: the peak learning rate of the warm-up and of the "
                              "per-depth exits after it, in place of --lr; 0: --lr")
    continue_above: float = option(1.0, "continuation at inference (ours): a sample whose exit's normalised entropy "
                                   "is above this runs on to the next depth; 1: never (the paper)", inference=True)
    head_sets: str = option("per-sample", "at inference, per-sample: each sample keeps its own heads (the paper); "
                            "per-batch: the samples of a queued batch with the same head count share the set "
                            "with the highest summed expected reward (ours; dense attention, faster on a CPU)",
                            inference=True)

    def __post_init__(self) -> None:
        if not 0 <= self.self_distill < float("inf"):
            raise ValueError(f"--self-distill must be finite and >= 0, got {self.self_distill}")
        if not 0 <= self.full_depth_floor <= 1:
            raise ValueError(f"--full-depth-floor must be in [0, 1], got {self.full_depth_floor}")
        if not 0 <= self.train_budget <= 1:
            raise ValueError(f"--train-budget must be in [0, 1] (0: none), got {self.train_budget}")
        if not 1 <= self.layer_lr_cap < float("inf"):
            raise ValueError(f"--layer-lr-cap must be finite and >= 1 (1: off), got {self.layer_lr_cap}")
        if not 0 <= self.full_depth_warmup < 1:
            raise ValueError(f"--full-depth-warmup must be in [0, 1), got {self.full_depth_warmup}")
        if not 0 <= self.continue_above <= 1:
            raise ValueError(f"--continue-above must be in [0, 1], got {self.continue_above}")
        if not 0 <= self.warmup_lr < float("inf"):
            raise ValueError(f"--warmup-lr must be finite and >= 0 (0: --lr), got {self.warmup_lr}")
        if self.warmup_lr and not self.full_depth_warmup:
            raise ValueError("--warmup-lr needs --full-depth-warmup: it is the warm-up's peak learning rate")
        if self.head_sets not in ("per-sample", "per-batch"):
            raise ValueError(f"--head-sets must be per-sample or per-batch, got {self.head_sets!r}")
        if self.exit_classifiers not in ("shared", "per-depth"):
            raise ValueError(f"--exit-classifiers must be shared or per-depth, got {self.exit_classifiers!r}")

    def check_training_inputs(self) -> None:
        super().check_training_inputs()
        if self.config not in SEARCHES:
            read_search_file(self.config, flag="--config")


# Our configuration beyond the paper's four (docs/front.md, "Levers beyond the paper"): F-DHT with
# self-distilled exits, the one lever that helped over three seeds on AG News: F-DHT's macro-F1 (within a
# tenth of a point) at 0.92 of its inference FLOPs, and the same again with every sample on the 2-layer
# arm (cost weight 1000: 0.334 of BL1's FLOPs), where F-DHT's own 2-layer exit loses 4 points.
# F-DHT-WU-FINE (docs/front.md, "The network first", "An exit after every layer" and "A higher peak learning
# rate for the warm-up"): the network trains alone for half the run at a peak learning rate of 2e-4, then the
# bandits learn to route it frozen; the search has an exit after every layer (f-dht-fine), and at inference
# every sample starts on the cheapest arm (one layer) and an unsure one (normalised entropy above 0.3)
# continues a layer at a time. Over three seeds on AG News: macro-F1 0.8933 at 0.385 of BL1's inference FLOPs
# and 0.602 of its training FLOPs (all-in), against F-DHT's 0.8851 at 0.544 / 0.692; above FastBERT's curve
# on every seed from 0.17 to 0.28 of BL1's inference FLOPs.
OURS = {"f-dht-sd": {"config": "f-dht", "self_distill": 1.0},
        "f-dht-wu-fine": {"config": "f-dht-fine", "self_distill": 1.0, "exit_classifiers": "per-depth",
                          "full_depth_warmup": 0.5, "warmup_lr": 2e-4, "cost_weight": 1000.0,
                          "continue_above": 0.3}}

# The bench rows whose oracle routers `dht bench` scores: F-DHT and ours. Scoring a run's oracles evaluates
# the test split on every one of its routes (5-16 on MiniLM-L6, 3-10 times a full evaluation), the largest
# part of a seed's timing pass on a CPU; the other rows' oracles are one `dht evaluate RUN --oracle` away.
ORACLE_ROWS = ("f-dht", "f-dht-wu-fine")
