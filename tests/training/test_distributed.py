"""Training under torchrun (two CPU processes, gloo): the same weights as one process on the same batches."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from state_checks import assert_same_state

from dht.data import collate
from dht.model.backbones import minilm_dir
from dht.training.distributed import World

SMALL = ["--max-train", "44", "--max-test", "8", "--batch-size", "8", "--epochs", "1", "--quiet"]


def two_layer_minilm(tmp_path):
    """MiniLM's first two layers without dropout: a real backbone whose steps do not depend on how the
    random dropout masks fall, so one process and two give the same weights."""
    target = tmp_path / "minilm2"
    target.mkdir()
    shutil.copy(minilm_dir() / "tokenizer.json", target / "tokenizer.json")
    config = json.loads((minilm_dir() / "config.json").read_text())
    config.update(num_hidden_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (target / "config.json").write_text(json.dumps(config))
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if not k.startswith("encoder.layer.")
            or int(k.split(".")[2]) < 2}
    save_file(kept, str(target / "model.safetensors"))
    return target


def launch(args, ranks, tmp_path):
    """``dht train ARGS`` in one process, or under torchrun with ``ranks`` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    prefix = [sys.executable, "-m", "dht"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m", "dht"]
    return subprocess.run(prefix + ["train", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """BL1 on the two-layer MiniLM, one process and two, the same 44 samples in batches of 8 (the last of 4)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    common = ["--method", "full", "--backbone", str(two_layer_minilm(tmp_path)), *SMALL]
    done = {ranks: launch(common + ["--output", str(tmp_path / f"ranks{ranks}")], ranks, tmp_path)
            for ranks in (1, 2)}
    for result in done.values():
        assert result.returncode == 0, result.stderr[-2000:]
    return tmp_path, common


def test_two_ranks_train_the_weights_of_one_process(runs):
    """Each rank trains on half of each batch of 8 and the gradients are averaged over the batch: after
    the six steps (the last of 4 samples, 2 per rank), every weight equals one process's within 1e-5."""
    tmp_path, _ = runs
    one, two = (load_file(str(tmp_path / f"ranks{r}" / "model.safetensors")) for r in (1, 2))
    assert one.keys() == two.keys()
    start = load_file(str(minilm_dir() / "model.safetensors"))["encoder.layer.1.output.dense.weight"]
    moved = one["layers.1.ffn_out.weight"]
    assert (moved - start).abs().max() > 1e-4  # the steps changed the weights compared
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-5


def test_rank_zero_alone_writes_and_logs_global_steps(runs):
    """One log record per global step with the global batch's size and mean loss; metrics count all 44
    samples and the same FLOPs as one process."""
    tmp_path, _ = runs
    logs = {r: [json.loads(line) for line in (tmp_path / f"ranks{r}" / "log.jsonl").read_text().splitlines()]
            for r in (1, 2)}
    assert [x["samples"] for x in logs[2]] == [x["samples"] for x in logs[1]] == [8, 8, 8, 8, 8, 4]
    assert [x["loss"] for x in logs[2]] == pytest.approx([x["loss"] for x in logs[1]], abs=1e-5)
    metrics = {r: json.loads((tmp_path / f"ranks{r}" / "metrics.json").read_text()) for r in (1, 2)}
    assert metrics[2]["train"]["samples"] == metrics[1]["train"]["samples"] == 44
    assert metrics[2]["train"]["flop_ratio"] == pytest.approx(metrics[1]["train"]["flop_ratio"])
    assert metrics[2]["test"]["f1_macro"] == pytest.approx(metrics[1]["test"]["f1_macro"], abs=1e-6)


# Run the dht CLI on this rank; STOP_AFTER stops training after that many steps; with STATE_DIR, each rank
# saves there (rankR.pt) its method's state after its last training step and its weights as that step began
# (every update but the last; rank 0 goes on alone to evaluate, which may change what it holds).
RANK_SCRIPT = """
import copy
import os
import sys

import torch

from dht.cli import main
from dht.training import loop, setup

last = {}
make_method = setup.make_method


def keep(*args, **kwargs):
    method = make_method(*args, **kwargs)
    step = method.training_step

    def step_and_keep(batch):
        result = step(batch)
        last["method"] = copy.deepcopy(method.state_dict())
        last["model"] = copy.deepcopy(method.model.state_dict())
        return result

    method.training_step = step_and_keep
    return method


setup.make_method = keep
if os.environ.get("STOP_AFTER"):
    real = loop.train
    loop.train = lambda *a, **k: real(*a, **{**k, "stop_after_steps": int(os.environ["STOP_AFTER"])})
code = main(sys.argv[1:])
if os.environ.get("STATE_DIR"):
    torch.save(last, os.path.join(os.environ["STATE_DIR"], f"rank{os.environ['RANK']}.pt"))
sys.exit(code)
"""


def launch_script(args, tmp_path, **env):
    """RANK_SCRIPT under torchrun with two ranks."""
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), "train", *args], capture_output=True, text=True, env=env, timeout=300)


def test_resume_needs_the_same_number_of_ranks(runs, tmp_path):
    """A run stopped by two ranks resumes under two (and then equals the uninterrupted one); one process
    is refused with one line naming both numbers."""
    source, common = runs
    output = tmp_path / "cut"
    stopped = launch_script([*common, "--output", str(output)], tmp_path, STOP_AFTER="3")
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert not (output / "metrics.json").exists() and (output / "checkpoint").is_dir()
    for ranks in (1, 3):  # refused before anything in the folder changes
        refused = launch(["--resume", "--output", str(output), "--quiet"], ranks, tmp_path)
        assert refused.returncode != 0 and f"trained by 2 process(es); resume it with as many " \
            f"(torchrun --nproc-per-node), not {ranks}" in refused.stderr
    resumed = launch(["--resume", "--output", str(output), "--quiet"], 2, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_file(str(folder / "model.safetensors")) for folder in (source / "ranks2", output))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_a_last_batch_smaller_than_the_world_is_refused_before_training(tmp_path):
    """41 rows in batches of 8 leave a last batch of 1 for 2 ranks: refused in one line, nothing trained."""
    args = ["--method", "full", "--backbone", "tiny", "--max-train", "41", "--max-test", "8", "--batch-size", "8",
            "--quiet", "--output", str(tmp_path / "run")]
    refused = launch(args, 2, tmp_path)
    assert refused.returncode != 0 and "a batch of 1 samples, fewer than the 2 ranks" in refused.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()




def rank_states(args, tmp_path):
    """``dht train ARGS`` on two ranks; each rank's method state and weights after its last step."""
    states = tmp_path / "states"
    states.mkdir()
    done = launch_script([*args, "--output", str(tmp_path / "run")], tmp_path, STATE_DIR=str(states))
    assert done.returncode == 0, done.stderr[-2000:]
    return [torch.load(states / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


DHT = ["--method", "dht", "--backbone", "tiny", "--max-train", "60", "--max-test", "8", "--batch-size", "8",
       "--epochs", "2", "--quiet"]


@pytest.mark.parametrize("options", [["--config", "t-dht"], ["--config", "f-dht", "--self-distill", "1"]])
def test_dht_bandits_and_normalisers_are_identical_on_every_rank(tmp_path, options):
    """Two epochs of DHT on two ranks, each running S2 on its rows of each queue (a queue of one sample
    leaves one rank none): every bandit, normaliser, queue and generator is the same bit for bit on both
    ranks, and each step is logged once, with the whole queue's samples."""
    zero, one = rank_states([*DHT, *options], tmp_path)
    assert zero["method"]["ucb_top"]["counts"].sum() > 0  # the bandits learned something to compare
    assert_same_state(zero, one, skip=lambda where: where.endswith(".seconds"))  # clocks differ
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum(x["samples"] for x in log) == 2 * 60
    decisions = (tmp_path / "run" / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) == 2 * 60


@pytest.mark.parametrize("args", [["--method", "dlt", "--decision-every", "2"],
                                  ["--method", "tinv", "--config", "tinv-w"], ["--method", "acm"]])
def test_the_other_dynamic_methods_keep_their_agents_identical_on_every_rank(tmp_path, args):
    """Layer tying's Q-learning agent (rank 0's probe reward shared), Transformer⁻¹'s policy, predictor labels
    and head order (its exits gathered), and ACM's converted network (rank 0's, broadcast): after two
    epochs on two ranks, every rank holds the same state and weights bit for bit (clock readings aside)."""
    if args[1] == "acm":  # ACM converts a BL1 teacher
        teacher = launch(["--method", "full", "--backbone", "tiny", "--max-train", "24", "--max-test", "8",
                          "--epochs", "1", "--quiet", "--output", str(tmp_path / "bl1")], 1, tmp_path)
        assert teacher.returncode == 0, teacher.stderr[-2000:]
        args = [*args, "--teacher", str(tmp_path / "bl1")]
    tiny = ["--backbone", "tiny", "--max-train", "60", "--max-test", "8", "--batch-size", "8", "--epochs", "2",
            "--quiet"]
    zero, one = rank_states([*args, *tiny], tmp_path)
    assert_same_state(zero, one, skip=lambda where: where.endswith(".seconds"))  # clocks differ


def test_dht_resumed_on_two_ranks_equals_its_uninterrupted_run(tmp_path):
    """Stopped after 3 steps and resumed, a two-rank DHT run takes the same decisions and ends with the
    same weights as the same run uninterrupted."""
    common = [*DHT, "--config", "f-dht"]
    whole = launch_script([*common, "--output", str(tmp_path / "whole")], tmp_path)
    cut = launch_script([*common, "--output", str(tmp_path / "cut")], tmp_path, STOP_AFTER="3")
    assert whole.returncode == 0 and cut.returncode == 0, whole.stderr[-2000:] + cut.stderr[-2000:]
    resumed = launch(["--resume", "--output", str(tmp_path / "cut"), "--quiet"], 2, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / "whole" / "decisions.jsonl").read_text() == (tmp_path / "cut" / "decisions.jsonl").read_text()
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("whole", "cut"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_shards_are_contiguous_and_cover_the_batch():
    """Ten rows over three ranks: 4, 3, 3, in order."""
    batch = collate([[5, 6]] * 10, list(range(10)), list(range(10)), 0)
    shards = [World(rank, 3).shard(batch) for rank in range(3)]
    assert [s.labels.tolist() for s in shards] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert World().shard(batch) is batch


def test_each_rank_draws_its_own_dropout():
    """Ranks of one run get seeds of their own (so their dropout masks differ), the same on every launch."""
    seeds = [World(rank, 4).rank_seed(7) for rank in range(4)]
    assert len(set(seeds)) == 4 and seeds == [World(rank, 4).rank_seed(7) for rank in range(4)]
    assert World(0, 4).rank_seed(8) not in seeds


def test_one_process_world_reads_the_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert World.from_environment() == World(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK=3"):
        World.from_environment()
    assert World(0, 1).sum([1.5]) == [1.5]
