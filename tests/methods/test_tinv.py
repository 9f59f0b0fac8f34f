"""Transformer⁻¹ (``../shared/spec/transformer_inverse.md`` §14) on the tiny backbone and hand-made exits."""

import json
import math

import pytest
import torch
from conftest import tiny_config
from test_flops import counted

from dht.cli import main
from dht.control.complexity import (
    DIGIT,
    PIECE,
    PUNCT,
    SPECIAL,
    UNK,
    WORD,
    ComplexityPredictor,
    first_correct_depth,
    token_statistics,
)
from dht.control.policy import CONTINUE, HALT, Episodes, HaltingPolicy, episode_rewards, halt_depth, ppo_update, rollout
from dht.data import Batch
from dht.flops import classifier_flops, full_forward_flops, plan_forward_flops
from dht.methods.tinv import dual_path_loss
from dht.model import DynamicEncoder, ExecutionPlan
from dht.model.folding import FoldedStack
from dht.search.exits import normalised_entropy
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import evaluate_run, train
from dht.training.setup import open_run

SMALL = TrainConfig(epochs=2, batch_size=16, max_train=64, max_test=32, seed=1)
TINV = {"predictor": "logistic"}


@pytest.fixture(scope="module")
def tinv_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("tinv") / "run"
    train(RunConfig(method="tinv", backbone="tiny", train=SMALL, options=TINV), path, progress=False)
    return path


@pytest.fixture(scope="module")
def tinv_w_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("tinv-w") / "run"
    train(RunConfig(method="tinv", backbone="tiny", train=SMALL, options={**TINV, "config": "tinv-w"}), path,
          progress=False)
    return path


# --- §14.1 folding ------------------------------------------------------------------------
@pytest.mark.parametrize("width", [4, 2])
def test_the_folded_stack_equals_the_encoder_on_every_path(width):
    torch.manual_seed(0)
    model = DynamicEncoder(tiny_config()).eval()
    L, nh = model.config.num_layers, model.config.num_heads
    order = [torch.randperm(nh).tolist() for _ in range(L)]  # an importance order per layer
    folded = FoldedStack(model, order)
    ids = torch.randint(1, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False
    for depth in range(1, L + 1):
        h = model.embed(ids)
        for layer in range(depth):
            h = folded.body(h, mask[:, None, None, :], layer, width)
        plan = ExecutionPlan(tuple(range(depth)), tuple(folded.heads(layer, width) for layer in range(depth)))
        reference = model.run_plan(model.embed(ids), mask, plan)
        assert torch.allclose(h, reference, atol=1e-5), depth
    if width < nh:  # the permutation matters: the first w heads in index order are another path
        plain = model.run_plan(model.embed(ids), mask, ExecutionPlan.first(L, nh, tuple(range(width))))
        assert not torch.allclose(h, plain, atol=1e-3) or order == [list(range(nh))] * L


# --- §14.2 rewards --------------------------------------------------------------------------
def test_rewards_by_hand_and_the_shaping_telescopes():
    C, eta = 4, 0.1
    phi = torch.tensor([[math.log(0.3), math.log(0.6), math.log(0.9)]])  # Φ_1..Φ_3 = log p_d(y)
    correct = torch.tensor([[False, True, True]])
    cost = torch.full((1, 3), 0.25)
    lam = torch.tensor([2.0])
    rewards, valid = episode_rewards(phi, correct, cost, torch.tensor([2]), lam, C, eta)
    phi0 = -math.log(4)
    expected = [-0.5 + eta * (math.log(0.3) - phi0), -0.5 + eta * (math.log(0.6) - math.log(0.3)),
                1 - eta * math.log(0.6)]  # continue, continue, HALT at depth 2 (correct there)
    assert rewards[0].tolist() == pytest.approx(expected)
    assert valid.tolist() == [[True, True, True]]
    rewards, valid = episode_rewards(phi, correct, cost, torch.tensor([1]), lam, C, eta)  # halt at depth 1: wrong
    assert rewards[0, :2].tolist() == pytest.approx([-0.5 + eta * (math.log(0.3) - phi0), -1 - eta * math.log(0.3)])
    assert valid.tolist() == [[True, True, False]] and rewards[0, 2] == 0
    # Every layer: the terminal reward rides on the last step; without cost, the shaping sums to −η Φ_0.
    rewards, _ = episode_rewards(phi, correct, cost, torch.tensor([3]), torch.zeros(1), C, eta)
    assert float(rewards.sum()) == pytest.approx(1 - eta * phi0)
    g = torch.Generator().manual_seed(0)
    for depth in (1, 2, 3):
        logp = -torch.rand(5, 3, generator=g) * 3
        r, v = episode_rewards(logp, torch.ones(5, 3, dtype=torch.bool), cost.expand(5, 3), torch.full((5,), depth),
                               torch.zeros(5), C, eta)
        assert (r * v).sum(1).tolist() == pytest.approx([1 - eta * phi0] * 5)


def test_halt_depth_is_the_first_halt_after_step_zero():
    actions = torch.tensor([[0, HALT, HALT], [0, CONTINUE, HALT], [0, CONTINUE, CONTINUE], [HALT, CONTINUE, CONTINUE]])
    assert halt_depth(actions).tolist() == [1, 2, 3, 3]  # step 0 is the width step: its action is no halt


# --- §14.3 PPO on a toy two-depth problem ----------------------------------------------------
def toy_episodes(policy, n, lam, generator, greedy=False):
    """Depth 1 is right and confident on even samples, wrong on odd ones; depth 2 is always right."""
    easy = torch.arange(n) % 2 == 0
    obs = torch.zeros(n, 2, 4)
    obs[:, :, 0] = torch.log2(lam)[:, None]
    obs[:, 1, 1] = easy.float()  # the depth-1 exit's confidence, seen after layer 1
    obs[:, 0, 2] = 1.0  # the t = 0 flag
    pooled = torch.zeros(n, 2, 3)
    actions, log_probs, values, depth = rollout(policy, obs, pooled, generator, greedy)
    log_p = torch.stack([torch.where(easy, -0.05, -3.0), torch.full((n,), -0.05)], 1)
    correct = torch.stack([easy, torch.ones(n, dtype=torch.bool)], 1)
    rewards, valid = episode_rewards(log_p, correct, torch.full((n, 2), 0.5), depth, lam, classes=2)
    return Episodes(obs, pooled, actions, log_probs, values, rewards, valid, valid), depth


def test_ppo_learns_to_halt_where_the_shallow_exit_is_right_and_earlier_as_compute_gets_dearer():
    torch.manual_seed(0)
    policy = HaltingPolicy(4, 3, widths=1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        lam = torch.exp(torch.empty(256).uniform_(math.log(1 / 8), math.log(8), generator=g))
        episodes, _ = toy_episodes(policy, 256, lam, g)
        ppo_update(policy, optimizer, episodes, 0.01, g)
    low = toy_episodes(policy, 8, torch.full((8,), 0.125), g, greedy=True)[1]
    high = toy_episodes(policy, 8, torch.full((8,), 8.0), g, greedy=True)[1]
    assert low.tolist() == [1, 2] * 4  # cheap compute: halt on the easy half, continue on the rest
    assert high.tolist() == [1] * 8  # a layer costs 4 > what continuing gains (2): halt everywhere


# --- §14.4 the predictor --------------------------------------------------------------------
def test_first_correct_depth_by_hand():
    logits = torch.tensor([[[1.0, 0], [0, 1], [0, 1]],  # right from depth 2
                           [[0, 1.0], [0, 1], [0, 1]],  # right from depth 1
                           [[1.0, 0], [1, 0], [1, 0]]])  # never right: N_L
    assert first_correct_depth(logits, torch.tensor([1, 1, 1])).tolist() == [2, 1, 3]


def test_token_statistics_by_hand():
    kinds = torch.tensor([SPECIAL, WORD, PIECE, UNK, DIGIT, PUNCT, WORD], dtype=torch.int8)
    log_frequency = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    ids = torch.tensor([[0, 1, 2, 1, 4, 5, 0, 0], [0, 3, 6, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    got = token_statistics(ids, mask, kinds, log_frequency)
    # Sample 0: 7 real tokens, content 1 2 1 4 5 (words 1 1 4 5: 4), one digit and one punctuation word,
    # distinct content ids 1 2 4 5, frequencies 1 2 1 4 5.
    assert got[0].tolist() == pytest.approx([7, 4, 5 / 4, 0, 1 / 4, 1 / 4, 0, 4 / 5, 13 / 5, 1])
    assert got[1].tolist() == pytest.approx([4, 2, 1, 1 / 2, 0, 0, 0, 1, 4.5, 3])


@pytest.mark.parametrize("backend", ["logistic", "lightgbm"])
def test_the_predictor_fits_a_separable_toy_set(backend):
    if backend == "lightgbm":
        pytest.importorskip("lightgbm")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 26, generator=g)
    depth = torch.where(x[:, 0] > 0, 1, 3)  # depth 2 never needed
    predictor = ComplexityPredictor(backend, 3).fit(x, depth, seed=0)
    p = predictor.predict(x)
    assert p.shape == (400, 3) and torch.allclose(p.sum(1), torch.ones(400), atol=1e-5)
    assert ((p.argmax(1) + 1) == depth).float().mean() > 0.95
    again = ComplexityPredictor.from_state(json.loads(json.dumps(predictor.state_dict())))
    assert torch.allclose(again.predict(x), p, atol=1e-6)
    assert torch.allclose(ComplexityPredictor(backend, 3).predict(x), torch.full((400, 3), 1 / 3))  # unfitted: uniform


# --- the loss ---------------------------------------------------------------------------------
def test_dual_path_loss_by_hand():
    z = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # depth 1, depth 2 (the deep exit)
    pooled = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    y = torch.tensor([1])
    ce = lambda logits: float(-torch.log_softmax(logits, -1)[y])
    p_t, p_s = torch.softmax(z[0, 1] / 2, -1), torch.softmax(z[0, 0] / 2, -1)
    kl = float((p_t * (p_t.log() - p_s.log())).sum())
    expected = ce(z[0, 1]) + 0.5 * ce(z[0, 0]) + 0.5 * 4 * kl + 1.0 * 1.0 / 2
    assert float(dual_path_loss(z, pooled, y)) == pytest.approx(expected, rel=1e-5)


# --- §14.5-7 inference, oracles, FLOPs ----------------------------------------------------------
@pytest.mark.parametrize("preset", ["tinv", "tinv-w"])
def test_batched_halting_equals_one_sample_at_a_time(preset, tinv_run, tinv_w_run):
    saved = open_run(tinv_run if preset == "tinv" else tinv_w_run)
    method = saved.method
    ids = torch.randint(5, 100, (6, 11), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(6, 11, dtype=torch.bool)
    mask[2, 4:] = mask[4, 7:] = False
    batch = Batch(ids, mask, torch.zeros(6, dtype=torch.long), torch.arange(6))
    with torch.no_grad():
        saved.model.eval()
        first_exit = method.forward_exits(batch, method.widths[0])[0][:, 0]
    split = float(normalised_entropy(first_exit).median()) + 1e-6  # half halt at depth 1, half go on
    for controller, knob in (("policy", {"cost_weight": 0.05}), ("entropy", {"entropy_threshold": split}),
                             ("predictor", {"predictor_quantile": 0.5})):
        method.set_inference_options(controller=controller, **knob)
        whole = method.predict(batch)
        if controller == "entropy":
            assert len(set(whole.routes)) > 1  # compaction, trimming and the carried state are exercised
        for i in range(6):
            one = method.predict(Batch(ids[i:i + 1, : int(mask[i].sum())], mask[i:i + 1, : int(mask[i].sum())],
                                       torch.zeros(1, dtype=torch.long), torch.tensor([i])))
            assert one.routes == [whole.routes[i]], controller
            assert torch.allclose(one.logits[0], whole.logits[i], atol=1e-5), controller
            assert float(one.flops[0]) == float(whole.flops[i])


def test_halting_flops_are_the_layers_and_every_exit_passed_and_all_in_adds_the_controller(tinv_run):
    saved = open_run(tinv_run)
    model, method = saved.model.eval(), saved.method
    config, T = model.config, 9
    ids, mask = torch.randint(5, 100, (1, T)), torch.ones(1, T, dtype=torch.bool)

    def run_to(depth):
        h = model.embed(ids)
        for layer in range(depth):
            h = model.layers[layer](h, mask[:, None, None, :], tuple(range(config.num_heads)))
            model.classifier(model.pool(h, mask))

    for depth in (1, config.num_layers):
        prediction = method._halting_prediction(torch.zeros(1, config.num_classes), [depth], [config.num_heads], [T])
        assert float(prediction.flops[0]) == pytest.approx(counted(lambda d=depth: run_to(d)), rel=0.01)
        assert float(prediction.flops[0]) == plan_forward_flops(config, ExecutionPlan.first(depth, config.num_heads),
                                                                T, classify=False) + depth * classifier_flops(config)
        assert float(prediction.all_in[0]) > float(prediction.flops[0])
        assert float(prediction.full_flops[0]) == full_forward_flops(config, T)


def test_evaluate_reports_the_controllers_and_oracles(tinv_run):
    result = evaluate_run(tinv_run, oracle=True)
    oracle = result["test"]["oracle"]
    assert set(oracle["routes"]) == {f"{d}L4H" for d in range(1, 5)}
    assert oracle["oracle_correct"]["accuracy"] >= max(r["accuracy"] for r in oracle["routes"].values())
    entropy_all = evaluate_run(tinv_run, overrides={"controller": "entropy", "entropy_threshold": 1.0})["test"]
    assert entropy_all["routes"] == {"1L4H": pytest.approx(entropy_all["routes"]["1L4H"])}  # all halt at depth 1
    assert entropy_all["flop_ratio_all_in"] == pytest.approx(entropy_all["flop_ratio"])  # exits only, no controller
    never = evaluate_run(tinv_run, overrides={"controller": "entropy", "entropy_threshold": 0.0})["test"]
    assert set(never["routes"]) == {"4L4H"}


def test_a_run_resumed_at_a_ppo_update_equals_one_never_stopped(tmp_path):
    from safetensors.torch import load_file

    # 128 rows in batches of 16: 8 steps an epoch, a PPO update at step 8 (the buffer is empty there).
    config = TrainConfig(epochs=2, batch_size=16, max_train=128, max_test=32, seed=1)
    run = RunConfig(method="tinv", backbone="tiny", train=config, options=TINV)
    assert train(run, tmp_path / "cut", stop_after_steps=8, progress=False) is None
    resumed = train(run, tmp_path / "cut", resume=True, progress=False)
    whole = train(run, tmp_path / "whole", progress=False)
    for file in ("method.safetensors", "model.safetensors"):
        a, b = (load_file(str(tmp_path / name / file)) for name in ("cut", "whole"))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), file
    assert resumed["test"]["f1_macro"] == whole["test"]["f1_macro"]
    assert resumed["ppo_updates"] == whole["ppo_updates"] == 2 + 20  # every 8 steps, then phase C's rounds


@pytest.mark.parametrize("flag, message", [
    (["--controller", "oracle"], "--controller"), (["--cost-weight", "-1"], "--cost-weight"),
    (["--predictor", "trees"], "--predictor"), (["--entropy-threshold", "2"], "--entropy-threshold")])
def test_invalid_options_stop_with_one_line(flag, message, tmp_path, capsys):
    code = main(["train", "--method", "tinv", "--backbone", "tiny", "--output", str(tmp_path / "r"), "--quiet", *flag])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "r").exists()


# --- §14.8 buckets ------------------------------------------------------------------------------
def test_buckets_pad_rows_and_tokens_without_changing_a_logit(tinv_run):
    from dht.methods.tinv_inference import bucket

    assert [bucket(n, (1, 2, 4)) for n in (1, 3, 4, 9)] == [1, 4, 4, 9]  # beyond the largest: as it is
    saved = open_run(tinv_run)
    method = saved.method
    ids = torch.randint(5, 100, (5, 13), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(5, 13, dtype=torch.bool)
    mask[1, 5:] = mask[3, 9:] = False
    batch = Batch(ids, mask, torch.zeros(5, dtype=torch.long), torch.arange(5))
    for controller, knob in (("policy", {"cost_weight": 0.05}), ("entropy", {"entropy_threshold": 0.999})):
        method.set_inference_options(controller=controller, buckets=False, **knob)
        eager = method.predict(batch)
        method.set_inference_options(buckets=True)
        padded = method.predict(batch)
        assert padded.routes == eager.routes
        assert torch.allclose(padded.logits, eager.logits, atol=1e-5)
        assert torch.equal(padded.flops, eager.flops)  # padding is never counted
        assert method.warm_up_seconds > 0
# --compile is not tested here: compiling the layer takes minutes on a 2-core CPU (`dht bench-paths --compile`).


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("preset", ["tinv", "tinv-w"])
def test_graph_replay_halts_like_the_eager_loop(preset, device, tinv_run, tinv_w_run, monkeypatch,
                                                float32_products):
    """--graphs: the same paths, logits and FLOPs as the eager loop, on 70 samples, more than the largest
    batch bucket (64), so one width group runs in two chunks. On the CPU every replay calls the captured work
    again on the same buffers (``rerun_capture``, what a CUDA graph replays); on a GPU, CUDA graphs."""
    from dht.methods.tinv_inference import TInvInference
    from dht.model.graphs import rerun_capture

    if device == "cpu":
        monkeypatch.setattr(TInvInference, "check_device", lambda self: None)  # this CPU stands in for a GPU
        monkeypatch.setattr(TInvInference, "graph_capture", lambda self: rerun_capture)
    elif not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a GPU")
    method = open_run(tinv_run if preset == "tinv" else tinv_w_run, device=device).method
    float32_products()  # after open_run, which turns TF32 on for CUDA
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, 100, (70, 17), generator=g)
    mask = torch.arange(17)[None, :] < torch.randint(3, 18, (70, 1), generator=g)
    batch = Batch(ids, mask, torch.zeros(70, dtype=torch.long), torch.arange(70)).to(device)
    with torch.no_grad():
        method.model.eval()
        first_exit = method.forward_exits(batch, method.widths[0])[0][:, 0]
    split = float(normalised_entropy(first_exit).median()) + 1e-6
    for controller, knob in (("policy", {"cost_weight": 0.05}), ("entropy", {"entropy_threshold": split}),
                             ("predictor", {"predictor_quantile": 0.5})):
        method.set_inference_options(controller=controller, graphs=False, **knob)
        eager = method.predict(batch)
        method.set_inference_options(graphs=True)
        replayed = method.predict(batch)
        assert method.layer_graphs is not None and method.warm_up_seconds > 0
        assert replayed.routes == eager.routes, controller
        assert torch.allclose(replayed.logits, eager.logits, atol=1e-5 if device == "cpu" else 1e-4), controller
        assert torch.equal(replayed.flops, eager.flops) and torch.equal(replayed.all_in, eager.all_in)
        if controller == "entropy":
            assert len(set(eager.routes)) > 1  # samples halted at several depths: compaction was exercised


def test_bench_paths_measures_every_mode_on_the_same_paths(tinv_run, tmp_path, monkeypatch):
    """Every mode on the same paths; with graphs whose largest batch bucket is 8, the 32 test samples halt
    in chunks of 8, and the baseline replays the same chunks (more groups, so more layer boundaries)."""
    from dht.benchmark.paths import bench_paths
    from dht.methods.tinv_inference import TInvInference
    from dht.model.graphs import rerun_capture

    monkeypatch.setattr(TInvInference, "check_device", lambda self: None)  # as in the test above
    monkeypatch.setattr(TInvInference, "graph_capture", lambda self: rerun_capture)
    monkeypatch.setattr("dht.methods.tinv_inference.BATCH_BUCKETS", (1, 2, 4, 8))
    deeper = {"controller": "entropy", "entropy_threshold": 0.999}  # a third halt at depth 1, the rest go on
    result = bench_paths(tinv_run, output=tmp_path / "paths.json", graphs=True, overrides=deeper)
    assert json.loads((tmp_path / "paths.json").read_text())["result"] == json.loads(json.dumps(result))
    modes = {row["mode"]: row for row in result["modes"]}
    assert list(modes) == ["eager", "buckets", "graphs"] and result["samples"] == 32
    assert modes["eager"]["layer_boundaries"] == modes["buckets"]["layer_boundaries"] > 0  # one schedule
    assert modes["graphs"]["layer_boundaries"] > modes["eager"]["layer_boundaries"]  # four chunks per batch
    assert modes["eager"]["warm_up_seconds"] == 0.0 < modes["graphs"]["warm_up_seconds"]
    for row in modes.values():
        assert row["same_paths_as_eager"] and row["max_log_probability_difference_to_eager"] < 1e-5
        assert row["flop_ratio_all_in"] == modes["eager"]["flop_ratio_all_in"]
        assert row["switch_overhead_us_per_layer"] == pytest.approx(
            (row["halting_seconds"] - row["fixed_plan_seconds"]) / row["layer_boundaries"] * 1e6)
    assert modes["graphs"]["graphs"] and modes["graphs"]["warm_up_seconds"] > 0


def test_bench_paths_takes_the_runs_inference_options_from_the_command_line(tinv_run, tmp_path, capsys):
    output = tmp_path / "paths.json"
    assert main(["bench-paths", str(tinv_run), "--controller", "entropy", "--entropy-threshold", "0.999",
                 "--output", str(output)]) == 0
    result = json.loads(output.read_text())["result"]
    assert result["overrides"] == {"controller": "entropy", "entropy_threshold": 0.999}
    assert result["modes"][0]["layer_boundaries"] > 0  # the run's own policy halts every sample at depth 1
    assert "switching n/a" not in capsys.readouterr().out


def test_graphs_on_a_cpu_stop_with_one_line(tinv_run, tmp_path, capsys):
    code = main(["evaluate", str(tinv_run), "--graphs", "true", "--output", str(tmp_path / "e.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--graphs needs a CUDA device" in err[0], err
    assert not (tmp_path / "e.json").exists()
    code = main(["train", "--method", "tinv", "--backbone", "tiny", "--output", str(tmp_path / "r"), "--quiet",
                 "--predictor", "logistic", "--graphs", "true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--graphs needs a CUDA device" in err[0], err
    assert not (tmp_path / "r").exists()
    method = open_run(tinv_run).method
    with pytest.raises(ValueError, match="--graphs needs a CUDA device"):
        method.set_inference_options(graphs=True, controller="entropy")
    assert not method.options.graphs and method.options.controller == "policy"  # left as it was
    code = main(["bench-paths", str(tinv_run), "--graphs", "--output", str(tmp_path / "paths.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--graphs needs a CUDA device" in err[0], err
    assert not (tmp_path / "paths.json").exists()
    code = main(["evaluate", str(tinv_run), "--graphs", "true", "--compile", "true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "give one" in err[0], err


# --- tinv-w: widths and head importance ---------------------------------------------------------
def test_head_importance_is_zero_for_a_head_that_writes_nothing():
    from dht.model.folding import head_importance

    torch.manual_seed(0)
    model = DynamicEncoder(tiny_config())
    dh = model.config.head_dim
    with torch.no_grad():
        model.layers[1].attention.out.weight[:, 2 * dh:3 * dh] = 0  # head 2 of layer 1 adds nothing
    ids = torch.randint(5, 100, (6, 10))
    mask = torch.ones(6, 10, dtype=torch.bool)
    importance = head_importance(model, [(ids, mask, torch.arange(6) % 2)])
    assert importance.shape == (model.config.num_layers, model.config.num_heads)
    assert importance[1, 2] == 0 and (importance[1, [0, 1, 3]] > 0).all() and (importance[0] > 0).all()


def test_tinv_w_orders_heads_and_routes_every_depth_and_width(tinv_w_run):
    saved = open_run(tinv_w_run)
    method, config = saved.method, saved.model.config
    assert method.widths == (4, 3)
    assert [sorted(order) for order in method.head_order] == [list(range(4))] * config.num_layers
    assert method.fixed_routes() == [f"{d}L{w}H" for d in range(1, 5) for w in (3, 4)]
    assert method.plan(2, 3).heads == tuple(tuple(sorted(method.head_order[layer][:3])) for layer in range(2))
    metrics = json.loads((tinv_w_run / "metrics.json").read_text())
    assert metrics["calibration"]["widths"] == [4, 3]
    widths = {json.loads(line)["width"] for line in (tinv_w_run / "log.jsonl").read_text().splitlines()}
    assert widths == {3, 4}  # epoch 2 trains at both widths


def test_inference_builds_the_observations_training_episodes_are_built_from(tinv_run):
    """The invariant between training (every exit known, ``observations``) and inference (step by step):
    the policy sees the same x_t for the same sample."""
    saved = open_run(tinv_run)
    method = saved.method
    saved.model.eval()
    ids = torch.randint(5, 100, (5, 9), generator=torch.Generator().manual_seed(7))
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[1, 6:] = False
    batch = Batch(ids, mask, torch.zeros(5, dtype=torch.long), torch.arange(5))
    method.set_inference_options(controller="policy", cost_weight=0.05)
    seen = []
    step = method.policy.step
    method.policy.step = lambda x, pooled, state, first: seen.append(x) or step(x, pooled, state, first)
    try:
        prediction = method.predict(batch)
    finally:
        method.policy.step = step
    depth = torch.tensor([int(route.split("L")[0]) for route in prediction.routes])
    with torch.no_grad():
        exits, _ = method.forward_exits(batch, method.widths[0])
        features = method._features(ids, mask)
        expected = method.observations(exits, features, mask.sum(1).tolist(), torch.full((5,), 0.05),
                                       [method.widths[0]] * 5)
    assert torch.allclose(seen[0], expected[:, 0], atol=1e-5)  # step 0: every sample
    for t, x in enumerate(seen[1:], start=1):  # step t: the samples still running, in batch order
        assert torch.allclose(x, expected[depth >= t, t], atol=1e-4), t


def test_budget_bisection_reaches_the_target_within_a_hundredth(tinv_run):
    """Spec §14.6 on a policy set by hand so that it halts later the cheaper compute is and the less sure
    the exit: the halt logit follows 2·log₂ λ − 8·(1 − max probability), through one LSTM unit."""
    from dht.control.policy import observation_width
    from dht.training.loop import load_run
    from dht.training.operating import budget_search

    prepared = load_run(tinv_run)
    method, L = prepared.method, prepared.model.config.num_layers
    policy = method.policy
    lam, max_p = L + 10, L + 14  # positions of log₂ λ and the exit's max probability in x_t
    assert observation_width(L) > max_p
    with torch.no_grad():
        for p in policy.parameters():
            p.zero_()
        policy.input.weight[0, lam], policy.input.weight[0, max_p], policy.input.bias[0] = 0.2, 0.8, -0.8
        hidden = policy.cell.hidden_size  # gates i, f, g, o: input and output open, forget shut, g follows unit 0
        policy.cell.bias_ih[0], policy.cell.bias_ih[hidden], policy.cell.bias_ih[3 * hidden] = 10, -10, 10
        policy.cell.weight_ih[2 * hidden, 0] = 3.0
        policy.halt_head.weight[1, 0] = 10.0
    method.set_inference_options(controller="policy")
    found = budget_search(prepared, 0.45, rows=64, tolerance=0.01)
    assert abs(found["train_flop_ratio_all_in"] - 0.45) <= 0.01, found
    low, high = found["reachable"]
    assert low < 0.45 < high
