"""Rewards match hand-computed examples; queues release exactly when full and flush at epoch end."""

import pytest
import torch

from dht.search.queues import DepthQueues, length_chunks
from dht.search.rewards import PreviousBatch, binary_reward, cost, ratio_reward


def test_costs_and_ratio_rewards_by_hand():
    loss = torch.tensor([0.5, 2.0, 1.0])
    L = torch.tensor([3.0, 6.0, 12.0])
    H = torch.tensor([12.0, 8.0, 10.0])
    assert cost(loss, L).tolist() == [1.5, 12.0, 12.0]  # δ_L = loss·L
    assert cost(loss, L, H).tolist() == [18.0, 96.0, 120.0]  # δ_cp = loss·L·H
    # previous batch mean δ = 6: r = α·6/δ, clipped to [0, r_max]
    r = ratio_reward(torch.tensor([1.5, 12.0, 0.001]), previous_mean=6.0, scale=0.5, r_max=10.0)
    assert r.tolist() == pytest.approx([2.0, 0.25, 10.0])
    # TSB: 1 where the unscaled ratio 6/δ > 1 (more effective than the previous batch)
    assert binary_reward(torch.tensor([1.5, 6.0, 12.0]), 6.0).tolist() == [1.0, 0.0, 0.0]


def test_first_batch_uses_its_own_mean_then_the_previous_one():
    previous = PreviousBatch()
    first = torch.tensor([2.0, 4.0])
    assert previous.baseline("L", first) == 3.0
    previous.remember("L", first)
    assert previous.baseline("L", torch.tensor([100.0])) == 3.0
    restored = PreviousBatch()
    restored.load_state_dict(previous.state_dict())
    assert restored.baseline("L", torch.tensor([1.0])) == 3.0


def test_queues_release_exactly_when_full():
    queues = DepthQueues(size=3)
    assert queues.push(6, "a") is None
    assert queues.push(2, "b") is None
    assert queues.push(6, "c") is None
    assert queues.push(6, "d") == ["a", "c", "d"]
    assert len(queues) == 1
    assert queues.push(6, "e") is None  # the released queue starts empty


def test_flush_releases_partial_queues_and_empties_them():
    queues = DepthQueues(size=4)
    for key, item in [(4, 1), (2, 2), (4, 3)]:
        queues.push(key, item)
    assert list(queues.flush()) == [(2, [2]), (4, [1, 3])]
    assert len(queues) == 0 and list(queues.flush()) == []


def test_queue_size_must_be_positive():
    with pytest.raises(ValueError):
        DepthQueues(size=0)


def test_a_released_batch_is_computed_in_two_length_sorted_chunks_when_that_saves_padding():
    lengths = [50, 10, 12, 48, 11, 9, 49, 10, 13, 47, 12, 10, 46, 11, 45, 50]
    chunks = length_chunks(lengths, min_size=4)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(16))  # every row once
    assert [max(lengths[i] for i in chunk) for chunk in chunks] == [13, 50]
    assert all(len(chunk) >= 4 for chunk in chunks)


def test_similar_lengths_or_small_batches_stay_one_chunk():
    assert length_chunks([30, 31, 32, 30, 29, 33, 31, 30], min_size=2) == [[4, 0, 3, 7, 1, 6, 2, 5]]
    assert length_chunks([5, 50, 6], min_size=2) == [[0, 2, 1]]  # too few rows for two chunks of 2
