"""Small parts of DHT's search against values worked out by hand (issue 20, item 5)."""

from __future__ import annotations

import math

import pytest
import torch

from dht.flops import full_forward_flops, plan_forward_flops
from dht.model import EncoderConfig, ExecutionPlan
from dht.search.arm_features import arm_steps, feature_passes, head_counts, random_kept
from dht.search.arms import Arm, SearchConfig, default_head_options, depths, partial_arms, preset
from dht.search.exits import next_arms, normalised_entropy, self_distillation
from dht.search.features import standardise, with_arm_features
from dht.search.layout import Layout, arm_flop_shares, arm_layout, probe_layers
from dht.search.queues import DepthQueues, length_chunks
from dht.search.rewards import ratio_reward
from dht.search.strategies import search_strategy


def test_normalised_entropy_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1.0, 1.0, 1.0], [1e4, 0.0, 0.0]]))
    logits[2] = torch.tensor([50.0, 0.0, 0.0])  # near-certain
    expected = [(0.5 * math.log(2) + 0.5 * math.log(4)) / math.log(3), 1.0, 0.0]
    assert normalised_entropy(logits).tolist() == pytest.approx(expected, abs=1e-6)
    two = normalised_entropy(torch.zeros(4, 2))  # two classes: uniform is 1 whatever the batch
    assert two.shape == (4,) and two.tolist() == pytest.approx([1.0] * 4)


def test_self_distillation_is_the_mean_kl_over_classes_not_over_the_batch():
    final = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    shallow = torch.zeros(3, 2)
    p = final.softmax(-1)
    kl = (p * (p.log() - math.log(0.5))).sum(-1).mean()  # KL(p_final ‖ uniform), per sample then mean
    assert float(self_distillation([shallow], final)) == pytest.approx(float(kl), rel=1e-6)
    assert float(self_distillation([shallow, final], final)) == pytest.approx(float(kl) / 2, rel=1e-6)


def test_standardise_centres_and_scales_across_arms():
    z = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 2.0], [5.0, 5.0, 2.0]])
    assert standardise(z).tolist() == [[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert standardise(torch.tensor([[1.0, 2.0]])).tolist() == [[0.0, 0.0]]  # one arm: nothing to compare
    two = standardise(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
    assert two.flatten().tolist() == pytest.approx([-2 ** -0.5, 0.0, 2 ** -0.5, 0.0])
    wide = standardise(torch.tensor([[0.0], [0.5]]))  # a spread under 1e-6 of 1 is still a spread
    assert wide[:, 0].tolist() == pytest.approx([-2 ** -0.5, 2 ** -0.5])


def test_with_arm_features_pairs_each_sample_with_each_arm():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    z = torch.tensor([[10.0], [20.0], [30.0]])
    w = with_arm_features(x, z, extra=torch.tensor([7.0]))
    assert w.shape == (2, 3, 4)
    assert w[1, 2].tolist() == [3.0, 4.0, 30.0, 7.0] and w[0, 1].tolist() == [1.0, 2.0, 20.0, 7.0]
    per_arm = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    assert with_arm_features(per_arm, z).shape == (2, 3, 6)


def test_length_chunks_cut_where_padding_falls_most():
    assert length_chunks([10] * 8 + [100] * 8) == [list(range(8)), list(range(8, 16))]
    assert length_chunks([5] * 16) == [list(range(16))]  # nothing to save
    assert length_chunks([10] * 7 + [100] * 9) == [list(range(16))]  # a chunk under 8 rows is not worth it
    assert length_chunks([]) == [[]]
    # 8 short (50) and 8 long (60): cutting saves 8·10 of 16·60 = 8.3%, under the 10% it must save
    assert length_chunks([50] * 8 + [60] * 8) == [list(range(16))]
    assert length_chunks([50] * 8 + [60] * 8, min_saving=0.05) == [list(range(8)), list(range(8, 16))]
    # the cut is the best one: 9 at 10, then 9 at 100 and 100: rows 0-8 and 9-17
    ragged = [10] * 9 + [100] * 9
    assert length_chunks(ragged) == [list(range(9)), list(range(9, 18))]
    assert length_chunks([100, 10] * 8)[0] == list(range(1, 16, 2))


def test_flushed_queues_come_out_in_depth_order():
    queues = DepthQueues(4)
    for depth in (6, 2, 4):
        queues.push(depth, depth)
    assert [key for key, _ in queues.flush()] == [2, 4, 6]


def test_an_arms_flop_share_is_at_64_tokens():
    config = EncoderConfig(vocab_size=100, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64,
                           max_position=128, num_classes=3)
    search = preset("f-dht", 4, 4)
    shares = arm_flop_shares(config, search, search.arms, False)
    first = plan_forward_flops(config, ExecutionPlan.first(2, 4), 64) / full_forward_flops(config, 64)
    assert shares.dtype == torch.float64 and float(shares[0]) == pytest.approx(first, rel=1e-12)
    assert float(shares[-1]) == pytest.approx(1.0)
    assert arm_flop_shares(config, search, search.arms, False, tokens=65)[0] != shares[0]


def test_probe_and_phase_two_layouts():
    search = preset("p-dht", 6, 12)
    assert (probe_layers(search, False), probe_layers(search, True)) == (2, 1)
    top = arm_layout(search, Arm(6, 8, top=2), True)
    assert top == Layout((), ((0, 1), (2, 3)), (4, 5))
    # d = 3: the remainder group first, layer 3 skipped, then the top k = 2
    assert arm_layout(search, Arm(5, 8, top=2), True) == Layout((), ((0,), (1, 2)), (4, 5))
    assert arm_steps(top, 8, 12) == [((0, 1), 8, True), ((2, 3), 8, True), ((4, 5), 12, False)]
    steps = arm_steps(arm_layout(search, Arm(4, 8), False), 8, 12)
    assert steps == [((0, 1), 12, False), ((2, 3), 8, True)]


def test_the_head_counts_and_passes_of_the_arm_features():
    tree, full = preset("t-dht", 6, 12), preset("f-dht", 6, 12)
    assert head_counts(full, full.arms) == (8, 10, 12)
    assert head_counts(tree, tree.arms) == (8, 10, 12)
    depth_only = SearchConfig(mode="integrated", num_layers=6, num_heads=12, b=2, c=2, head_options=(6, 12),
                              arms=(Arm(2, 12), Arm(6, 12)))
    assert head_counts(depth_only, depth_only.arms) == (12,)  # the head options are no arm's
    assert feature_passes(tree, tree.arms, 8) == [(Arm(2, None), 0), (Arm(4, None), 1), (Arm(6, None), 2),
                                                  (Arm(6, 8), None)]
    assert feature_passes(full, full.arms, 10) == [(Arm(4, 10), 2), (Arm(6, 10), 5)]
    kept = random_kept(6, 12, 8, torch.Generator().manual_seed(0))
    assert kept.dtype == torch.bool and kept.sum(1).tolist() == [8] * 6
    again = random_kept(6, 12, 8, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again) and not torch.equal(kept[0], kept[1])


def test_the_arm_list_rules_at_their_edges():
    assert default_head_options(1) == (1,) and default_head_options(3) == (2, 3)
    assert depths(6, 2, 2) == [2, 4, 6] and depths(6, 1, 2) == [1, 3, 5]
    assert (preset("t-dht", 9, 12).b, preset("t-dht", 6, 12).b, preset("t-dht", 3, 12).b) == (3, 2, 1)
    assert (preset("t-dht", 8, 12).b, preset("t-dht", 5, 12).b, preset("t-dht", 12, 12).b) == (2, 1, 3)
    arms = partial_arms(6, 12, 1, 1, (8, 12), 2)
    assert [a.label(12) for a in arms][:3] == ["2L12H", "1L8H+2L12H", "1L12H+2L12H"]
    assert arms[0].depth == 2 and len(arms) == 1 + 2 * 4


def test_next_arms_continue_with_the_same_heads_or_the_most():
    search = preset("f-dht", 6, 12)
    assert next_arms(search, search.arms) == [3, 4, 5, 6, None, None, None]  # 2L12H→4L12H, 4L8H→6L8H, …
    depth_heads = SearchConfig(mode="integrated", num_layers=6, num_heads=12, b=2, c=2, head_options=(8, 12),
                               arms=(Arm(2, 12), Arm(4, 8), Arm(6, 8), Arm(6, 10)))
    assert next_arms(depth_heads, depth_heads.arms) == [1, 2, None, None]  # 2L12H: no 4L12H, the most heads
    tree = preset("t-dht", 6, 12)
    assert next_arms(tree, tree.arms) == [1, 2, None]
    gap = SearchConfig(mode="integrated", num_layers=6, num_heads=12, b=2, c=2, head_options=(12,),
                       arms=(Arm(2, 12), Arm(6, 12)))
    assert next_arms(gap, gap.arms) == [1, None]


def test_rewards_clip_at_zero_and_r_max():
    delta = torch.tensor([1.0, 100.0, 0.01, -1.0], dtype=torch.float64)
    assert ratio_reward(delta, 2.0, 1.0, 10.0).tolist() == [2.0, 0.02, 10.0, 10.0]  # δ ≤ 0 counts as 1e-12
    assert ratio_reward(delta[:1], -2.0, 1.0, 10.0).tolist() == [0.0]


def test_tree_search_step_charges_ucb_h_per_group():
    from dht.flops import linucb_flops
    search = preset("t-dht", 6, 12)
    strategy = search_strategy(search)
    dim = strategy.ucb_h.config.dim
    per_group = linucb_flops(5, 3, dim, False) + linucb_flops(5, 1, dim, True)
    assert strategy.bandit_flops(5, 2) == pytest.approx(2 * per_group) and strategy.bandit_flops(5, 0) == 0


def test_next_arms_take_the_most_heads_whatever_the_order_and_skip_depths_with_only_top_arms():
    search = preset("f-dht", 6, 12)
    for arms, expected in (((Arm(2, 12), Arm(4, 10), Arm(4, 8)), [1, None, None]),
                           ((Arm(2, 12), Arm(4, 8), Arm(4, 10)), [2, None, None]),
                           ((Arm(2, 12), Arm(6, 8, top=2), Arm(2, 8)), [None, None, None])):
        assert next_arms(search, arms) == expected
