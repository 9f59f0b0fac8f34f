"""Adaptive Computation Modules (``../shared/spec/acm.md`` §8) on the tiny backbone."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch, tiny_config
from test_flops import counted

from dht.cli import main
from dht.flops import acm_forward_flops, acm_gate_flops, acm_learner_flops
from dht.methods.acm import ACMOptions, budget_loss, diversity_loss, entropy_loss
from dht.model import DynamicEncoder
from dht.model.acm import ACM, ACMChoices, gate_labels
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import evaluate_run, train

SMALL = TrainConfig(epochs=1, batch_size=16, max_train=48, max_test=32, seed=1)
E, I, N = 16, 32, 4


def dense_ffn(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(I, E, generator=g) / 4, torch.randn(I, generator=g) / 4,
            torch.randn(E, I, generator=g) / 4, torch.randn(E, generator=g) / 4)


def sliced_acm(seed: int = 0) -> tuple[ACM, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    acm = ACM(E, I, N)
    weights = dense_ffn(seed)
    acm.load_slices(*weights, importance=torch.rand(I))
    return acm, weights


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A finished tiny BL1 run."""
    path = tmp_path_factory.mktemp("bl1") / "run"
    train(RunConfig(backbone="tiny", train=SMALL), path, progress=False)
    return path


@pytest.fixture(scope="module")
def acm_run(teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("acm") / "run"
    train(RunConfig(method="acm", backbone="tiny", train=SMALL, options={"teacher": str(teacher)}), path,
          progress=False)
    return path


def test_sliced_learners_at_k_n_equal_the_dense_ffn_and_costs_match():
    acm, (w_in, b_in, w_out, b_out) = sliced_acm()
    z = torch.randn(9, E)
    dense = F.linear(F.gelu(F.linear(z, w_in, b_in)), w_out, b_out)
    sums = acm.partial_sums(z)
    assert sums.shape == (N + 1, 9, E)
    assert torch.allclose(sums[N], dense, atol=1e-5)
    assert torch.allclose(sums[0], b_out.expand(9, E))  # k = 0: the shared output bias alone
    assert not torch.allclose(sums[N - 1], dense, atol=1e-3)
    config = tiny_config(hidden_size=E, intermediate_size=I, acm_learners=N)
    assert acm_learner_flops(config) * N == 4 * E * I  # N learners cost one dense FFN
    assert acm_gate_flops(config) == 2 * (E * 16 + 16 * (N + 1))
    assert ACM(E, I, N).w1.shape == (N, I // N, E)  # random learners: b = I / N


def test_detach_mode_sends_partial_sum_n_only_to_learner_n_and_joint_to_learners_1_to_n():
    acm, _ = sliced_acm()
    z, target = torch.randn(6, E), torch.randn(6, E)
    for detach, reached in ((True, [2]), (False, [0, 1, 2])):
        acm.zero_grad()
        ((acm.partial_sums(z, detach)[3] - target) ** 2).sum().backward()  # h(z, 3): learners 1..3
        for weight in (acm.w1, acm.b1, acm.w2):
            assert [n for n in range(N) if weight.grad[n].abs().sum() > 0] == reached, detach
        assert (acm.b_out.grad.abs().sum() > 0) == (not detach)  # h(z, 2), b_out included, is stopped


def test_gate_labels_by_hand():
    distances = torch.tensor([
        [10.0, 5.0, 2.0, 1.9, 1.0],  # d3/d2 = 0.95 >= 0.833: t = 3 (the weak learner included)
        [10.0, 9.0, 8.0, 4.0, 2.0],  # d2/d1 = 0.89: t = 2
        [10.0, 5.0, 2.5, 1.0, 0.1],  # never weak: t = N
        [10.0, 1.0, 0.1, 0.01, 0.001],  # never weak: t = N (labels are never 0 or 1)
    ])
    assert gate_labels(distances).tolist() == [3, 2, 4, 4]
    assert gate_labels(distances, tau=0.5).tolist() == [3, 2, 2, 4]  # row 2: d2 / d1 = 0.5 >= τ
    assert gate_labels(distances, k_min=3).tolist() == [3, 3, 4, 4]
    assert gate_labels(distances[:, :2], k_min=1).tolist() == [1, 1, 1, 1]  # N = 1


def test_straight_through_reaches_the_gate_and_aux_only_does_not():
    acm, _ = sliced_acm()
    acm.train()
    z = torch.randn(12, E)
    torch.manual_seed(3)
    out, k, onehot = acm(z)
    reference = acm.partial_sums(z)[k, torch.arange(12)]
    assert torch.allclose(out, reference, atol=1e-5)  # the forward is h(z, k̂)
    out.pow(2).sum().backward()
    assert acm.gate[0].weight.grad.abs().sum() > 0
    acm.zero_grad()
    acm.gate_grad = "aux_only"
    out, k, onehot = acm(z)
    assert torch.allclose(out, acm.partial_sums(z)[k, torch.arange(12)], atol=1e-5)
    out.pow(2).sum().backward()
    assert acm.gate[0].weight.grad is None or acm.gate[0].weight.grad.abs().sum() == 0
    assert onehot.requires_grad  # the auxiliary losses still reach the gate


def choices(ks: list[list[int]], K: int = N + 1) -> ACMChoices:
    """One ACM's choices for samples whose tokens chose ``ks[i]``."""
    sample = torch.tensor([i for i, row in enumerate(ks) for _ in row])
    k = torch.tensor([v for row in ks for v in row])
    return ACMChoices(sample, k, F.one_hot(k, K).float(), len(ks))


def test_auxiliary_losses_by_hand():
    one = choices([[4, 4], [0, 2]])  # mean k / N = 10 / 16
    assert budget_loss([one], N, 0.5).item() == pytest.approx(10 / 16 - 0.5)
    assert budget_loss([one], N, 0.75).item() == pytest.approx(0.75 - 10 / 16)
    # Entropy: sample 0 uses one choice (H = 0), sample 1 two equally (H = log 2), normalised by log 5.
    assert entropy_loss([one]).item() == pytest.approx(-(math.log(2) / math.log(5)) / 2)
    assert entropy_loss([choices([[0, 1], [2, 3]])]).item() < entropy_loss([choices([[0, 0], [2, 2]])]).item()
    # Diversity: b = (1, 0.25); mean over the 2 x 2 pairs of |b_i − b_m| = 2 · 0.75 / 4.
    assert diversity_loss([one], N).item() == pytest.approx(-0.375)
    # Two ACMs, samples of 3 and 1 tokens: L_b pools the tokens (not the samples), L_d averages over ACMs.
    a, b = choices([[4, 4, 4], [0]]), choices([[2, 2, 2], [0]])
    assert budget_loss([a, b], N, 0.0).item() == pytest.approx((12 + 6) / (N * 8))
    assert diversity_loss([a, b], N).item() == pytest.approx(-2 * ((12 + 6) / (N * 6)) / 4)
    assert entropy_loss([a, b]).item() == pytest.approx(0.0)  # each sample takes one choice per ACM
    onehot = F.one_hot(torch.tensor([4, 0, 2]), N + 1).float().requires_grad_()
    budget_loss([ACMChoices(torch.tensor([0, 0, 1]), torch.tensor([4, 0, 2]), onehot, 2)], N, 0.25).backward()
    assert onehot.grad[:, 1:].gt(0).all()  # choosing more learners raises L_b above the budget
    assert diversity_loss([choices([[4, 4], [0, 0]])], N).item() < diversity_loss([choices([[2, 2], [2, 2]])], N).item()


def test_gated_forward_equals_the_partial_sums_per_token_and_runs_only_the_chosen_learners():
    acm, _ = sliced_acm()
    acm.eval()
    torch.manual_seed(1)
    z, k = torch.randn(40, E), torch.randint(0, N + 1, (40,))
    with torch.no_grad():
        out = acm.gated_forward(z, k)
        assert torch.allclose(out, acm.partial_sums(z)[k, torch.arange(40)], atol=1e-5)
        # Every token gets exactly k learners: the highest-k tokens too (the authors' code runs k − 1 there).
        assert counted(lambda: acm.gated_forward(z, k)) == int(k.sum()) * 4 * E * (I // N)
    # On a padded batch pads run nothing and get zeros.
    acm.fixed_k = 2
    h, mask = torch.randn(3, 5, E), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).bool()
    with torch.no_grad():
        out = acm.forward_tokens(h, mask)
        assert counted(lambda: acm.forward_tokens(h, mask)) == 8 * 2 * 4 * E * (I // N)
    assert (out[~mask] == 0).all() and acm.last.sample.tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
    assert torch.allclose(out[1, 1], acm.partial_sums(h[1, 1:2])[2, 0], atol=1e-5)


@pytest.mark.parametrize("k", range(N + 1))
def test_acm_model_flops_match_torch_counter_at_fixed_k(k):
    config = tiny_config(hidden_size=E, intermediate_size=I, num_heads=4, acm_learners=N)
    model = DynamicEncoder(config).eval()
    for acm in model.acms():
        acm.fixed_k = k
    ids, mask = torch.randint(1, 100, (1, 11)), torch.ones(1, 11, dtype=torch.bool)
    assert counted(lambda: model(ids, mask)) == acm_forward_flops(config, 11, [11 * k] * 4, gated=False)


def test_gated_model_flops_match_torch_counter_with_the_gates():
    config = tiny_config(hidden_size=E, intermediate_size=I, num_heads=4, acm_learners=N)
    torch.manual_seed(0)
    model = DynamicEncoder(config).eval()
    ids, mask = torch.randint(1, 100, (1, 13)), torch.ones(1, 13, dtype=torch.bool)
    measured = counted(lambda: model(ids, mask))
    run = [int(acm.last.k.sum()) for acm in model.acms()]
    assert measured == acm_forward_flops(config, 13, run)


def test_in_a_training_step_the_task_loss_reaches_the_gates_only_straight_through(teacher):
    from dht.training.setup import prepare

    ids, mask = random_batch(4, 9)
    from dht.data import Batch
    batch = Batch(ids, mask, torch.tensor([0, 1, 2, 0]), torch.arange(4))
    for gate_grad in ("straight_through", "aux_only"):
        options = {"teacher": str(teacher), "gate_grad": gate_grad, "alpha_b": 0.0, "alpha_e": 0.0, "alpha_d": 0.0,
                   "acm_k": 1, "gate_bias": 50.0}  # inference settings: training must ignore them
        prepared = prepare(RunConfig(method="acm", backbone="tiny", train=SMALL, options=options))
        prepared.model.train()
        result = prepared.method.training_step(batch)
        result.loss.backward()
        reached = any(acm.gate[0].weight.grad is not None and acm.gate[0].weight.grad.abs().sum() > 0
                      for acm in prepared.model.acms())
        assert reached == (gate_grad == "straight_through")
        assert 0 < result.extra["learner_fraction"] <= 1


def test_per_sample_flops_add_up_the_tokens_choices(acm_run):
    from dht.training.loop import load_run

    prepared = load_run(acm_run)
    ids, mask = random_batch(6, 10)
    from dht.data import Batch
    batch = Batch(ids, mask, torch.zeros(6, dtype=torch.long), torch.arange(6))
    prediction = prepared.method.predict(batch)
    config = prepared.model.config
    run = [[int(acm.last.k[acm.last.sample == i].sum()) for acm in prepared.model.acms()] for i in range(6)]
    expected = [acm_forward_flops(config, int(mask[i].sum()), run[i]) for i in range(6)]
    assert prediction.flops.tolist() == pytest.approx(expected)


def test_a_run_saves_its_conversion_loads_and_meets_a_budget(acm_run):
    metrics = json.loads((acm_run / "metrics.json").read_text())
    conversion = metrics["conversion"]
    assert conversion["phase1"]["steps"] == 3 and conversion["phase2"]["steps"] == 1  # 48 rows, batch 16
    assert sum(conversion["phase2"]["label_shares"][:2]) == 0  # labels are never 0 or 1
    assert sum(metrics["test"]["acm"]["sample_fraction_histogram"]) == 32
    # --acm-k overrides the gates: every token runs k learners and no gate is counted.
    for k in (0, N):
        result = evaluate_run(acm_run, progress=False, overrides={"acm_k": k})["test"]
        assert result["acm"]["realised_fraction"] == k / N
        assert (result["flop_ratio"] == pytest.approx(1.0)) == (k == N)
    found = evaluate_run(acm_run, progress=False, budget=0.85)["budget"]
    assert found["option"] == "gate_bias" and abs(found["train_flop_ratio_all_in"] - 0.85) <= 0.01


def test_conversion_counts_in_the_all_in_training_cost(acm_run):
    from dht.flops import acm_distill_flops, full_forward_flops
    from dht.training.loop import load_run

    metrics = json.loads((acm_run / "metrics.json").read_text())
    train_block, conversion = metrics["train"], metrics["conversion"]
    prepared = load_run(acm_run)
    config, lengths = prepared.model.config, [len(row) for row in prepared.train.ids]
    # Phase 1 here is one epoch of the 48 rows, after the slice init's teacher pass over the same rows.
    expected = sum(acm_distill_flops(config, t) + full_forward_flops(config, t) for t in lengths)
    assert conversion["phase1"]["flops"] == pytest.approx(expected)
    assert conversion["flops"] == pytest.approx(conversion["phase1"]["flops"] + conversion["phase2"]["flops"])
    # all-in = (phase 3 + conversion) / BL1's training FLOPs on the same rows; phase 3 has no overheads.
    # The calibration's inference passes count too.
    full = sum(3 * full_forward_flops(config, t) for t in lengths)
    calibration = metrics["calibration"]
    assert calibration["flops"] > 0
    assert (train_block["flop_ratio_all_in"] - train_block["flop_ratio"]) * full == \
        pytest.approx(conversion["flops"] + calibration["flops"])
    assert train_block["seconds_all_in"] == pytest.approx(train_block["seconds"] + conversion["seconds"]
                                                          + calibration["seconds"])
    log = [json.loads(line) for line in (acm_run / "log.jsonl").read_text().splitlines()]
    assert len(log) == train_block["steps"] and all(0 <= r["learner_fraction"] <= 1 for r in log)


def test_the_calibrated_gate_bias_makes_the_argmax_spend_beta_on_the_training_rows(acm_run, teacher, tmp_path):
    from dht.training.evaluation import predict_split
    from dht.training.loop import load_run

    calibration = json.loads((acm_run / "metrics.json").read_text())["calibration"]
    assert calibration["train_rows"] == 48 and abs(calibration["realised_fraction"] - 0.5) <= 0.01
    prepared = load_run(acm_run)  # λ0 comes back with the run; --gate-bias adds to it
    method, train_rows = prepared.method, prepared.train
    assert all(acm.gate_bias == calibration["gate_bias"] for acm in prepared.model.acms())
    method.statistics()
    predict_split(method, train_rows.ids, train_rows.labels, 16, prepared.pad_id)
    assert method.statistics()["acm"]["realised_fraction"] == calibration["realised_fraction"]
    method.set_inference_options(gate_bias=0.25)
    assert all(acm.gate_bias == calibration["gate_bias"] + 0.25 for acm in prepared.model.acms())
    # Without calibration the gates keep λ0 = 0, and the argmax spends what it spends.
    run = RunConfig(method="acm", backbone="tiny", train=SMALL, options={"teacher": str(teacher), "calibrate": False})
    metrics = train(run, tmp_path / "plain", progress=False)
    assert metrics["calibration"] == {} and all(acm.gate_bias == 0 for acm in load_run(tmp_path / "plain").model.acms())


def test_a_run_resumed_in_phase_3_equals_one_never_stopped(teacher, tmp_path):
    from safetensors.torch import load_file

    run = RunConfig(method="acm", backbone="tiny", train=SMALL, options={"teacher": str(teacher)})
    assert train(run, tmp_path / "cut", stop_after_steps=1, progress=False) is None
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["method"]["conversion"]
    resumed = train(run, tmp_path / "cut", resume=True, progress=False)
    whole = train(run, tmp_path / "whole", progress=False)
    assert resumed["conversion"]["phase1"] == saved["phase1"]  # the resumed process did not convert again
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("cut", "whole"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert resumed["test"]["f1_macro"] == whole["test"]["f1_macro"]


@pytest.mark.parametrize("options, message", [
    ({"beta": 1.0}, "--beta"), ({"beta": 0.0}, "--beta"), ({"learners": 0}, "--learners"),
    ({"temperature": 0.0}, "--temperature"), ({"gate_grad": "both"}, "--gate-grad"), ({"acm_k": 5}, "--acm-k"),
])
def test_invalid_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ACMOptions(**options)


def test_cli_refuses_a_bad_budget_in_one_line(teacher, tmp_path, capsys):
    assert main(["train", "--method", "acm", "--teacher", str(teacher), "--beta", "1.5",
                 "--output", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--beta" in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_the_slice_init_makes_the_model_at_k_n_the_teacher(teacher):
    from dht.methods.acm_conversion import slice_init
    from dht.training.setup import prepare

    prepared = prepare(RunConfig(method="acm", backbone="tiny", train=SMALL, options={"teacher": str(teacher)}))
    method = prepared.method
    slice_init(prepared.model, method.teacher, prepared.train.ids, prepared.train.labels, prepared.pad_id, 16)
    method.set_inference_options(acm_k=N)
    ids, mask = random_batch(4, 9)
    prepared.model.eval()
    with torch.no_grad():
        assert torch.allclose(prepared.model(ids, mask), method.teacher(ids, mask), atol=1e-5)
        method.set_inference_options(acm_k=2)
        assert not torch.allclose(prepared.model(ids, mask), method.teacher(ids, mask), atol=1e-3)


def test_an_acm_run_is_not_exported_for_transformers_and_says_why(acm_run, tmp_path, capsys):
    assert main(["export", str(acm_run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "learners and gates" in err and len(err.splitlines()) == 1 and not (tmp_path / "hf").exists()
