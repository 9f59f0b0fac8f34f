"""DHT end to end on the tiny backbone: freezing, greedy inference, resume, records and costs."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from dht.data import collate, iterate_batches
from dht.search.arms import Arm, preset
from dht.search.features import with_arm_features
from dht.search.layout import arm_layout
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import evaluate_run, train
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=2, batch_size=8, max_train=48, max_test=24, seed=5, checkpoint_every=2)


def p_dht_file(tmp_path, freeze_after=1):
    """P-DHT for the tiny 4-layer, 4-head backbone, switching after ``freeze_after`` epochs."""
    search = dataclasses.replace(preset("p-dht", 4, 4), freeze_after=freeze_after, feature_samples=16)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(search.to_dict()))
    return str(path)


def dht_run(config="s-dht"):
    return RunConfig(method="dht", backbone="tiny", train=SMALL, options={"config": config})


def test_p_dht_layouts_group_the_bottom_like_the_paper():
    search = preset("p-dht", 12, 12)
    groups = {arm.depth - arm.top: arm_layout(search, arm, phase_two=True).groups for arm in search.phase_two_arms}
    assert [len(g) for g in groups[1]] == [1] and [len(g) for g in groups[10]] == [1, 3, 3, 3]
    assert arm_layout(search, Arm(6, 8, top=2), phase_two=True).suffix == (10, 11)
    assert arm_layout(search, Arm(9, 10), phase_two=False).prefix == (0, 1, 2)
    assert arm_layout(search, Arm(9, 10), phase_two=False).groups == ((3, 4, 5), (6, 7, 8))


def test_p_dht_freezes_all_but_the_top_layers(tmp_path):
    prepared = prepare(dht_run(p_dht_file(tmp_path)))
    method = prepared.method
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    assert not method.phase_two and prepared.model.frozen_layers() == frozenset()
    method.on_epoch_start(1, prepared.train.ids, prepared.pad_id)
    assert method.phase_two and prepared.model.frozen_layers() == frozenset({0, 1})
    assert not prepared.model.embeddings.position.weight.requires_grad
    assert all(arm.top == 2 for arm in method.arms)


def test_greedy_inference_is_deterministic_and_cheaper():
    prepared = prepare(dht_run("f-dht"))
    method = prepared.method
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    batch = collate(prepared.test.ids[:12], prepared.test.labels[:12], list(range(12)), prepared.pad_id)
    first, second = method.predict(batch), method.predict(batch)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.flops, second.flops)
    assert first.routes == second.routes and set(first.routes) <= {arm.label(method.N_h) for arm in method.arms}
    assert (first.flops <= first.full_flops).all()
    # The probe (half the full cost on this 4-layer model) is reused: all-in adds only the bandits,
    # a few percent on this tiny model and far less on real ones.
    assert ((first.flops_all_in - first.flops) < 0.05 * first.full_flops).all()
    assert (first.flops_all_in > first.flops).all()


@pytest.mark.parametrize("config", ["f-dht", "p-dht"])
def test_inference_queues_samples_by_depth_and_matches_one_sample_at_a_time(tmp_path, config):
    run = dht_run(p_dht_file(tmp_path) if config == "p-dht" else config)
    prepared = prepare(dataclasses.replace(run, train=dataclasses.replace(SMALL, eval_batch_size=4)))
    method = prepared.method
    for epoch in range(2 if config == "p-dht" else 1):  # P-DHT: after its switch
        method.on_epoch_start(epoch, prepared.train.ids, prepared.pad_id)
    test = prepared.test
    method.contexts.train(False)  # the normalisers stay as they are, as at inference
    everything = collate(test.ids, test.labels, list(range(len(test))), prepared.pad_id)
    x = with_arm_features(method._probe(everything)[1], method.features.top)  # (B, arms, 168)
    for a in range(len(method.arms)):  # teach the top bandit to send sample i to arm i mod arms
        target = (torch.arange(len(test)) % len(method.arms) == a).double() * 2 - 1
        method.ucb_top.update(torch.full((len(test),), a), x[:, a], target)
    batches = iterate_batches(test.ids, test.labels, 4, prepared.pad_id, shuffle=False, sort_by_length=True)
    parts = list(method.predict_batches(batches))
    method.contexts.train(False)
    seen = torch.cat([batch.index for batch, _ in parts])
    assert sorted(seen.tolist()) == list(range(len(test)))

    def depth(index):  # the greedy arm's depth for one sample, probed alone
        _, x = method._probe(collate([test.ids[index]], [0], [index], prepared.pad_id))
        return method.arms[int(method.ucb_top.select(with_arm_features(x, method.features.top), greedy=True))].depth
    depths = [{depth(i) for i in batch.index.tolist()} for batch, _ in parts]
    assert all(len(d) == 1 for d in depths) and len(set.union(*depths)) > 1  # one depth per batch, several in all
    partial = [len(batch) for batch, _ in parts if len(batch) < 4]
    assert len(partial) <= len(set.union(*depths))  # only the queues flushed at the end are partial
    for batch, prediction in parts:
        for row, index in enumerate(batch.index.tolist()):
            alone = method.predict(collate([test.ids[index]], [test.labels[index]], [index], prepared.pad_id))
            assert torch.allclose(prediction.logits[row], alone.logits[0], atol=1e-5)
            assert prediction.flops[row] == alone.flops[0] and prediction.all_in[row] == alone.all_in[0]


@pytest.mark.parametrize("config", ["t-dht", "p-dht"])
def test_resume_equals_an_uninterrupted_run(tmp_path, config):
    spec = p_dht_file(tmp_path) if config == "p-dht" else config
    whole = train(dht_run(spec), tmp_path / "whole", progress=False)
    assert train(dht_run(spec), tmp_path / "cut", stop_after_steps=4, progress=False) is None
    resumed = train(dht_run(spec), tmp_path / "cut", resume=True, progress=False)
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    decisions = lambda run: (tmp_path / run / "decisions.jsonl").read_text()  # noqa: E731
    assert decisions("whole") == decisions("cut")
    assert resumed["test"] == {**whole["test"], "seconds": resumed["test"]["seconds"]}
    assert resumed["selection"] == whole["selection"]


def test_run_records_costs_and_plots(tmp_path):
    metrics = train(dht_run("s-dht"), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    files = {p.name for p in run.iterdir()}
    assert {"selection.png", "heads.png", "loss.png", "decisions.jsonl", "method.json"} <= files
    records = [json.loads(line) for line in (run / "decisions.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 48  # every training sample once per epoch, queues flushed
    assert {r["index"] for r in records if r["epoch"] == 0} == set(range(48))
    assert set(records[0]) >= {"epoch", "step", "index", "depth", "heads", "rewards"}
    train_cost, test_cost = metrics["train"], metrics["test"]
    assert 0 < train_cost["flop_ratio"] < train_cost["flop_ratio_all_in"]
    assert 0 < test_cost["flop_ratio"] <= test_cost["flop_ratio_all_in"] <= 1.05
    assert sum(metrics["selection"]["arms"][0].values()) == pytest.approx(1.0)
    routes = metrics["test"]["routes"]  # the arms greedy inference chose, with their samples' accuracy
    assert set(routes) <= set(metrics["selection"]["arms"][0]) and sum(r["share"] for r in routes.values()) == \
        pytest.approx(1.0, abs=1e-3)
    assert sum(r["share"] * r["accuracy"] for r in routes.values()) == pytest.approx(test_cost["accuracy"], abs=1e-3)
    again = evaluate_run(run, progress=False)  # bandits, normalisers and features reload from method.json
    assert {k: again["test"][k] for k in ("accuracy", "f1_macro", "flop_ratio")} == \
        {k: metrics["test"][k] for k in ("accuracy", "f1_macro", "flop_ratio")}


@pytest.mark.parametrize("config", ["t-dht", "f-dht"])
def test_a_run_saved_before_the_search_strategies_still_evaluates(tmp_path, config):
    """Run folders of commit b2afe5b hold UCB_H as method.json's "ucb_h" (for integrated search too)."""
    run = tmp_path / "run"
    metrics = train(dht_run(config), run, progress=False)
    state = json.loads((run / "method.json").read_text())
    strategy = state.pop("strategy")
    # Tree search's UCB_H moves back to the top level; integrated search saved one it never used.
    state["ucb_h"] = strategy["ucb_h"] if config == "t-dht" else {"unused": "UCB_H of integrated search"}
    (run / "method.json").write_text(json.dumps(state))
    again = evaluate_run(run, progress=False)
    assert {k: again["test"][k] for k in ("accuracy", "f1_macro", "flop_ratio")} == \
        {k: metrics["test"][k] for k in ("accuracy", "f1_macro", "flop_ratio")}


def test_the_learning_rate_follows_the_samples_trained_on_not_the_loader_batches(tmp_path):
    """Issue 20, fault 12: the queues release more batches than the loader's 2 × 6, and by steps the
    schedule reached 0 before the last ones. By samples: warm-up, then decay to 0 after the last sample."""
    run = dht_run("s-dht")
    train(run, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    total_steps, total_samples, peak = 12, 96, run.train.lr
    warmup = int(total_steps * run.train.warmup_ratio)
    assert len(log) > total_steps and sum(r["samples"] for r in log) == total_samples
    seen = 0
    for record in log:
        position = seen * total_steps / total_samples
        expected = peak * (position + 1) / warmup if position < warmup else \
            peak * (total_steps - position) / (total_steps - warmup)
        assert record["lr"] == pytest.approx(expected, rel=1e-12) and record["lr"] > 0
        seen += record["samples"]


def test_per_depth_exit_classifiers_train_one_classifier_per_exit(tmp_path):
    run = RunConfig(method="dht", backbone="tiny", train=SMALL,
                    options={"config": "f-dht", "exit_classifiers": "per-depth"})
    prepared = prepare(run)
    branches, final = prepared.model.branches, prepared.model.classifier
    assert all(torch.equal(b.weight, final.weight) for b in branches)  # they start as the shared one
    metrics = train(run, tmp_path / "run", progress=False)
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    # F-DHT's arms on the tiny model exit after layer 2 or 4: the layer-2 exit learned on its own, while the
    # exits after layers 1 and 3, which no arm uses, kept the initial copy of the classifier.
    assert not torch.equal(weights["branches.1.weight"], weights["classifier.weight"])
    assert torch.equal(weights["branches.0.weight"], weights["branches.2.weight"])
    again = evaluate_run(tmp_path / "run", progress=False)
    assert again["test"]["f1_macro"] == metrics["test"]["f1_macro"]
    assert again["options"]["exit_classifiers"] == "per-depth"


def test_the_full_depth_floor_sends_its_share_to_the_deepest_arm_and_leaves_the_rest():
    """--full-depth-floor p: a seeded draw per sample overrides UCB's arm with the deepest one (4L4H on
    the tiny backbone) with probability p; the other samples keep UCB's choice."""
    choices = {}
    for floor in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        run = dataclasses.replace(dht_run("f-dht"), options={"config": "f-dht", "full_depth_floor": floor})
        prepared = prepare(run)
        method = prepared.method
        method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
        batch = collate(prepared.train.ids[:48], prepared.train.labels[:48], list(range(48)), prepared.pad_id)
        _, x = method._probe(batch)
        bandit = method.ucb_top.select(with_arm_features(x, method.features.top), greedy=True).tolist()
        method.ucb_top.config = dataclasses.replace(method.ucb_top.config, alpha=0.0)  # _enqueue's pick = greedy
        queued = [item for items in method._enqueue(batch) for item in items]
        queued += [item for _, items in method.queues.flush() for item in items]
        by_index = {item["index"]: item["arm"] for item in queued}
        choices[floor] = ([by_index[i] for i in range(48)], bandit)
    labels = lambda arms: [method.arms[a].label(method.N_h) for a in arms]  # noqa: E731
    assert choices[0.0][0] == choices[0.0][1]  # no floor: UCB's choice
    assert set(labels(choices[1.0][0])) == {"4L4H"}
    half, bandit = choices[0.5]
    draws = torch.rand(48, generator=torch.Generator().manual_seed(SMALL.seed + 3)) < 0.5
    expected = [2 if forced else arm for arm, forced in zip(bandit, draws.tolist())]
    assert labels([2]) == ["4L4H"] and half == expected and 10 < int(draws.sum()) < 38


def test_the_training_budget_steps_its_cost_weight_towards_the_target():
    """--train-budget R: λ ← λ + η (mean share of the greedy arms − R) after each loader batch, and the
    choices subtract λ·share (dht/search/budget.py)."""
    from dht.methods.dht import DHTMethod
    from dht.search.budget import LIMIT, STEP, CostWeight
    weight = CostWeight(0.5)
    assert weight.update(torch.tensor([1.0, 0.5, 0.3])) == pytest.approx(STEP * (0.6 - 0.5))
    assert weight.update(torch.tensor([0.25])) == pytest.approx(STEP * (0.1 - 0.25))  # under target: λ falls
    torch.manual_seed(0)
    run = dataclasses.replace(dht_run("f-dht"), options={"config": "f-dht", "train_budget": 0.4})
    prepared = prepare(run)
    method = prepared.method
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    shares = method.arm_shares()
    assert shares.argmin().item() == 0 and method.arms[0].label(method.N_h) == "2L4H"
    batch = collate(prepared.train.ids[:16], prepared.train.labels[:16], list(range(16)), prepared.pad_id)
    method.lagrange.value = 900.0  # so dear that every sample takes the cheapest arm, in training and inference
    released = method._enqueue(batch) + [items for _, items in method.queues.flush()]
    queued = [item["arm"] for items in released for item in items]
    assert queued == [0] * 16
    assert method.lagrange.value == pytest.approx(900.0 + STEP * (float(shares[0]) - 0.4))
    assert set(method.predict(batch).routes) == {"2L4H"}
    state = method.state_dict()["lagrange"]
    assert state == {"target": 0.4, "value": method.lagrange.value, "step": STEP}
    unreachable = CostWeight(0.1)  # below every arm's share: λ grows to the knob's end, not beyond
    for _ in range(1000):
        unreachable.update(torch.tensor([0.5]))
    assert unreachable.value == LIMIT == DHTMethod.knob.cheapest


@pytest.mark.parametrize("options", [{"full_depth_floor": 0.3}, {"train_budget": 0.5}, {"layer_lr_cap": 3.0}])
def test_resume_equals_an_uninterrupted_run_with_our_levers(tmp_path, options):
    """The floor's draws, the budget's λ and the layers' step counts are method state: a resumed run is the
    uninterrupted one."""
    run = dataclasses.replace(dht_run("f-dht"), options={"config": "f-dht", **options})
    train(run, tmp_path / "whole", progress=False)
    assert train(run, tmp_path / "cut", stop_after_steps=3, progress=False) is None
    train(run, tmp_path / "cut", resume=True, progress=False)
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    decisions = lambda name: (tmp_path / name / "decisions.jsonl").read_text()  # noqa: E731
    assert decisions("whole") == decisions("cut")
    if "train_budget" in options:
        log = (tmp_path / "whole" / "log.jsonl").read_text().splitlines()
        logged = [json.loads(line).get("lambda") for line in log]
        assert None not in logged and len(set(logged)) > 1  # λ moved, and every step logged it
