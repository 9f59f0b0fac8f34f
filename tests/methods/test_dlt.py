"""Dynamic layer tying (layer_tying.md §7): tie/untie semantics, gradient modes, the agent's Q slices and
epsilon, trainable counts and FLOPs, save/load/resume with tied layers, and invalid options."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, tiny_config
from safetensors.torch import load_file

from dht.cli import main
from dht.data import Batch
from dht.flops import classifier_flops, layer_forward_flops
from dht.methods.dlt import DLTMethod, DLTOptions, TyingAgent, epsilon_decay_for, q_slice
from dht.model import DynamicEncoder, resolve_backbone
from dht.model.tying import fold_shared_gradients, root_of, tie_layer, trainable_elements, untie_layer
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import train


def layer_output(model: DynamicEncoder, layer: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model.layers[layer](h, mask[:, None, None, :], tuple(range(model.config.num_heads)))


def shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_a_tied_layer_computes_with_its_roots_weights_and_untie_copies(tiny_model):
    model, state = tiny_model, [0, 1, 2, 3]
    h = torch.randn(2, 5, model.config.hidden_size)
    mask = torch.ones(2, 5, dtype=torch.bool)
    state = tie_layer(model, state, 3, 1)
    assert state == [0, 1, 2, 1]
    assert torch.equal(layer_output(model, 3, h, mask), layer_output(model, 1, h, mask))  # bitwise
    assert all(shares(a, b) for a, b in zip(model.layers[3].parameters(), model.layers[1].parameters()))
    assert not any(p.requires_grad for p in model.layers[3].parameters())
    state = untie_layer(model, state, 3)
    assert state == [0, 1, 2, 3]
    for a, b in zip(model.layers[3].parameters(), model.layers[1].parameters()):
        assert not shares(a, b) and torch.equal(a, b) and a.requires_grad
    with torch.no_grad():
        model.layers[1].ffn_out.weight.add_(1.0)  # the copy no longer follows its former root
    assert not torch.equal(model.layers[3].ffn_out.weight, model.layers[1].ffn_out.weight)


def test_chains_tie_to_the_root_and_tying_a_root_repoints_its_dependents(tiny_model):
    state = tie_layer(tiny_model, [0, 1, 2, 3], 1, 0)
    state = tie_layer(tiny_model, state, 2, 1)
    assert state == [0, 0, 0, 3] and root_of(state, 2) == 0
    state = tie_layer(tiny_model, [0, 1, 2, 3], 3, 2)  # 3 uses 2's weights; now 2 ties to 0
    state = tie_layer(tiny_model, state, 2, 0)
    assert state == [0, 1, 0, 0]
    assert shares(tiny_model.layers[3].ffn_in.weight, tiny_model.layers[0].ffn_in.weight)
    with pytest.raises(ValueError, match="only to an earlier layer"):
        tie_layer(tiny_model, state, 1, 2)


def loss_of(model: DynamicEncoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(ids, mask), torch.tensor([0, 1, 2, 0, 1]))


def test_source_only_gradients_equal_a_detached_copy_and_shared_ones_add_up():
    ids, mask = random_batch()
    torch.manual_seed(0)
    model = DynamicEncoder(tiny_config(hidden_dropout=0.0, attention_dropout=0.0))
    reference = DynamicEncoder(model.config)
    reference.load_state_dict(model.state_dict())
    state = tie_layer(model, [0, 1, 2, 3], 2, 0)
    loss_of(model, ids, mask).backward()
    assert all(p.grad is None for p in model.layers[2].parameters())
    # The reference: position 2 runs a frozen copy of layer 0's weights.
    with torch.no_grad():
        for a, b in zip(reference.layers[2].parameters(), reference.layers[0].parameters()):
            a.copy_(b)
    reference.layers[2].requires_grad_(False)
    loss_of(reference, ids, mask).backward()
    for a, b in zip(model.layers[0].parameters(), reference.layers[0].parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-7)
    # shared: the root's gradient is the sum of its own position's and the tied position's.
    shared = DynamicEncoder(model.config)
    shared.load_state_dict(reference.state_dict())
    state = tie_layer(shared, [0, 1, 2, 3], 2, 0, tie_gradients="shared")
    reference.layers[2].requires_grad_(True)
    reference.zero_grad()
    loss_of(reference, ids, mask).backward()
    loss_of(shared, ids, mask).backward()
    fold_shared_gradients(shared, state)
    for mine, own, tied in zip(shared.layers[0].parameters(), reference.layers[0].parameters(),
                               reference.layers[2].parameters()):
        assert torch.allclose(mine.grad, own.grad + tied.grad, atol=1e-6)
    assert all(p.grad is None for p in shared.layers[2].parameters())


def test_q_slices_actions_and_random_draws():
    assert [q_slice(i) for i in (1, 2, 5)] == [slice(1, 3), slice(3, 6), slice(15, 21)]
    agent = TyingAgent(6, seed=0)
    assert agent.q(torch.zeros(6, dtype=torch.float64)).shape == (21,)
    draws = Counter(agent.act([0, 1, 2, 3, 4, 5], 3)[0] for _ in range(4000))  # epsilon 1: uniform on 0..3
    assert set(draws) == {0, 1, 2, 3} and all(abs(n - 1000) < 120 for n in draws.values())
    agent.epsilon = 0.0
    greedy, random = agent.act([0, 1, 2, 3, 4, 5], 4)
    assert not random and greedy == int(agent.values([0, 1, 2, 3, 4, 5], 4).argmax())
    before = agent.values([0, 0, 2, 3, 4, 5], 2)[1].item()
    for _ in range(200):  # one-sample Q-learning moves Q(s)[slice][a] towards r + gamma max Q(s')
        agent.update([0, 0, 2, 3, 4, 5], 2, 1, -2.0, [0, 0, 2, 3, 4, 5], 3)
    target = -2.0 + 0.99 * agent.values([0, 0, 2, 3, 4, 5], 3).max().item()
    assert abs(agent.values([0, 0, 2, 3, 4, 5], 2)[1].item() - target) < abs(before - target)


def test_epsilon_reaches_its_floor_at_60_percent_of_the_episodes():
    decay = epsilon_decay_for(33)  # MiniLM-L6, K = 4, 2 epochs: 33 episodes
    agent = TyingAgent(6, seed=0)
    epsilons = []
    for _ in range(33):
        agent.end_episode(decay)
        epsilons.append(agent.epsilon)
    assert epsilons[18] > 0.0101 and abs(epsilons[19] - 0.01) < 1e-3 and epsilons[-1] == 0.01
    assert TyingAgent(6, seed=0, learn=False).epsilon == 1.0


def test_trainable_counts_on_minilm_follow_the_spec():
    model = resolve_backbone("minilm-l6").build(num_classes=4)
    model.embeddings.word.weight.requires_grad_(False)
    assert trainable_elements(model) == 10_846_468
    state = tie_layer(model, list(range(6)), 3, 1)
    assert trainable_elements(model) == 10_846_468 - 1_774_464
    for layer in (2, 4, 5):
        state = tie_layer(model, state, layer, 0)
    assert trainable_elements(model) == 3_748_612


SMALL = TrainConfig(epochs=2, batch_size=16, max_train=160, max_test=32, seed=4)


def test_tied_layers_cost_twice_their_forward_and_inference_runs_everything(tmp_path):
    run = RunConfig(method="dlt", backbone="tiny", train=SMALL, options={"initial_state": "layer0"})
    model = resolve_backbone("tiny").build(num_classes=4)
    model.embeddings.word.weight.requires_grad_(False)  # as every run trains it; positions still train
    method = DLTMethod(model, run)
    method.initial_ties()  # every layer but 0 tied to layer 0
    ids, mask = random_batch(batch=3, length=9)
    batch = Batch(ids, mask, torch.zeros(3, dtype=torch.long), torch.arange(3))
    config = model.config
    forward = [layer_forward_flops(config, int(n), config.num_heads) for n in mask.sum(1)]
    head = classifier_flops(config)
    # layer 0 trains (3x its forward); layers 1-3 pass input gradients only (2x); the classifier trains.
    expected = sum(3 * f + 3 * 2 * f + 3 * head for f in forward)
    assert method.train_cost(batch, model.full_plan())[0] == expected
    shared = DLTMethod(model, RunConfig(method="dlt", backbone="tiny", train=SMALL,
                                        options={"tie_gradients": "shared", "initial_state": "layer0"}))
    shared.initial_ties()  # the same ties, but every position trains its root: all layers cost 3x
    assert shared.state == [0, 0, 0, 0]
    assert shared.train_cost(batch, model.full_plan())[0] == sum(3 * 4 * f + 3 * head for f in forward)
    metrics = train(run, tmp_path / "run", progress=False)
    assert metrics["test"]["flop_ratio"] == 1.0 and metrics["dlt"]["inference_flop_ratio"] == 1.0
    assert metrics["train"]["flop_ratio"] < 1.0


@pytest.mark.parametrize("options", [{}, {"initial_state": "layer0"}, {"tie_gradients": "shared"}])
def test_resume_with_tied_layers_gives_the_same_run(tmp_path, options):
    run = RunConfig(method="dlt", backbone="tiny", train=SMALL, options={"decision_every": 2, **options})
    whole = train(run, tmp_path / "whole", progress=False)
    assert train(run, tmp_path / "parts", progress=False, stop_after_steps=7) is None
    resumed = train(run, tmp_path / "parts", resume=True, progress=False)
    assert (tmp_path / "whole" / "tying.jsonl").read_text() == (tmp_path / "parts" / "tying.jsonl").read_text()
    assert whole["dlt"] == resumed["dlt"] and whole["test"]["f1_macro"] == resumed["test"]["f1_macro"]
    assert whole["dlt"]["ties"] + whole["dlt"]["unties"] > 0  # the sequence compared changes the state
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("whole", "parts"))
    assert all(torch.equal(a[key], b[key]) for key in a)  # the same weights, bit for bit
    # The saved model (safetensors, tied tensors copied) loads and re-ties as the run ended.
    from dht.training.loop import load_run
    prepared = load_run(tmp_path / "whole")
    state = prepared.method.state
    for layer, root in enumerate(state):
        if root != layer:
            assert shares(prepared.model.layers[layer].ffn_in.weight, prepared.model.layers[root].ffn_in.weight)


def test_tying_from_a_run_fixes_its_state_and_the_agent_stays_idle(tmp_path):
    first = RunConfig(method="dlt", backbone="tiny", train=SMALL, options={"initial_state": "layer0",
                                                                             "freeze_after": 0.01})
    train(first, tmp_path / "first", progress=False)
    found = json.loads((tmp_path / "first" / "method.json").read_text())["state"]
    fixed = RunConfig(method="dlt", backbone="tiny", train=SMALL, options={"tying_from": str(tmp_path / "first")})
    metrics = train(fixed, tmp_path / "fixed", progress=False)
    assert metrics["dlt"]["decisions"] == 0 and metrics["dlt"]["state_final"] == found


@pytest.mark.parametrize("flags, message", [
    (["--decision-every", "0"], "--decision-every must be >= 1"),
    (["--tie-gradients", "both"], "--tie-gradients must be one of source_only, shared"),
    (["--freeze-after", "0"], "--freeze-after must be in (0, 1]"),
    (["--freeze-after", "1.5"], "--freeze-after must be in (0, 1]"),
    (["--agent", "smart"], "--agent must be one of q, random"),
    (["--tying-from", "no/such/run"], "--tying-from no/such/run: not a finished dlt run"),
])
def test_invalid_options_stop_with_one_line(tmp_path, capsys, flags, message):
    assert main(["train", "--method", "dlt", "--backbone", "tiny", *flags, "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "r").exists()


def test_a_tied_run_exports_to_transformers_and_bad_states_are_refused(tmp_path, capsys):
    run = RunConfig(method="dlt", backbone="tiny", train=SMALL, options={"initial_state": "layer0",
                                                                           "freeze_after": 0.01})
    train(run, tmp_path / "run", progress=False)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export")]) == 0  # tied tensors copied
    capsys.readouterr()
    method = json.loads((tmp_path / "run" / "method.json").read_text())
    method["state"] = [0, 2, 2, 3]  # layer 1 on a later layer's weights
    (tmp_path / "run" / "method.json").write_text(json.dumps(method))
    assert main(["train", "--method", "dlt", "--backbone", "tiny", "--tying-from", str(tmp_path / "run"),
                 "--output", str(tmp_path / "again")]) == 2
    assert "is not a tying state" in capsys.readouterr().err


def test_options_default_to_the_spec():
    options = DLTOptions()
    assert (options.decision_every, options.tie_gradients, options.freeze_after, options.initial_state,
            options.bootstrap, options.probe_rows) == (4, "source_only", 0.9, "identity", "next_layer", 32)
    assert DLTMethod.name == "dlt"
