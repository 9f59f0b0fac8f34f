"""--full-depth-warmup W (ours, dht/methods/dht_warmup.py): the network trains as BL1 for its share, then
the encoder freezes and the bandits learn to route it; on the tiny backbone (4 layers, 4 heads)."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_dht import make

from dht.flops import classifier_flops, linucb_flops, plan_forward_flops, plan_train_flops
from dht.methods.dht import DHTOptions, QueuedBatch
from dht.model import ExecutionPlan
from dht.search.layout import arm_layout
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import train
from dht.training.setup import prepare

WARM = {"full_depth_warmup": 0.25}  # SMALL: 2 epochs of 64 rows, so 32 samples: 4 loader batches of 8


def encoder_parameters(model, embeddings: bool = False):
    """The layers' parameters (the word embeddings are frozen by default, so only the switch's "all frozen"
    can include the embeddings)."""
    prefixes = ("embeddings.", "layers.") if embeddings else ("layers.",)
    return [p for name, p in model.named_parameters() if name.startswith(prefixes)]


def test_the_warm_up_hands_out_its_share_of_loader_batches_then_freezes_the_encoder_and_queues():
    prepared, method, batches = make("f-dht", **WARM)
    method.on_train_start(prepared.train.ids, prepared.train.labels, prepared.pad_id, 16)
    assert method.warm_target == round(0.25 * 2 * 64) == 32
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    assert method.features is None  # nothing routes yet, so no arm features are paid for
    kinds = []
    for batch in method.training_batches(iter(batches)):
        kinds.append(type(batch).__name__)
        if len(kinds) == 4:  # the warm-up's last batch: the switch comes when the next one is asked for
            assert not method.switched and all(p.requires_grad for p in encoder_parameters(method.model))
        method.training_step(batch)
    assert kinds[:4] == ["Batch"] * 4 and set(kinds[4:]) == {"QueuedBatch"}
    queued = sum(len(items) for items in method.queues.queues.values())
    assert method.warm_samples == 32 and method.switched and method.features is not None
    assert not any(p.requires_grad for p in encoder_parameters(method.model, embeddings=True))
    assert method.model.classifier.weight.requires_grad
    assert sum(1 for kind in kinds[4:]) * 8 + queued >= 64 - 32  # the rest of the epoch was routed


def test_a_warm_up_step_is_bl1s_step_and_its_detached_exits_do_not_bend_the_layers():
    prepared, method, batches = make("f-dht", self_distill=1.0, exit_classifiers="per-depth", **WARM)
    method.initialise()
    model, batch = method.model, batches[0]
    model.eval()  # no dropout: the two forwards must match to the bit
    result = method.warmup_step(batch)
    result.loss.backward()
    with_exits = [p.grad.clone() for p in encoder_parameters(model) if p.grad is not None]
    branch = model.branches[1].weight.grad.clone()  # the exit after layer 2 (f-dht: arms of 2 and 4 layers)
    model.zero_grad(set_to_none=True)

    logits = model(batch.input_ids, batch.attention_mask, model.full_plan())
    reference = F.cross_entropy(logits, batch.labels)
    reference.backward()
    alone = [p.grad for p in encoder_parameters(model) if p.grad is not None]
    assert result.loss.item() > reference.item()  # plus the exit's KL term
    assert len(with_exits) == len(alone) > 0
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(with_exits, alone))
    assert branch.abs().sum() > 0 and model.branches[1].weight.grad is None

    lengths = batch.attention_mask.sum(1).tolist()
    network = sum(plan_train_flops(model.config, ExecutionPlan.first(4, 4), t) for t in lengths)
    assert result.flops == result.all_in == network + 3 * 1 * len(batch) * classifier_flops(model.config)
    assert result.extra == {"warmup": True, "exits": 1}


def test_after_the_switch_a_routed_step_goes_on_from_the_probe_forward_only_and_trains_only_the_classifier():
    """S2 of a frozen encoder starts from the probe's states (no second pass over the first b layers, whose
    FLOPs the probe already counted) without dropout: its loss is the eval-mode network's on the plans the
    bandits chose, its FLOPs those plans' forward plus the classifier's weight gradient."""
    prepared, method, batches = make("f-dht", **WARM)
    method.on_train_start(prepared.train.ids, prepared.train.labels, prepared.pad_id, 16)
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    stream = method.training_batches(iter(batches))
    for _ in range(4):
        method.training_step(next(stream))  # the warm-up
    overhead = method.overhead
    routed = next(stream)
    assert isinstance(routed, QueuedBatch) and routed.hidden is not None
    assert routed.hidden.shape[:2] == routed.input_ids.shape and routed.hidden.shape[2] == 32  # (B, T, E)
    # The switch's arm features, then per loader batch queued the arm choices only: no probe FLOPs.
    queued = method.consumed - 4
    choices = linucb_flops(8, len(method.arms), method.ucb_top.config.dim, update=False)
    assert queued >= 1 and method.overhead - overhead == method.features.flops + queued * choices
    method.overhead = 0.0
    method.model.train()
    embedded = []
    embed = method.model.embed
    method.model.embed = lambda ids: embedded.append(ids) or embed(ids)  # the first b layers must not run again
    result = method.training_step(routed)
    assert embedded == []
    assert method.model.training  # the loop's mode is back
    result.loss.backward()
    config, cf = method.model.config, classifier_flops(method.model.config)
    plans, expected = [], 0
    for arm, record, tokens in zip(routed.arms.tolist(), result.records, routed.attention_mask.sum(1).tolist()):
        layout = arm_layout(method.search, method.arms[arm], False)
        layers, heads = list(layout.prefix), [tuple(range(4))] * len(layout.prefix)
        for group, kept in zip(layout.groups, record["heads"]):
            layers += group
            heads += [tuple(kept)] * len(group)
        plans.append(ExecutionPlan(tuple(layers), tuple(heads)))
        expected += plan_forward_flops(config, plans[-1], tokens) + cf  # forward, the classifier's weights
    assert result.flops == pytest.approx(expected, rel=1e-12)
    assert all(p.grad is None for p in encoder_parameters(method.model))
    assert method.model.classifier.weight.grad is not None
    method.model.eval()
    with torch.no_grad():
        logits = method.model(routed.input_ids, routed.attention_mask, plans)
    assert result.loss.item() == pytest.approx(F.cross_entropy(logits, routed.labels).item(), rel=1e-5)


def run_config(**options) -> RunConfig:
    train_config = TrainConfig(epochs=2, batch_size=16, max_train=64, max_test=32, checkpoint_every=3, seed=5)
    return RunConfig(method="dht", backbone="tiny", train=train_config,
                     options={"config": "f-dht", "self_distill": 1.0, "full_depth_warmup": 0.5,
                              "exit_classifiers": "per-depth", **options})


def test_a_warmed_up_run_moves_its_encoder_only_during_the_warm_up_and_resumes_exactly(tmp_path):
    """W = 0.5: the switch at the first epoch's end (4 steps of 16); cut inside the warm-up, at its last
    step and after the switch."""
    whole = train(run_config(), tmp_path / "whole", progress=False)
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    warm = [r for r in log if r.get("warmup")]
    assert [r["samples"] for r in warm] == [16] * 4  # half of 2 x 64 samples
    assert all(r["lr"] > 0 for r in warm[:-1]) and all(r["lr"] == 0 for r in log[len(warm):])
    assert len(log) > len(warm)

    assert train(run_config(), tmp_path / "warm", stop_after_steps=4, progress=False) is None
    at_switch = load_file(str(tmp_path / "warm" / "checkpoint" / "model.safetensors"))
    final = load_file(str(tmp_path / "whole" / "model.safetensors"))
    encoder = [k for k in final if k.startswith(("embeddings.", "layers."))]
    assert encoder and all(torch.equal(final[k], at_switch[k]) for k in encoder)
    assert torch.equal(final["classifier.weight"], at_switch["classifier.weight"])  # the teacher stays
    assert not torch.equal(final["branches.1.weight"], at_switch["branches.1.weight"])  # the 2-layer exit learns on

    for cut in (3, 4, 6):  # inside the warm-up, at its last step, and after the switch
        folder = tmp_path / f"cut{cut}"
        assert train(run_config(), folder, stop_after_steps=cut, progress=False) is None
        resumed = train(run_config(), folder, resume=True, progress=False)
        again = load_file(str(folder / "model.safetensors"))
        assert all(torch.equal(final[k], again[k]) for k in final), cut
        assert resumed["test"]["f1_macro"] == whole["test"]["f1_macro"]
        losses = [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]
        assert losses == [r["loss"] for r in log], cut


def test_a_run_resumed_around_a_switch_in_mid_epoch_equals_an_uninterrupted_one(tmp_path):
    """W = 0.375: 48 samples, so the switch comes after the first epoch's third step of four; the queues
    hold probe states from then on, and a checkpoint carries them."""
    config = run_config(full_depth_warmup=0.375)
    train(config, tmp_path / "whole", progress=False)
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    log = (tmp_path / "whole" / "log.jsonl").read_text().splitlines()
    assert [bool(json.loads(line).get("warmup")) for line in log[:4]] == [True, True, True, False]
    for cut in (3, 4, 5):
        folder = tmp_path / f"cut{cut}"
        assert train(config, folder, stop_after_steps=cut, progress=False) is None
        train(config, folder, resume=True, progress=False)
        again = load_file(str(folder / "model.safetensors"))
        assert all(torch.equal(whole[k], again[k]) for k in whole), cut
        losses = [json.loads(line)["loss"] for line in (folder / "log.jsonl").read_text().splitlines()]
        assert losses == [json.loads(line)["loss"] for line in log], cut


@pytest.mark.parametrize("share", [0.001, 0.9999])
def test_a_warm_up_of_no_sample_or_of_every_sample_is_refused_before_anything_is_written(share, tmp_path, capsys):
    from dht.cli import main

    with pytest.raises(ValueError, match="leaves (0|128) of the run's 128 training samples"):
        prepare(run_config(full_depth_warmup=share))  # 2 epochs of 64 rows
    args = ["train", "--method", "dht", "--config", "f-dht", "--full-depth-warmup", str(share), "--backbone", "tiny",
            "--max-train", "64", "--epochs", "2", "--output", str(tmp_path / "run"), "--quiet"]
    assert main(args) == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
def test_the_warm_up_share_must_be_in_zero_one(value):
    with pytest.raises(ValueError, match="--full-depth-warmup"):
        DHTOptions(full_depth_warmup=value)


def test_the_warm_up_is_refused_with_p_dhts_frozen_phase():
    with pytest.raises(ValueError, match="--full-depth-warmup cannot be combined"):
        prepare(run_config(config="p-dht"))


def test_the_warm_ups_per_depth_exits_learn_at_fastberts_branch_rate():
    from dht.methods.dht_warmup import EXIT_LR_SCALE
    from dht.training.loop import make_optimizer

    prepared = prepare(run_config(exit_classifiers="per-depth"))
    optimizer = make_optimizer(prepared)
    prepared.method.bind_optimizer(optimizer)
    names = {id(p): n for n, p in prepared.model.named_parameters()}
    scaled = [g for g in optimizer.param_groups if g.get("lr_scale") == EXIT_LR_SCALE == 10.0]
    assert {names[id(p)].split(".")[0] for g in scaled for p in g["params"]} == {"branches"}
    assert sum(len(g["params"]) for g in scaled) == 2 * prepared.model.config.num_layers - 2  # weights, biases
    plain = prepare(run_config(exit_classifiers="per-depth", full_depth_warmup=0.0))
    optimizer = make_optimizer(plain)
    plain.method.bind_optimizer(optimizer)
    assert not any("lr_scale" in g for g in optimizer.param_groups)


def test_after_the_switch_the_exits_learn_from_the_peak_rate_down_to_zero_over_the_routed_samples():
    prepared = prepare(run_config())
    method = prepared.method
    method.on_train_start(prepared.train.ids, prepared.train.labels, prepared.pad_id, 8)
    assert (method.warm_target, method.route_target) == (64, 64)
    assert method.group_lr("exits", 3e-5) == 3e-5 and method.group_lr("", 3e-5) == 3e-5  # the schedule's
    method.switched, method.routed_samples = True, 16
    assert method.group_lr("exits", 0.0) == pytest.approx(1e-4 * (1 - 16 / 64))  # times lr_scale 10 in the loop
    assert method.group_lr("", 0.0) == 0.0
    method.routed_samples = 80  # past the end (the last queues): never negative
    assert method.group_lr("exits", 0.0) == 0.0


def test_warmup_lr_trains_exactly_as_that_lr_and_names_its_own_flag(tmp_path):
    """--warmup-lr X (ours) is the schedule's peak in place of --lr: a run at --lr 1e-4 with --warmup-lr 3e-4
    ends with the weights of a run at --lr 3e-4, bit for bit, and differs from one at --lr 1e-4."""
    def config(lr, **options):
        run = run_config(**options)
        return dataclasses.replace(run, train=dataclasses.replace(run.train, lr=lr))
    train(config(1e-4, warmup_lr=3e-4), tmp_path / "option", progress=False)
    train(config(3e-4), tmp_path / "flag", progress=False)
    train(config(1e-4), tmp_path / "plain", progress=False)
    option, flag, plain = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("option", "flag", "plain"))
    assert all(torch.equal(option[k], flag[k]) for k in flag)
    assert not all(torch.equal(option[k], plain[k]) for k in plain)
    assert prepare(config(1e-4, warmup_lr=3e-4)).method.lr_flag == "--warmup-lr"
    assert prepare(config(1e-4)).method.lr_flag == "--lr"


@pytest.mark.parametrize("options, message", [({"warmup_lr": -1.0}, "finite and >= 0"),
                                              ({"warmup_lr": 3e-4, "full_depth_warmup": 0.0}, "needs --full-depth")])
def test_warmup_lr_is_refused_when_negative_or_without_a_warm_up(options, message):
    with pytest.raises(ValueError, match=message):
        DHTOptions(**{"full_depth_warmup": 0.5, **options})
