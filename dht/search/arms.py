"""Search configurations and their arm lists (spec §2; paper §4.2 and §6.1).

Notation: N_L layers, N_h heads; the first b layers always run with every head and produce the
context; the rest runs in groups of c layers, one head decision per group. An arm's depth L is the
total depth, b layers included. P-DHT's arms run the bottom d = L - k layers with H heads and then
the top k layers with all heads, skipping the layers between.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Arm:
    """One choice of UCB_cp (or of UCB_L with heads=None in tree search)."""

    depth: int  # L: layers that run (for P-DHT: bottom d + top k)
    heads: int | None  # H: heads kept in each dynamic layer; None = chosen per group by UCB_H (tree search)
    top: int = 0  # P-DHT: the top k layers that always run with all heads (0 otherwise)

    def label(self, num_heads: int) -> str:
        """The paper's name, e.g. '6L8H', '4L10H+2L12H', or '6L' for a tree-search depth."""
        if self.heads is None:
            return f"{self.depth}L"
        if self.top:
            bottom = self.depth - self.top
            return (f"{bottom}L{self.heads}H+" if bottom else "") + f"{self.top}L{num_heads}H"
        return f"{self.depth}L{self.heads}H"


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one DHT configuration (a preset or a user file); validated on construction."""

    mode: str  # "tree" (UCB_L, UCB_H, TSB) or "integrated" (UCB_cp, TSB)
    num_layers: int  # N_L
    num_heads: int  # N_h
    b: int  # layers always run with all heads (context)
    c: int  # layers per head decision
    head_options: tuple[int, ...]  # H choices
    arms: tuple[Arm, ...]  # UCB_L's depths (tree) or UCB_cp's (L, H) list (integrated)
    alpha: float = 1.0  # α: reward scale of r_L (Eq. 11)
    beta_h: float = 1.0  # β₁: reward scale of r_H
    beta_cp: float = 1.0  # β_cp: reward scale of r_cp
    # LinUCB exploration α in the UCB score (Alg. 1 line 6); the paper gives no value. At 1.0 the bandits often
    # settled on the cheapest arm within ~50 steps, while the classifier was untrained and every depth had
    # the same loss; 1.5 keeps trying deeper arms until their lower loss shows (docs/results.md, "Exploration").
    explore: float = 1.5
    lam: float = 1.0  # ridge λ of LinUCB and prior precision of TSB
    q: int = 32  # queue size = training batch size (Alg. 3)
    r_max: float = 10.0  # rewards are clipped to [0, r_max]
    feature_samples: int = 512  # training samples passed to build the arm features each epoch
    freeze_after: int | None = None  # P-DHT: epochs trained as F-DHT before freezing the bottom
    top: int = 0  # P-DHT: k top layers kept trainable and always run
    phase_two_arms: tuple[Arm, ...] = field(default=())  # P-DHT: arms after the switch

    def __post_init__(self) -> None:
        if self.mode not in ("tree", "integrated"):
            raise ValueError(f"mode must be 'tree' or 'integrated', got {self.mode!r}")
        if not 1 <= self.b <= self.num_layers or self.c < 1:
            raise ValueError(f"need 1 <= b <= N_L and c >= 1, got b={self.b}, c={self.c}")
        if (self.num_layers - self.b) % self.c:
            raise ValueError(f"N_L - b = {self.num_layers - self.b} is not a multiple of c = {self.c}")
        if not self.head_options or any(not 1 <= h <= self.num_heads for h in self.head_options):
            raise ValueError(f"head options {self.head_options} must lie in 1..{self.num_heads}")
        if not self.arms:
            raise ValueError("a search needs at least one arm")
        for arm in self.arms + self.phase_two_arms:
            self.check_arm(arm)
        for name in ("alpha", "beta_h", "beta_cp", "lam", "r_max", "explore"):
            if not _finite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {str(getattr(self, name))[:40]}")
        for name in ("alpha", "beta_h", "beta_cp", "lam", "r_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.explore < 0 or self.q < 1 or self.feature_samples < 1:
            raise ValueError("explore must be >= 0, q >= 1 and feature_samples >= 1")
        if (self.freeze_after is None) != (not self.phase_two_arms):
            raise ValueError("freeze_after and phase_two_arms go together (P-DHT)")
        if self.top < 0 or (self.freeze_after is not None and self.freeze_after < 1):
            raise ValueError(f"top must be >= 0 and freeze_after >= 1 (epochs), got {self.top} and {self.freeze_after}")

    def check_arm(self, arm: Arm) -> None:
        """Raise ValueError if an arm does not fit this search's shape."""
        bottom = arm.depth - arm.top
        if arm.top:
            if arm.top != self.top or bottom < 0 or arm.depth > self.num_layers:
                raise ValueError(f"arm {arm} does not fit P-DHT with top {self.top} of {self.num_layers} layers")
        elif arm.depth < self.b or arm.depth > self.num_layers or (arm.depth - self.b) % self.c:
            raise ValueError(f"arm depth {arm.depth} must be b + a multiple of c, at most {self.num_layers}")
        if arm.heads is not None and not 1 <= arm.heads <= self.num_heads:
            raise ValueError(f"arm {arm} keeps {arm.heads} heads of {self.num_heads}")
        if (arm.heads is None) != (self.mode == "tree"):  # who chooses H: UCB_H per group, or the arm itself
            raise ValueError(f"arm {arm}: in {self.mode} search heads must be "
                             + ("null (UCB_H chooses them per group)" if self.mode == "tree" else "an integer"))

    @property
    def depths(self) -> tuple[int, ...]:
        """L ∈ {b, b+c, …, N_L}."""
        return tuple(range(self.b, self.num_layers + 1, self.c))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "SearchConfig":
        """A search from a JSON object; a ValueError naming the field for an unknown or missing field, a
        value of the wrong type, or an arm that is not ``{"depth": L, "heads": H or null, "top": k}``."""
        if not isinstance(data, dict):
            raise ValueError(f"a search config is a JSON object of SearchConfig fields, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown search settings: {', '.join(unknown)}")
        required = [name for name, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"missing search settings: {', '.join(missing)}")
        data = dict(data)
        for key in ("arms", "phase_two_arms"):
            if not isinstance(data.get(key, []), (list, tuple)):
                raise ValueError(f"{key} must be a list of arms, got {data[key]!r}")
            data[key] = tuple(arm_from_json(arm, f"{key}[{i}]") for i, arm in enumerate(data.get(key, [])))
        if not isinstance(data["head_options"], (list, tuple)) or not all(_is_int(h) for h in data["head_options"]):
            raise ValueError(f"head_options must be a list of integers, got {data['head_options']!r}")
        data["head_options"] = tuple(data["head_options"])
        for name in ("num_layers", "num_heads", "b", "c", "q", "feature_samples", "top", "freeze_after"):
            if name in data and not (_is_int(data[name]) or (name == "freeze_after" and data[name] is None)):
                raise ValueError(f"{name} must be an integer, got {data[name]!r}")
        for name in ("alpha", "beta_h", "beta_cp", "explore", "lam", "r_max"):
            if name in data and not (_is_int(data[name]) or isinstance(data[name], float)):
                raise ValueError(f"{name} must be a number, got {data[name]!r}")
        return cls(**data)


def _finite(value: float) -> bool:
    """math.isfinite, with an integer too large for a float counted as infinite (not an OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def arm_from_json(arm: Any, where: str) -> Arm:
    """An Arm from ``{"depth": L, "heads": H or null[, "top": k]}`` (or a [L, H, k] list); a ValueError
    naming ``where`` otherwise."""
    if isinstance(arm, (list, tuple)):
        arm = dict(zip(("depth", "heads", "top"), arm))
    if not isinstance(arm, dict):
        raise ValueError(f"{where}: an arm is an object with depth and heads, got {arm!r}")
    unknown = sorted(set(arm) - {"depth", "heads", "top"})
    if unknown or "depth" not in arm or "heads" not in arm:
        raise ValueError(f"{where}: an arm has depth, heads (null: chosen by UCB_H) and optionally top"
                         + (f"; unknown {', '.join(unknown)}" if unknown else f", got {arm!r}"))
    if not _is_int(arm["depth"]) or not (arm["heads"] is None or _is_int(arm["heads"])) \
            or not _is_int(arm.get("top", 0)):
        raise ValueError(f"{where}: depth, heads and top must be integers, got {arm!r}")
    return Arm(**arm)


# --- the arm-list rules (spec §2 table) ----------------------------------------------------
def depths(num_layers: int, b: int, c: int) -> list[int]:
    return list(range(b, num_layers + 1, c))


def tree_arms(num_layers: int, b: int, c: int) -> tuple[Arm, ...]:
    """T-DHT: UCB_L's arms L ∈ {b, b+c, …, N_L}; heads are chosen per group by UCB_H."""
    return tuple(Arm(L, None) for L in depths(num_layers, b, c))


def specialised_arms(num_layers: int, num_heads: int, b: int, c: int, head_options: tuple[int, ...]) -> tuple[Arm, ...]:
    """S-DHT: {L·N_h for L < N_L} ∪ {N_L·H for each H}."""
    shallow = [Arm(L, num_heads) for L in depths(num_layers, b, c) if L < num_layers]
    return tuple(shallow + [Arm(num_layers, H) for H in sorted(head_options)])


def full_arms(num_layers: int, num_heads: int, b: int, c: int, head_options: tuple[int, ...]) -> tuple[Arm, ...]:
    """F-DHT: {b·N_h} ∪ {L·H for L > b, each H}."""
    deeper = [Arm(L, H) for L in depths(num_layers, b, c) if L > b for H in sorted(head_options)]
    return tuple([Arm(b, num_heads)] + deeper)


def partial_arms(num_layers: int, num_heads: int, b: int, c: int, head_options: tuple[int, ...],
                 top: int) -> tuple[Arm, ...]:
    """P-DHT after the switch: d·H + k·N_h with d = L − k for each F-DHT depth L and each H
    (a single arm when d = 0, where H would not matter)."""
    arms: list[Arm] = []
    for L in depths(num_layers, b, c):
        if L - top < 0:
            continue
        options = [num_heads] if L == top else sorted(head_options)
        arms.extend(Arm(L, H, top=top) for H in options)
    return tuple(arms)


def default_head_options(num_heads: int) -> tuple[int, ...]:
    """The paper's {8, 10, 12} of 12 heads, scaled to other head counts."""
    return tuple(sorted({max(1, round(num_heads * f)) for f in (8 / 12, 10 / 12, 1.0)}))


def preset(name: str, num_layers: int, num_heads: int) -> SearchConfig:
    """The four configurations of paper §6.1, by the spec's rules, for a backbone's shape, and ours.

    b = c = 3 for 12 layers (the paper), 2 for a 6-layer backbone such as MiniLM-L6, else 1.
    F-DHT-FINE (ours, docs/front.md "An exit after every layer"): F-DHT's arm rule with b = c = 1, so
    that an arm, and a continuation step, ends after every layer.
    """
    b = c = 3 if num_layers % 3 == 0 and num_layers >= 9 else (2 if num_layers % 2 == 0 else 1)
    if name == "f-dht-fine":
        b = c = 1
    heads = default_head_options(num_heads)
    common = dict(num_layers=num_layers, num_heads=num_heads, b=b, c=c, head_options=heads)
    if name == "t-dht":  # tree search: most thorough, one decision per depth and per group
        return SearchConfig(mode="tree", arms=tree_arms(num_layers, b, c), **common)
    if name == "s-dht":  # integrated, fewest arms: shallow with all heads, or full depth with fewer heads
        return SearchConfig(mode="integrated", arms=specialised_arms(num_layers, num_heads, b, c, heads), **common)
    if name in ("f-dht", "f-dht-fine"):  # integrated, every depth with every head option
        return SearchConfig(mode="integrated", arms=full_arms(num_layers, num_heads, b, c, heads), **common)
    if name == "p-dht":  # F-DHT for 2 epochs, then freeze all but the top k = 2 layers and skip the middle
        return SearchConfig(mode="integrated", arms=full_arms(num_layers, num_heads, b, c, heads), freeze_after=2,
                            top=2, phase_two_arms=partial_arms(num_layers, num_heads, b, c, heads, 2), **common)
    raise ValueError(f"unknown DHT preset {name!r}; choose from {', '.join(SEARCHES)} or give a JSON file")


PRESETS = ("t-dht", "s-dht", "f-dht", "p-dht")  # the paper's four
SEARCHES = PRESETS + ("f-dht-fine",)  # and ours


def read_search_file(spec: str, flag: str = "config") -> SearchConfig:
    """A JSON file of SearchConfig fields (arms as {depth, heads, top}), validated; errors name ``flag``."""
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{flag} {spec!r}: not one of {', '.join(SEARCHES)} and not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    try:
        return SearchConfig.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def load_search(spec: str, num_layers: int, num_heads: int) -> SearchConfig:
    """A preset name, or a JSON file holding SearchConfig fields written for this backbone's shape."""
    if spec in SEARCHES:
        return preset(spec, num_layers, num_heads)
    config = read_search_file(spec, flag="unknown DHT config")
    if (config.num_layers, config.num_heads) != (num_layers, num_heads):
        raise ValueError(f"{spec}: written for {config.num_layers} layers x {config.num_heads} heads, "
                         f"but the backbone has {num_layers} x {num_heads}")
    return config
