"""Every field of a search config and every DHT option is checked on its own (issue 20, item 2): a wrong type
names that field, and each bound accepts its edge and refuses the value just past it."""

from __future__ import annotations

import pytest

from dht.methods.dht import DHTOptions
from dht.search.arms import Arm, SearchConfig, arm_from_json, preset
from dht.search.queues import DepthQueues
from dht.search.strategies import search_strategy

INTEGERS = ("num_layers", "num_heads", "b", "c", "q", "feature_samples", "top", "freeze_after")
NUMBERS = ("alpha", "beta_h", "beta_cp", "explore", "lam", "r_max")


def base() -> dict:
    return preset("p-dht", 6, 12).to_dict()  # P-DHT sets every field, freeze_after and top included


@pytest.mark.parametrize("name", INTEGERS)
def test_each_integer_field_refuses_a_string_naming_itself(name):
    data = {**base(), name: "2"}
    with pytest.raises(ValueError, match=f"^{name} must be an integer, got '2'$"):
        SearchConfig.from_dict(data)


@pytest.mark.parametrize("name", NUMBERS)
def test_each_number_field_refuses_a_string_and_takes_an_integer(name):
    with pytest.raises(ValueError, match=f"^{name} must be a number, got '1.0'$"):
        SearchConfig.from_dict({**base(), name: "1.0"})
    assert getattr(SearchConfig.from_dict({**base(), name: 2}), name) == 2


def test_freeze_after_may_be_null_only_where_it_is_optional():
    data = preset("f-dht", 6, 12).to_dict()
    assert data["freeze_after"] is None and SearchConfig.from_dict(data).freeze_after is None
    with pytest.raises(ValueError, match="^b must be an integer, got None$"):
        SearchConfig.from_dict({**data, "b": None})


def test_a_round_trip_through_a_dict_gives_the_same_search():
    for name in ("t-dht", "s-dht", "f-dht", "p-dht"):
        search = preset(name, 6, 12)
        assert SearchConfig.from_dict(search.to_dict()) == search


def test_an_unknown_setting_is_named():
    with pytest.raises(ValueError, match="^unknown search settings: colour, size$"):
        SearchConfig.from_dict({**base(), "size": 1, "colour": 2})


@pytest.mark.parametrize("arm, expected", [
    ([4, 8], Arm(4, 8)),
    ([4, None], Arm(4, None)),
    ([4, 8, 2], Arm(4, 8, top=2)),
    ({"depth": 6, "heads": 10}, Arm(6, 10)),
    ({"depth": 6, "heads": 10, "top": 2}, Arm(6, 10, top=2)),
])
def test_an_arm_is_an_object_or_a_list_of_depth_heads_and_top(arm, expected):
    assert arm_from_json(arm, "arms[0]") == expected


@pytest.mark.parametrize("arm, message", [
    ({"depth": 4, "heads": 8, "top": "2"}, r"^arms\[3\]: depth, heads and top must be integers"),
    ({"depth": 4, "heads": "8"}, r"^arms\[3\]: depth, heads and top must be integers"),
    ({"depth": 4, "heads": True}, r"^arms\[3\]: depth, heads and top must be integers"),
    ({"depth": 4}, r"^arms\[3\]: an arm has depth, heads .*, got \{'depth': 4\}$"),
    ({"depth": 4, "heads": 8, "colour": 1, "size": 2}, r"^arms\[3\]: .*; unknown colour, size$"),
    ([4], r"^arms\[3\]: an arm has depth, heads"),
    ("4L8H", r"^arms\[3\]: an arm is an object"),
])
def test_a_bad_arm_is_named_by_its_place(arm, message):
    with pytest.raises(ValueError, match=message):
        arm_from_json(arm, "arms[3]")


def shape(**changes) -> SearchConfig:
    fields = dict(mode="integrated", num_layers=6, num_heads=12, b=2, c=2, head_options=(8, 12), arms=(Arm(2, 12),))
    return SearchConfig(**{**fields, **changes})


@pytest.mark.parametrize("changes", [
    {"b": 6, "c": 1, "arms": (Arm(6, 12),)},  # b = N_L: every layer is context
    {"b": 1, "c": 5, "arms": (Arm(1, 12), Arm(6, 12))},  # N_L - b = 5 is a multiple of c = 5
    {"head_options": (1, 12)},  # one head is a head option
    {"explore": 0.0},  # greedy LinUCB
    {"q": 1, "feature_samples": 1},
])
def test_each_bound_accepts_its_edge(changes):
    search = shape(**changes)
    assert all(getattr(search, k) == v for k, v in changes.items())


@pytest.mark.parametrize("changes, message", [
    ({"b": 7, "c": 1}, "b <= N_L"),
    ({"c": 0}, "c >= 1"),
    ({"b": 1, "c": 4, "arms": (Arm(1, 12),)}, "not a multiple of c"),
    ({"head_options": (0, 12)}, "must lie in 1..12"),
    ({"explore": -0.1}, "explore must be >= 0"),
    ({"q": 0}, "q >= 1"),
    ({"feature_samples": 0}, "feature_samples >= 1"),
])
def test_each_bound_refuses_the_value_past_it(changes, message):
    with pytest.raises(ValueError, match=message):
        shape(**changes)


def test_dht_options_accept_their_edges_and_refuse_past_them():
    edges = DHTOptions(full_depth_floor=1.0, train_budget=1.0, continue_above=1.0, self_distill=1e30)
    assert (edges.full_depth_floor, edges.train_budget) == (1.0, 1.0)
    for field, value in (("full_depth_floor", 1.5), ("train_budget", 1.5), ("self_distill", float("inf")),
                         ("self_distill", -1.0), ("continue_above", 1.01), ("full_depth_floor", -0.1)):
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must"):
            DHTOptions(**{field: value})


def test_a_queue_of_one_is_allowed():
    queues = DepthQueues(1)
    assert queues.push(2, "a") == ["a"]


def test_every_bandit_takes_the_searchs_exploration_and_ridge():
    search = preset("t-dht", 6, 12)
    search = SearchConfig.from_dict({**search.to_dict(), "explore": 0.7, "lam": 3.0})
    ucb_h = search_strategy(search).ucb_h
    assert (ucb_h.config.alpha, ucb_h.config.lam) == (0.7, 3.0)


def test_a_missing_config_file_is_named_with_the_flag_that_gave_it(tmp_path):
    from dht.search.arms import load_search, read_search_file
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ValueError, match=r"^config '.*nope.json': not one of t-dht"):
        read_search_file(missing)
    with pytest.raises(ValueError, match=r"^unknown DHT config 'x-dht'"):
        load_search("x-dht", 6, 12)
    with pytest.raises(ValueError, match=r"^--config '.*nope.json'"):
        DHTOptions(config=missing).check_training_inputs()


@pytest.mark.parametrize("arm, fits", [
    (Arm(1, 12), False),  # shallower than b = 2 (c = 1, so only b refuses it)
    (Arm(5, 12), True), (Arm(8, 1), True),  # b + c, and a single head
    (Arm(9, 12), False), (Arm(4, 12), False), (Arm(5, 13), False),
])
def test_an_arm_must_fit_b_c_and_the_heads(arm, fits):
    search = shape(num_layers=8, b=2, c=3, arms=(Arm(2, 12),))
    if fits:
        search.check_arm(arm)
    else:
        with pytest.raises(ValueError):
            search.check_arm(arm)
    if arm == Arm(1, 12):
        with pytest.raises(ValueError, match="arm depth 1"):
            shape(c=1, arms=(arm,))


@pytest.mark.parametrize("arm, fits", [
    (Arm(6, 8, top=2), True), (Arm(2, 12, top=2), True),
    (Arm(1, 8, top=2), False),  # fewer layers than its own top part
    (Arm(4, 8, top=1), False),  # another top than the search's
    (Arm(8, 8, top=2), False),  # deeper than the model
])
def test_a_p_dht_arm_must_fit_the_top_part(arm, fits):
    search = preset("p-dht", 6, 12)
    if fits:
        search.check_arm(arm)
    else:
        with pytest.raises(ValueError, match="does not fit P-DHT"):
            search.check_arm(arm)


def test_thompson_sampling_uses_the_generator_it_is_given():
    import torch

    from dht.bandits import LogisticTS, LogisticTSConfig
    generator = torch.Generator().manual_seed(3)
    assert LogisticTS(LogisticTSConfig(2, 2), generator=generator).generator is generator


@pytest.mark.parametrize("changes, message", [
    ({"arms": (Arm(2, None),)}, r"in integrated search heads must be an integer"),
    ({"mode": "tree", "arms": (Arm(2, 12),)}, r"in tree search heads must be null"),
    ({"alpha": 10 ** 400}, r"^alpha must be finite, got 1000000"),
    ({"top": -1}, r"top must be >= 0"),
])
def test_who_chooses_the_heads_and_the_numbers_range_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        shape(**changes)


def test_p_dht_switches_after_at_least_one_epoch():
    data = base()
    with pytest.raises(ValueError, match=r"freeze_after >= 1"):
        SearchConfig.from_dict({**data, "freeze_after": 0})
