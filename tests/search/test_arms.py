"""The arm-list rules give the paper's four configurations for 12 layers, and sensible ones for 6."""

import json
from pathlib import Path

import pytest

from dht.search.arms import Arm, SearchConfig, load_search, preset


def labels(arms, num_heads=12):
    return [arm.label(num_heads) for arm in arms]


def test_t_dht_matches_the_paper():
    search = preset("t-dht", 12, 12)
    assert (search.b, search.c, search.mode) == (3, 3, "tree")
    assert [arm.depth for arm in search.arms] == [3, 6, 9, 12]
    assert search.head_options == (8, 10, 12)


def test_s_dht_matches_the_paper():
    assert labels(preset("s-dht", 12, 12).arms) == ["3L12H", "6L12H", "9L12H", "12L8H", "12L10H", "12L12H"]


def test_f_dht_matches_the_paper():
    assert labels(preset("f-dht", 12, 12).arms) == [
        "3L12H", "6L8H", "6L10H", "6L12H", "9L8H", "9L10H", "9L12H", "12L8H", "12L10H", "12L12H"]


def test_p_dht_follows_the_rule_where_the_paper_breaks_it():
    search = preset("p-dht", 12, 12)
    assert search.arms == preset("f-dht", 12, 12).arms and search.freeze_after == 2 and search.top == 2
    # The paper lists 7L6H and 7L9H; the rule (and the spec) gives 7L8H and 7L10H.
    assert labels(search.phase_two_arms) == [
        "1L8H+2L12H", "1L10H+2L12H", "1L12H+2L12H", "4L8H+2L12H", "4L10H+2L12H", "4L12H+2L12H",
        "7L8H+2L12H", "7L10H+2L12H", "7L12H+2L12H", "10L8H+2L12H", "10L10H+2L12H", "10L12H+2L12H"]


def test_minilm_shapes():
    assert labels(preset("s-dht", 6, 12).arms) == ["2L12H", "4L12H", "6L8H", "6L10H", "6L12H"]
    assert labels(preset("f-dht", 6, 12).arms) == ["2L12H", "4L8H", "4L10H", "4L12H", "6L8H", "6L10H", "6L12H"]
    assert labels(preset("p-dht", 6, 12).phase_two_arms) == [
        "2L12H", "2L8H+2L12H", "2L10H+2L12H", "2L12H+2L12H", "4L8H+2L12H", "4L10H+2L12H", "4L12H+2L12H"]
    assert [a.depth for a in preset("t-dht", 6, 12).arms] == [2, 4, 6]


def test_fine_search_is_f_dht_with_an_arm_ending_after_every_layer():
    search = preset("f-dht-fine", 6, 12)
    assert (search.b, search.c, search.mode) == (1, 1, "integrated")
    assert labels(search.arms) == ["1L12H"] + [f"{L}L{H}H" for L in range(2, 7) for H in (8, 10, 12)]
    assert search.head_options == preset("f-dht", 6, 12).head_options
    assert labels(preset("f-dht-fine", 12, 12).arms)[:4] == ["1L12H", "2L8H", "2L10H", "2L12H"]


def test_user_config_file(tmp_path):
    path = tmp_path / "search.json"
    data = {"mode": "integrated", "num_layers": 6, "num_heads": 12, "b": 2, "c": 2, "head_options": [6, 12],
            "arms": [{"depth": 2, "heads": 12}, {"depth": 6, "heads": 6}], "alpha": 0.5, "r_max": 5}
    path.write_text(json.dumps(data))
    search = load_search(str(path), 6, 12)
    assert search.arms == (Arm(2, 12), Arm(6, 6)) and search.r_max == 5
    with pytest.raises(ValueError, match="written for 6 layers"):
        load_search(str(path), 12, 12)


@pytest.mark.parametrize("changes, message", [
    ({"b": 0}, "b <= N_L"),
    ({"c": 3}, "multiple of c"),
    ({"head_options": (13,)}, "head options"),
    ({"arms": (Arm(3, 12),)}, "arm depth 3"),
    ({"arms": ()}, "at least one arm"),
    ({"r_max": 0}, "r_max"),
])
def test_invalid_search_configs(changes, message):
    base = dict(mode="integrated", num_layers=6, num_heads=12, b=2, c=2, head_options=(8, 12), arms=(Arm(2, 12),))
    with pytest.raises(ValueError, match=message):
        SearchConfig(**{**base, **changes})


def test_unknown_preset_or_file():
    with pytest.raises(ValueError, match="unknown DHT config"):
        load_search("x-dht", 6, 12)


def test_depth_only_example_config_loads_for_minilm():
    """bench/configs/depth-only-minilm.json, used by a README command, stays valid for the 6-layer backbone."""
    path = Path(__file__).resolve().parents[2] / "bench" / "configs" / "depth-only-minilm.json"
    search = load_search(str(path), 6, 12)
    assert [arm.label(12) for arm in search.arms] == ["2L12H", "4L12H", "6L12H"] and search.head_options == (12,)


@pytest.mark.parametrize("change, message", [
    ({"arms": [{"depth": 2, "heads": 4, "colour": 1}]}, r"arms\[0\]: .*unknown colour"),
    ({"arms": [{"depth": 2}]}, r"arms\[0\]: an arm has depth, heads"),
    ({"arms": [{"depth": "2", "heads": 4}]}, r"arms\[0\]: depth, heads and top must be integers"),
    ({"num_layers": "6"}, "num_layers must be an integer"),
    ({"head_options": 8}, "head_options must be a list of integers"),
    ({"explore": float("inf")}, "explore must be finite"),
    ({"alpha": "big"}, "alpha must be a number"),
    ({"mode": None, "__drop__": "mode"}, "missing search settings: mode"),
])
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_field(tmp_path, change, message):
    data = preset("s-dht", 6, 12).to_dict()
    data = {**data, **{k: v for k, v in change.items() if k != "__drop__"}}
    data.pop(change.get("__drop__", "__none__"), None)
    path = tmp_path / "search.json"
    path.write_text(json.dumps(data))  # json writes inf as Infinity, which json reads back
    with pytest.raises(ValueError, match=message) as error:
        load_search(str(path), 6, 12)
    assert str(error.value).startswith(str(path))


def test_a_config_file_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "search.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="a search config is a JSON object"):
        load_search(str(path), 6, 12)


def test_the_committed_fine_search_file_is_the_preset():
    """The issue-23 runs trained with bench/configs/f-dht-fine-minilm.json; `--config f-dht-fine` is the same search."""
    path = Path(__file__).parents[2] / "bench" / "configs" / "f-dht-fine-minilm.json"
    assert load_search(str(path), 6, 12) == preset("f-dht-fine", 6, 12)
