"""BL2 students and BL3 FastBERT on the tiny backbone."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_batch

from dht.cli import main
from dht.data import Batch
from dht.methods.distil import distillation_loss, student_layers
from dht.methods.fastbert import early_exit_predict
from dht.model import DynamicEncoder, ExecutionPlan
from dht.search.exits import normalised_entropy
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import train
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=1, batch_size=16, max_train=48, max_test=32, seed=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A finished tiny BL1 run."""
    path = tmp_path_factory.mktemp("bl1") / "run"
    train(RunConfig(backbone="tiny", train=SMALL), path, progress=False)
    return path


def test_student_layers_are_uniformly_spaced():
    assert student_layers(6, 3) == (0, 2, 4)
    assert student_layers(12, 6) == (0, 2, 4, 6, 8, 10)
    assert student_layers(6, 1) == (0,)
    assert student_layers(4, 4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="--layers"):
        student_layers(6, 7)


def test_student_starts_as_the_teacher_over_its_layers(teacher):
    prepared = prepare(RunConfig(method="distil", backbone="tiny", train=SMALL,
                                 options={"teacher": str(teacher), "layers": 2}))
    method = prepared.method
    ids, mask = random_batch(vocab=1000)
    batch = Batch(ids, mask, torch.zeros(len(ids), dtype=torch.long), torch.arange(len(ids)))
    student = method.predict(batch).logits
    saved = DynamicEncoder(method.teacher.config).eval()
    saved.load_state_dict(method.teacher.state_dict())
    with torch.no_grad():
        expected = saved(ids, mask, ExecutionPlan((0, 2), ((0, 1, 2, 3),) * 2))
    assert torch.allclose(student, expected, atol=1e-6)


def test_distillation_loss_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.5, 0.0], [0.0, 3.0, -1.0]])
    labels = torch.tensor([0, 1])
    hard = float(F.cross_entropy(student, labels))
    assert distillation_loss(student, teacher, labels, 2.0, 0.0) == pytest.approx(hard)
    assert distillation_loss(teacher, teacher, labels, 3.0, 1.0) == pytest.approx(0.0, abs=1e-7)
    p_t, p_s = F.softmax(teacher / 2, -1), F.softmax(student / 2, -1)
    kl = float((p_t * (p_t.log() - p_s.log())).sum(-1).mean())
    expected = 0.3 * 4 * kl + 0.7 * float(F.cross_entropy(student, labels))
    assert distillation_loss(student, teacher, labels, 2.0, 0.3) == pytest.approx(expected, rel=1e-6)


def test_normalised_entropy_and_exit_rule():
    assert normalised_entropy(torch.zeros(1, 4)).item() == pytest.approx(1.0)
    assert normalised_entropy(torch.tensor([[50.0, 0, 0, 0]])).item() < 1e-6
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    assert normalised_entropy(p.log()).item() == pytest.approx(float(-(p * p.log()).sum() / math.log(4)), rel=1e-6)


def branchy_model(seed=0):
    """A tiny model with sharp random branch classifiers, so samples exit at different layers."""
    from conftest import tiny_config
    torch.manual_seed(seed)
    model = DynamicEncoder(tiny_config(branch_classifiers=True)).eval()
    for branch in model.branches:
        torch.nn.init.normal_(branch.weight, std=0.5)
    return model


def test_batched_early_exit_equals_each_sample_alone():
    model = branchy_model()
    ids, mask = random_batch(batch=8, length=10)
    logits, depth = early_exit_predict(model, ids, mask, speed=0.5)
    assert len(set(depth.tolist())) > 1  # the batch really splits
    for i in range(8):
        n = int(mask[i].sum())
        alone, alone_depth = early_exit_predict(model, ids[i:i + 1, :n], mask[i:i + 1, :n], speed=0.5)
        assert alone_depth.item() == depth[i].item()
        assert torch.allclose(alone[0], logits[i], atol=1e-5)


def test_exiting_at_the_last_layer_equals_the_full_model():
    model = branchy_model()
    ids, mask = random_batch(batch=6)
    logits, depth = early_exit_predict(model, ids, mask, speed=0.0)
    assert (depth == 4).all()
    with torch.no_grad():
        assert torch.allclose(logits, model(ids, mask), atol=1e-6)


def test_fastbert_trains_only_its_branches_and_saves_them(teacher, tmp_path):
    run = RunConfig(method="fastbert", backbone="tiny", train=SMALL, options={"teacher": str(teacher), "speed": 0.3})
    metrics = train(run, tmp_path / "fb", progress=False)
    from safetensors.torch import load_file
    before, after = load_file(str(teacher / "model.safetensors")), load_file(str(tmp_path / "fb" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(k.startswith("branches.") for k in after)
    assert 0.33 < metrics["train"]["flop_ratio"] < 0.4  # a frozen forward plus tiny branch updates
    # An unsure model exits late and pays for the branches on top of the full model; speed 1 exits at layer 1.
    assert 0.25 < metrics["test"]["flop_ratio"] < 1.01
    eager = RunConfig(method="fastbert", backbone="tiny", train=SMALL, options={"teacher": str(teacher), "speed": 1.0})
    eager = train(eager, tmp_path / "eager", progress=False)
    assert eager["test"]["flop_ratio"] == pytest.approx(0.25, abs=0.01)
    assert eager["test"]["routes"]["1L"]["share"] == 1.0  # every sample took the first exit


def test_fastbert_branches_start_as_the_final_classifier_and_train_at_their_own_rate(teacher):
    prepared = prepare(RunConfig(method="fastbert", backbone="tiny", train=SMALL, options={"teacher": str(teacher)}))
    final = prepared.model.classifier
    assert len(prepared.model.branches) == 3
    for branch in prepared.model.branches:
        assert torch.equal(branch.weight, final.weight) and torch.equal(branch.bias, final.bias)
    assert prepared.method.peak_lr() == 1e-3 != SMALL.lr
    custom = prepare(RunConfig(method="fastbert", backbone="tiny", train=SMALL,
                               options={"teacher": str(teacher), "branch_lr": 5e-3}))
    assert custom.method.peak_lr() == 5e-3


def test_a_fastbert_run_is_evaluated_at_another_speed(teacher, tmp_path, capsys):
    run = RunConfig(method="fastbert", backbone="tiny", train=SMALL, options={"teacher": str(teacher), "speed": 0.0})
    metrics = train(run, tmp_path / "fb", progress=False)
    assert metrics["test"]["flop_ratio"] > 1.0  # speed 0 never exits and pays for every branch
    assert main(["evaluate", str(tmp_path / "fb"), "--speed", "1.0", "--quiet"]) == 0
    result = json.loads((tmp_path / "fb" / "evaluation.json").read_text())
    assert result["options"]["speed"] == 1.0
    assert result["test"]["flop_ratio"] == pytest.approx(0.25, abs=0.01)  # every sample exits after layer 1
    assert "inference paths: 1L 100% (accuracy" in capsys.readouterr().out
    assert main(["evaluate", str(teacher), "--speed", "0.5", "--quiet"]) == 2
    assert "a full run has no inference option --speed" in capsys.readouterr().err


def test_methods_that_need_a_teacher_say_so(tmp_path, capsys):
    for method in ("distil", "fastbert"):
        code = main(["train", "--method", method, "--backbone", "tiny", "--output", str(tmp_path / method), "--quiet"])
        assert code == 2 and "--teacher" in capsys.readouterr().err
        assert not (tmp_path / method).exists()


def test_a_teacher_that_is_not_a_bl1_run_is_refused(teacher, tmp_path, capsys):
    import shutil

    other = tmp_path / "dht-run"
    shutil.copytree(teacher, other)
    saved = json.loads((other / "run.json").read_text())
    saved["run"]["method"] = "dht"  # a finished run of another method, with the same weights
    (other / "run.json").write_text(json.dumps(saved))
    for method in ("distil", "fastbert"):
        code = main(["train", "--method", method, "--backbone", "tiny", "--teacher", str(other), "--output",
                     str(tmp_path / method), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"--teacher {other}: a run of --method dht; the teacher is a run of --method full" in err
        assert not (tmp_path / method).exists()


def test_bench_runs_every_method_and_skips_finished_runs(tmp_path, monkeypatch):
    import dht.benchmark as bench
    monkeypatch.setitem(bench.QUICK, "max_train", 32)
    monkeypatch.setitem(bench.QUICK, "max_test", 16)
    rows = bench.run_bench("", "tiny", tmp_path, quick=True, rounds=1, progress=False)
    names = [r["config"] for r in rows]
    expected = {"distil-1", "distil-2", "fastbert-0.5", "s-dht", "p-dht", "dlt", "acm-b25", "acm-b50", "acm-b75"}
    assert names[0] == "full" and expected <= set(names)
    by_name = {r["config"]: r for r in rows}
    assert by_name["full"]["trainable_params_ratio"] == 1.0 and by_name["dlt"]["test_flop_ratio"] == 1.0
    assert by_name["fastbert-0.5"]["trainable_params_ratio"] < 0.1  # only the branch classifiers train
    assert "trainable params vs BL1" in (tmp_path / "table1.md").read_text()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith("fastbert")) == ["fastbert"]
    fastbert = {r["config"]: r for r in rows if r["method"] == "fastbert"}  # one training, three speeds
    assert len({r["train_seconds"] for r in fastbert.values()}) == 1
    assert fastbert["fastbert-0.1"]["test_flop_ratio"] >= fastbert["fastbert-0.8"]["test_flop_ratio"]
    assert rows[0]["test_wall_ratio"] == 1.0
    # On the tiny backbone an ACM's gate costs 14% of its FFN (2·(32·16 + 16·5) against 4·32·64 FLOPs a token).
    assert all(0 < r["test_flop_ratio"] <= (1.15 if r["method"] == "acm" else 1.01) for r in rows)
    for name in ("table1.md", "table2.md", "front.md", "results.json", "curves.json", "front.json", "pareto.png",
                 "pareto_training.png", "selection-s-dht.png"):
        assert (tmp_path / name).is_file()
    # Costs with the teacher: a student, FastBERT or ACM adds BL1's training (same rows and epochs here: + 1.0).
    for r in rows:
        teacher = 1.0 if r["method"] in ("distil", "fastbert", "acm") else 0.0
        assert r["train_flop_ratio_with_teacher"] == pytest.approx(r["train_flop_ratio_all_in"] + teacher)
    # Curves: FastBERT's trained run at every tenth of speed (once, not once per speed row), each DHT
    # preset at its cost weights, and the oracle routers of F-DHT (ORACLE_ROWS; not T-, S- or P-DHT).
    points = json.loads((tmp_path / "curves.json").read_text())["result"]
    speeds = [p for p in points if p["config"] == "fastbert" and p["kind"] == "knob"]
    assert [p["value"] for p in speeds] == [i / 10 for i in range(11)]
    assert speeds[0]["test_flop_ratio_all_in"] == pytest.approx(1.0, abs=0.01)  # speed 0 never exits early
    assert speeds[5]["f1_macro"] == by_name["fastbert-0.5"]["f1_macro"]  # the same evaluation as the row
    for preset in ("t-dht", "s-dht", "f-dht", "p-dht"):
        kinds = [p["kind"] for p in points if p["config"] == preset]
        assert kinds == ["knob"] * 7 + (["oracle_correct", "oracle_agrees_with_full"] if preset == "f-dht" else [])
    at_zero = next(p for p in points if p["config"] == "s-dht" and p["value"] == 0.0)  # the row's own λ: its scores
    assert (at_zero["f1_macro"], at_zero["test_flop_ratio_all_in"]) == (by_name["s-dht"]["f1_macro"],
                                                                        by_name["s-dht"]["test_flop_ratio_all_in"])
    front = json.loads((tmp_path / "front.json").read_text())["result"]
    assert [f["config"] for f in front] == names and all(f["seeds"] == [0] and f["f1_macro_std"] == 0 for f in front)
    assert front[0]["f1_macro_mean"] == rows[0]["f1_macro"]
    stamp = (tmp_path / "runs" / "full" / "metrics.json").stat().st_mtime
    # Again through the CLI, whose --device defaults to auto: nothing retrained, results.json rewritten.
    assert main(["bench", "--quick", "--backbone", "tiny", "--output", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "runs" / "full" / "metrics.json").stat().st_mtime == stamp  # not redone
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["provenance"]["device"].startswith("cpu") and len(written["result"]) == len(rows)
