"""DHT's steps split over ranks, in one process: threads stand for torchrun ranks.

Each thread holds a DHT method built like the other (same seed) with a world whose collectives exchange
tensors between the threads (``ThreadWorld``), so the code paths of ``Shard``, the gathered probe, S2 on a
rank's rows and the gathered losses run as under torchrun, fast enough for mutation testing. Dropout is
off, so every sample's states and loss are those of one process on the whole batch, and the bandits must
end where one process's end (tests/training/test_distributed.py runs the real thing with torchrun).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
import torch
from state_checks import assert_same_state

from dht.data import iterate_batches
from dht.training.config import RunConfig, TrainConfig
from dht.training.distributed import World
from dht.training.setup import prepare

SMALL = TrainConfig(epochs=1, batch_size=8, max_train=44, max_test=8, seed=3)  # F-DHT's last queue: 1 sample


pytestmark = pytest.mark.usefixtures("dataset_read_once")  # tests/conftest.py


class Hub:
    """Where the threads' collectives meet: each puts its value, all wait, each reads every value."""

    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[Any] = [None] * size

    def exchange(self, rank: int, value: Any) -> list[Any]:
        self.slots[rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()  # nobody writes the next value before everyone read this one
        return values


@dataclasses.dataclass(frozen=True)
class ThreadWorld(World):
    """A World whose ranks are threads of this process (the collectives DHT uses)."""

    hub: Hub | None = None

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        start, stop = self.rows(n)
        assert len(local) == stop - start  # each rank gives exactly its rows
        return torch.cat(self.hub.exchange(self.rank, local.detach().clone()))

    def broadcast(self, tensor: torch.Tensor) -> None:
        tensor.copy_(self.hub.exchange(self.rank, tensor.clone())[0])


def method_on(world: World, config: str, **options):
    """A DHT method with dropout off and the loader's batches of 8. Built in the test's thread: ``prepare``
    seeds torch's global generator, which threads share."""
    prepared = prepare(RunConfig(method="dht", backbone="tiny", train=SMALL, options={"config": config, **options}))
    prepared.model.eval()  # no dropout: a sample's states do not depend on which rank runs it
    prepared.method.world = world
    batches = list(iterate_batches(prepared.train.ids, prepared.train.labels, 8, prepared.pad_id, shuffle=False))
    return prepared, batches


def train_epoch(prepared, batches) -> list[dict]:
    """The first epoch's arm features, then every released queue through training_step (no optimizer
    step: the weights stay)."""
    method, results = prepared.method, []
    method.on_train_start(prepared.train.ids, prepared.train.labels, prepared.pad_id, 0)  # the warm-up's length
    method.on_epoch_start(0, prepared.train.ids, prepared.pad_id)
    for batch in method.training_batches(iter(batches)):
        result = method.training_step(batch)
        results.append({"loss": result.loss.detach(), "shard": result.shard, "samples": len(batch),
                        "flops": result.flops, "all_in": result.all_in, "records": result.records})
    return results


def on_ranks(config: str, size: int = 3, **options) -> list[tuple[Any, list[dict]]]:
    """The epoch on ``size`` thread-ranks: each rank's method and step results."""
    hub, out, errors = Hub(size), [None] * size, []
    ranks = [method_on(ThreadWorld(r, size, 0, hub), config, **options) for r in range(size)]

    def rank(r: int) -> None:
        try:
            prepared, batches = ranks[r]
            out[r] = (prepared.method, train_epoch(prepared, batches))
        except BaseException as error:  # noqa: BLE001  (re-raised in the test's thread)
            errors.append(error)
            hub.barrier.abort()

    # Rank 0 runs in the test's own thread, where tools that trace a test's calls (mutmut) see them.
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(1, size)]
    for thread in threads:
        thread.start()
    rank(0)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return out




@pytest.fixture
def one_chunk(monkeypatch):
    """One process runs each queue in one chunk, as the ranks do: Thompson sampling draws per call, so
    two length chunks would draw the heads' posterior samples in another grouping."""
    import dht.methods.dht as dht_module

    monkeypatch.setattr(dht_module, "length_chunks", lambda lengths: [list(range(len(lengths)))])


@pytest.mark.parametrize("config, options", [("f-dht", {}), ("t-dht", {}), ("f-dht", {"self_distill": 1.0}),
                                             ("f-dht", {"self_distill": 1.0, "exit_classifiers": "per-depth"}),
                                             ("f-dht", {"self_distill": 1.0, "exit_classifiers": "per-depth",
                                                        "full_depth_warmup": 0.4})])
def test_two_ranks_take_one_process_decisions_and_bandit_updates(config, options, one_chunk):
    """Integrated search (F-DHT), tree search (T-DHT, UCB_H per group) and self-distilled exits (read by the
    shared classifier or by each depth's own): over an
    epoch of 44 samples on three ranks (queues of 8; the epoch's last queues hold fewer), the ranks'
    bandits, normalisers, queues and records equal one process's on the same batches, and each other's
    bit for bit; the ranks' losses, weighted by their rows, are one process's (self-distillation's term
    included). With --full-depth-warmup 0.4, the first 3 loader batches (24 samples) run at full depth on
    each rank's rows, and the bandits learn from the other 20."""
    (zero, steps0), (one, steps1), (two, steps2) = on_ranks(config, **options)
    single, batches = method_on(World(), config, **options)
    reference = train_epoch(single, batches)
    single = single.method
    state = zero.state_dict()
    routed = 44 - (24 if options.get("full_depth_warmup") else 0)
    assert state["ucb_top"]["counts"].sum() == routed  # every routed sample updated the top bandit once
    assert_same_state(state, single.state_dict(), tolerance=1e-5)  # one process: to float rounding
    assert_same_state(state, one.state_dict())  # the ranks: bit for bit
    assert_same_state(state, two.state_dict())
    assert [s["records"] for s in steps0] == [s["records"] for s in steps1] == [s["records"] for s in steps2]
    assert [[r["arm"] for r in s["records"]] for s in steps0] == [[r["arm"] for r in s["records"]] for s in reference]
    for step, ref in enumerate(reference):
        parts = [results[step] for results in (steps0, steps1, steps2)]
        whole = sum(float(p["loss"]) * p["shard"] for p in parts) / ref["samples"]
        assert whole == pytest.approx(float(ref["loss"]), rel=1e-5), step
        assert all(p["flops"] == pytest.approx(ref["flops"]) for p in parts), step  # self-distilled exits' too


def test_each_rank_averages_its_own_rows_and_reports_the_whole_queues_costs(one_chunk):
    """A queue of B samples over three ranks: rank r trains on B // 3 rows, one more for r < B % 3, each
    loss the mean over its own rows (0 for a rank with none) so that the loop's weighted sum is one
    process's mean; the FLOPs and records are the whole queue's on every rank, as one process counts them."""
    ranks = on_ranks("f-dht")
    reference = train_epoch(*method_on(World(), "f-dht"))
    for step, ref in enumerate(reference):
        n, steps = ref["samples"], [results[step] for _, results in ranks]
        assert [s["shard"] for s in steps] == [n // 3 + (r < n % 3) for r in range(3)]
        whole = sum(s["loss"] * s["shard"] for s in steps) / n
        assert whole == pytest.approx(float(ref["loss"]), rel=1e-5)
        assert all(float(s["loss"]) == 0.0 for s in steps if s["shard"] == 0)
        assert all(s["flops"] == pytest.approx(ref["flops"]) and s["all_in"] == pytest.approx(ref["all_in"])
                   for s in steps)
        assert [r["loss"] for r in steps[0]["records"]] == pytest.approx([r["loss"] for r in ref["records"]], rel=1e-5)
    assert [s["shard"] for _, results in ranks for s in results[-1:]] == [1, 0, 0]  # the last queue: 1 sample


def test_every_rank_takes_rank_zeros_arm_features():
    """§3's arm features are computed on every rank and then replaced by rank 0's, in place: a rank whose
    network differs in the last bits (a GPU's sums do) still routes with rank 0's features."""
    hub = Hub(2)
    ranks = [method_on(ThreadWorld(r, 2, 0, hub), "f-dht") for r in range(2)]
    with torch.no_grad():
        for p in ranks[1][0].model.parameters():
            p.mul_(1 + 1e-3)
    own = method_on(World(), "f-dht")[0]  # rank 1's network alone: what it would compute for itself
    with torch.no_grad():
        for p in own.model.parameters():
            p.mul_(1 + 1e-3)
    own.method.on_epoch_start(0, own.train.ids, own.pad_id)
    other = threading.Thread(target=lambda p=ranks[1][0]: p.method.on_epoch_start(0, p.train.ids, p.pad_id))
    other.start()
    ranks[0][0].method.on_epoch_start(0, ranks[0][0].train.ids, ranks[0][0].pad_id)  # rank 0: this thread
    other.join()
    zero, one = (p.method.features for p, _ in ranks)
    assert not torch.equal(own.method.features.top, zero.top)  # the two networks' features differ
    for name in ("top", "head_count", "head"):
        assert torch.equal(getattr(zero, name), getattr(one, name)), name
