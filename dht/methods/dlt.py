"""Dynamic Layer Tying (Hay & Wolf, ICLR 2024): a Q-learning agent ties layers to earlier ones while the
network trains, so fewer parameters train. The exact system is ``../shared/spec/layer_tying.md``.

Every ``decision_every`` (K) steps one layer i (cycling 1..N_L-1; an episode is one pass) gets an action
a ∈ {0..i}: a < i ties it to a, a = i makes it independent (§2). The reward for the previous decision is
taken first, on a fresh probe batch: r = clip(-exp(L_probe), -10, 10) (§2), then the agent's one-sample
Q update, then the next action. The weights follow ``dht.model.tying`` (§3). Inference runs every layer
with the tied weights: the inference FLOP ratio is 1 by construction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dht.data import Batch, collate
from dht.flops import full_forward_flops
from dht.model import DynamicEncoder
from dht.model.tying import (
    TIE_GRADIENTS,
    apply_state,
    fold_shared_gradients,
    tie_layer,
    trainable_elements,
    unique_tensors,
    untie_layer,
)
from dht.training.config import RunConfig, run_file
from dht.training.hooks import BenchRun, Method, StepResult, register
from dht.training.options import MethodOptions, option

EPSILON_MIN = 0.01
HIDDEN = 128  # the Q-network's hidden width (§2)


@dataclass(frozen=True)
class DLTOptions(MethodOptions):
    """The agent and tying settings of spec §2-§4."""

    decision_every: int = option(4, "K: training steps between two tying decisions (>= 1)")
    tie_gradients: str = option("source_only", "source_only: a tied layer's weights learn only at their root's "
                                "position (the authors' code); shared: from every position using them (ALBERT)")
    agent: str = option("q", "q: the Q-learning agent; random: uniform actions, no learning (the control)")
    epsilon_decay: float | None = option(None, "per-episode decay of epsilon (default: reach 0.01 after 0.6 of the "
                                         "run's episodes)")
    freeze_after: float = option(0.9, "stop acting after this share of the training steps, in (0, 1]")
    initial_state: str = option("identity", "identity: every layer independent; layer0: all tied to layer 0")
    bootstrap: str = option("next_layer", "the Q target's max over the slice of the layer asked next "
                            "(next_layer) or of the same layer (same_layer, the authors' code)")
    probe_rows: int = option(32, "training rows of the fresh probe batch whose loss gives the reward")
    tying_from: str = option("", "a finished dlt run: train with its final tying state fixed, no agent")

    def __post_init__(self) -> None:
        if self.decision_every < 1:
            raise ValueError(f"--decision-every must be >= 1, got {self.decision_every}")
        choices = {"tie_gradients": TIE_GRADIENTS, "agent": ("q", "random"),
                   "initial_state": ("identity", "layer0"), "bootstrap": ("next_layer", "same_layer")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if not 0 < self.freeze_after <= 1:
            raise ValueError(f"--freeze-after must be in (0, 1], got {self.freeze_after}")
        if self.epsilon_decay is not None and not 0 < self.epsilon_decay <= 1:
            raise ValueError(f"--epsilon-decay must be in (0, 1], got {self.epsilon_decay}")
        if self.probe_rows < 1:
            raise ValueError(f"--probe-rows must be >= 1, got {self.probe_rows}")

    def check_training_inputs(self) -> None:
        super().check_training_inputs()
        if self.tying_from:
            found_state(self.tying_from)


def found_state(run: str) -> list[int]:
    """The final tying state of a finished dlt run (``--tying-from``); ValueError naming the flag."""
    folder = Path(run)
    if not run_file(folder).is_file() or not (folder / "method.json").is_file():
        raise ValueError(f"--tying-from {run}: not a finished dlt run (needs run.json and method.json)")
    try:
        state = json.loads((folder / "method.json").read_text(encoding="utf-8")).get("state")
    except (ValueError, UnicodeDecodeError, AttributeError):
        state = None
    if not isinstance(state, list) or not all(type(s) is int for s in state):
        raise ValueError(f"--tying-from {run}: its method.json holds no tying state")
    check_state(state, f"--tying-from {run}")
    return state


def check_state(state: list[int], where: str) -> None:
    """A tying state: s[0] = 0, each s[i] an earlier or the same layer, and a root (s[s[i]] = s[i])."""
    if not state or state[0] != 0 or any(not 0 <= s <= i or state[s] != s for i, s in enumerate(state)):
        raise ValueError(f"{where}: {state} is not a tying state (s[0] = 0, s[i] <= i, s[s[i]] = s[i])")


def q_slice(layer: int) -> slice:
    """Layer i's Q-values among the N_L(N_L+1)/2 outputs: [i(i+1)/2, i(i+1)/2 + i] (spec §2)."""
    start = layer * (layer + 1) // 2
    return slice(start, start + layer + 1)


def epsilon_decay_for(episodes: int) -> float:
    """The per-episode decay that takes epsilon from 1 to 0.01 at 60% of ``episodes`` (spec §2 [D])."""
    return EPSILON_MIN ** (1 / max(1.0, 0.6 * episodes))


class TyingAgent:
    """Online one-sample Q-learning over the tying state, epsilon-greedy (spec §2): Q-network
    N_L -> 128 -> ReLU -> N_L(N_L+1)/2, AdamW (lr 1e-3, weight decay 0.01), gamma 0.99, no replay, no target
    network. ``learn=False`` is the random control: epsilon 1 throughout and no updates."""

    def __init__(self, num_layers: int, seed: int, learn: bool = True, gamma: float = 0.99) -> None:
        with torch.random.fork_rng(devices=[]):  # its initialisation leaves the training RNG untouched
            torch.manual_seed(seed)
            self.q = nn.Sequential(nn.Linear(num_layers, HIDDEN), nn.ReLU(),
                                   nn.Linear(HIDDEN, num_layers * (num_layers + 1) // 2)).double()
        self.optimizer = torch.optim.AdamW(self.q.parameters(), lr=1e-3, weight_decay=0.01)
        self.generator = torch.Generator().manual_seed(seed)
        self.learn, self.gamma, self.epsilon = learn, gamma, 1.0

    def values(self, state: list[int], layer: int) -> Tensor:
        """Q(s)[slice of ``layer``], (layer + 1,)."""
        with torch.no_grad():
            return self.q(torch.tensor(state, dtype=torch.float64))[q_slice(layer)]

    def act(self, state: list[int], layer: int) -> tuple[int, bool]:
        """(action in 0..layer, whether it was drawn at random)."""
        if not self.learn or torch.rand((), generator=self.generator).item() < self.epsilon:
            return int(torch.randint(layer + 1, (), generator=self.generator)), True
        return int(self.values(state, layer).argmax()), False

    def update(self, state: list[int], layer: int, action: int, reward: float, next_state: list[int],
               next_layer: int) -> float:
        """One step on (Q(s)[slice layer][a] - (r + gamma max Q(s')[slice next_layer]))^2; the loss."""
        if not self.learn:
            return 0.0
        with torch.no_grad():
            target = reward + self.gamma * self.values(next_state, next_layer).max()
        predicted = self.q(torch.tensor(state, dtype=torch.float64))[q_slice(layer)][action]
        loss = F.mse_loss(predicted, target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def end_episode(self, decay: float) -> None:
        if self.learn:
            self.epsilon = max(EPSILON_MIN, self.epsilon * decay)


@register
class DLTMethod(Method):
    """Dynamic layer tying: the full plan on every sample, layers tied and untied by the agent."""

    name = "dlt"
    title = "DLT (dynamic layer tying)"
    Options = DLTOptions

    def __init__(self, model: DynamicEncoder, run: RunConfig) -> None:
        super().__init__(model, run)
        self.options: DLTOptions
        N = model.config.num_layers
        self.state = list(range(N))  # s: identity, every layer independent
        self.agent = TyingAgent(N, run.train.seed + 11, learn=self.options.agent == "q")
        self.probe_generator = torch.Generator().manual_seed(run.train.seed + 12)
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0  # training steps taken
        self.layer = 1  # the layer asked next
        self.pending: dict[str, Any] | None = None  # the decision awaiting its reward
        self.history: list[dict[str, Any]] = []  # one record per decision (tying.jsonl)
        self.trace: list[list[int]] = []  # s at every step (tying.png)
        self.trainable: list[int] = []  # trainable elements at every step
        self.memory_peak = 0  # analytic training-state bytes, the run's peak
        self.memory_sum = 0  # ... summed over steps, for the mean
        self.total_steps = 0
        self.train_ids: list[list[int]] = []
        self.train_labels: list[int] = []
        self.pad_id = 0

    @classmethod
    def bench_runs(cls, num_layers: int) -> list[BenchRun]:
        return [BenchRun("dlt")]

    # --- set-up ---------------------------------------------------------------------------
    def initial_ties(self) -> None:
        """Tie as the run starts: --tying-from's state, or all to layer 0 (--initial-state layer0). Done when
        training starts, not in ``initialise``: a resumed run loads its weights with every layer on its own
        storage, then re-ties from its saved state."""
        if self.options.tying_from:
            self.state = found_state(self.options.tying_from)
            if len(self.state) != self.model.config.num_layers:
                raise ValueError(f"--tying-from {self.options.tying_from}: its state has {len(self.state)} layers, "
                                 f"this backbone {self.model.config.num_layers}")
            apply_state(self.model, self.state, self.options.tie_gradients)
        elif self.options.initial_state == "layer0":
            for layer in range(1, len(self.state)):
                self.state = tie_layer(self.model, self.state, layer, 0, self.options.tie_gradients)

    def optimizer_parameters(self) -> list[nn.Parameter]:
        """Every parameter BL1 trains, tied or not: a layer untied later needs its optimizer entry."""
        return bl1_parameters(self.model)

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def on_train_start(self, ids: list[list[int]], labels: list[int], pad_id: int, total_steps: int) -> None:
        self.train_ids, self.train_labels, self.pad_id, self.total_steps = ids, labels, pad_id, total_steps
        if self.step == 0 and not self.trace:  # a new run, not a resumed one
            self.initial_ties()

    @property
    def acting(self) -> bool:
        """Whether the agent still decides: not with --tying-from, not after --freeze-after of the steps."""
        return not self.options.tying_from and self.step < self.options.freeze_after * self.total_steps

    @property
    def episodes(self) -> int:
        """E_ep: passes over layers 1..N_L-1 in the run, ⌊steps / (K (N_L - 1))⌋ (spec §2)."""
        return self.total_steps // (self.options.decision_every * (len(self.state) - 1))

    # --- training -------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> StepResult:
        """At every K-th step while acting: reward and Q update for the previous decision, then the next
        layer's action (spec §2); then one BL1 step on the full plan with the tied weights."""
        overhead = 0.0
        if self.step % self.options.decision_every == 0 and (self.acting or self.pending is not None):
            overhead += self._finish_decision()
            if self.acting:
                self._decide()
        logits = self.model(batch.input_ids, batch.attention_mask)
        loss = F.cross_entropy(logits, batch.labels)
        # source_only: tied layers have no weight gradient, frozen_layers() counts them at 2x their forward;
        # shared: they train through their root, nothing is frozen and every layer costs 3x.
        flops, full = self.train_cost(batch, self.model.full_plan())
        self.step += 1
        self.trace.append(list(self.state))
        self.trainable.append(trainable_elements(self.model))
        memory = self.analytic_memory(self.trainable[-1])
        self.memory_peak, self.memory_sum = max(self.memory_peak, memory), self.memory_sum + memory
        extra = {"trainable": self.trainable[-1], "independent": sum(s == i for i, s in enumerate(self.state))}
        return StepResult(loss, flops, full, flops + overhead, extra=extra)

    def _decide(self) -> None:
        layer, before = self.layer, list(self.state)
        action, random = self.agent.act(before, layer)
        if action < layer:
            self.state = tie_layer(self.model, self.state, layer, action, self.options.tie_gradients, self.optimizer)
        else:
            self.state = untie_layer(self.model, self.state, layer, self.optimizer)
        self.pending = {"step": self.step, "layer": layer, "epsilon": self.agent.epsilon, "action": action,
                        "random": random, "state_before": before, "state_after": list(self.state),
                        "q_values": [round(v, 4) for v in self.agent.values(before, layer).tolist()]}
        self.layer = layer + 1 if layer + 1 < len(self.state) else 1
        if self.layer == 1:  # an episode ends
            decay = self.options.epsilon_decay or epsilon_decay_for(self.episodes)
            self.agent.end_episode(decay)

    def _finish_decision(self) -> float:
        """Reward the pending decision on a fresh probe batch and update the agent; its FLOPs."""
        if self.pending is None:
            return 0.0
        # Under torchrun every rank draws the probe's rows (its generator stays alike), rank 0 alone runs
        # the probe, and every rank's agent learns rank 0's reward, so the agents stay alike.
        rows = torch.randperm(len(self.train_ids), generator=self.probe_generator)[:self.options.probe_rows].tolist()
        loss, flops = self.probe_loss(rows) if self.world.main else (0.0, 0.0)
        loss = float(self.world.share(loss))
        reward = max(-10.0, min(10.0, -math.exp(loss)))
        bootstrap = self.layer if self.options.bootstrap == "next_layer" else self.pending["layer"]
        td = self.agent.update(self.pending["state_before"], self.pending["layer"], self.pending["action"], reward,
                               list(self.state), bootstrap)
        self.history.append({**self.pending, "reward": round(reward, 5), "probe_loss": round(loss, 5),
                             "td_loss": round(td, 6), "trainable": trainable_elements(self.model)})
        self.pending = None
        N = len(self.state)
        q_flops = 3 * 2 * (N * HIDDEN + HIDDEN * N * (N + 1) // 2)  # one update (forward + backward)
        return flops + (q_flops if self.world.main else 0.0)  # every rank updates; one process's count

    @torch.no_grad()
    def probe_loss(self, rows: list[int]) -> tuple[float, float]:
        """Mean cross-entropy of the training ``rows`` (``probe_rows`` random ones), eval mode (spec §2);
        its FLOPs."""
        batch = collate([self.train_ids[i] for i in rows], [self.train_labels[i] for i in rows], rows,
                        self.pad_id).to(self.device)
        was_training = self.model.training
        self.model.eval()
        loss = F.cross_entropy(self.model(batch.input_ids, batch.attention_mask), batch.labels)
        self.model.train(was_training)
        lengths = batch.attention_mask.sum(1).tolist()
        return float(loss), float(sum(full_forward_flops(self.model.config, t) for t in lengths))

    def after_backward(self) -> None:
        if self.options.tie_gradients == "shared":
            fold_shared_gradients(self.model, self.state)

    def analytic_memory(self, trainable: int | None = None) -> int:
        """Training-state bytes (spec §5 (a)): 4 per unique weight, 4 per trainable (gradient), 8 per
        trainable (AdamW's two moments); ``trainable`` when the caller has just counted it."""
        unique = sum(t.numel() for t in unique_tensors(list(self.model.parameters())))
        return 4 * unique + 12 * (trainable_elements(self.model) if trainable is None else trainable)

    # --- state and report ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """s, the decision cursor, epsilon, the Q-network and its optimizer, the generators, the history:
        a resumed run makes the same decisions."""
        return {"state": list(self.state), "step": self.step, "layer": self.layer, "pending": self.pending,
                "epsilon": self.agent.epsilon, "q": self.agent.q.state_dict(),
                "q_optimizer": self.agent.optimizer.state_dict(), "agent_generator": self.agent.generator.get_state(),
                "probe_generator": self.probe_generator.get_state(), "history": self.history, "trace": self.trace,
                "trainable": self.trainable, "memory_peak": self.memory_peak, "memory_sum": self.memory_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the agent and re-tie the layers; the model's weights are loaded first, each layer on its
        own storage (tied layers were saved as copies of their roots)."""
        self.state = [int(s) for s in state["state"]]
        check_state(self.state, "method state")
        apply_state(self.model, self.state, self.options.tie_gradients)
        self.step, self.layer, self.pending = state["step"], state["layer"], state["pending"]
        self.agent.epsilon = state["epsilon"]
        self.agent.q.load_state_dict(state["q"])
        q_optimizer = state["q_optimizer"]
        q_optimizer["state"] = {int(k): v for k, v in q_optimizer["state"].items()}  # JSON made the ids strings
        self.agent.optimizer.load_state_dict(q_optimizer)
        self.agent.generator.set_state(state["agent_generator"])
        self.probe_generator.set_state(state["probe_generator"])
        self.history, self.trace = state["history"], state["trace"]
        self.trainable = state["trainable"]
        self.memory_peak, self.memory_sum = state["memory_peak"], state["memory_sum"]

    def report(self, output: Path) -> dict[str, Any]:
        """tying.jsonl (one record per decision), tying.png, and the parameter and memory figures (§5)."""
        self._finish_decision()  # a decision made in the last K steps (--freeze-after 1) gets its reward
        with open(output / "tying.jsonl", "w", encoding="utf-8") as file:
            for record in self.history:
                file.write(json.dumps(record) + "\n")
        if self.trace:
            plot_tying(self.trace, self.history, output / "tying.png")
        full = full_trainable(self.model)
        unique = sum(t.numel() for t in unique_tensors(list(self.model.parameters())))
        untied = unique + sum(p.numel() for layer, root in enumerate(self.state) if root != layer
                              for p in self.model.layers[layer].parameters())
        full_memory = 4 * untied + 12 * full
        trainable = self.trainable or [trainable_elements(self.model)]
        changes = [(r["state_before"][r["layer"]], r["state_after"][r["layer"]], r["layer"]) for r in self.history]
        return {"dlt": {
            "state_final": list(self.state),
            "independent_layers_final": sum(root == layer for layer, root in enumerate(self.state)),
            "trainable_params_mean": sum(trainable) / len(trainable), "trainable_params_final": trainable[-1],
            "trainable_params_min": min(trainable), "trainable_params_bl1": full,
            "trainable_params_final_ratio": trainable[-1] / full,
            "trainable_params_mean_ratio": sum(trainable) / len(trainable) / full,
            # The peak is BL1's whenever the run starts untied (--initial-state identity): memory a machine must
            # have; the mean and final show what tying saved along the way.
            "memory_analytic_bl1_mb": full_memory / 1e6, "memory_analytic_peak_mb": self.memory_peak / 1e6,
            "memory_analytic_peak_ratio": self.memory_peak / full_memory,
            "memory_analytic_mean_ratio": self.memory_sum / max(1, len(self.trainable)) / full_memory,
            "memory_analytic_final_ratio": self.analytic_memory() / full_memory,
            # transitions, not actions: "stay independent" and a re-tie to the same root change nothing
            "decisions": len(self.history),
            "ties": sum(before != after and after != layer for before, after, layer in changes),
            "unties": sum(before != after and after == layer for before, after, layer in changes),
            "epsilon_final": self.agent.epsilon, "inference_flop_ratio": 1.0}}


def bl1_parameters(model: DynamicEncoder) -> list[nn.Parameter]:
    """What BL1 trains on this model: every parameter that trains now or belongs to a layer."""
    layers = {id(p) for layer in model.layers for p in layer.parameters()}
    return [p for p in model.parameters() if p.requires_grad or id(p) in layers]


def full_trainable(model: DynamicEncoder) -> int:
    """BL1's trainable elements on this model, whatever is tied now (spec §5)."""
    return sum(p.numel() for p in bl1_parameters(model))


def plot_tying(trace: list[list[int]], history: list[dict[str, Any]], out: Path) -> None:
    """The tying state over training (layers x steps: the layer whose weights each uses), with the
    independent layers and epsilon below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    states = torch.tensor(trace).T  # (N_L, steps)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=(2, 1))
    image = top.imshow(states.numpy(), aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=(0, states.shape[1], states.shape[0] - 0.5, -0.5))
    top.set_ylabel("layer")
    top.set_title("Dynamic layer tying: the layer whose weights each layer uses")
    figure.colorbar(image, ax=top, label="weights of layer")
    independent = (states == torch.arange(states.shape[0])[:, None]).sum(0)
    bottom.plot(independent.tolist(), label="independent layers")
    bottom.set_xlabel("training step")
    if history:
        twin = bottom.twinx()
        twin.plot([r["step"] for r in history], [r["epsilon"] for r in history], color="tab:orange",
                  label="epsilon")
        twin.set_ylabel("epsilon")
    bottom.set_ylabel("independent layers")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
