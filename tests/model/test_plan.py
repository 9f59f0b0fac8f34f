import pytest

from dht.model import ExecutionPlan


def test_constructors_and_labels():
    assert ExecutionPlan.full(3, 2) == ExecutionPlan((0, 1, 2), ((0, 1),) * 3)
    assert ExecutionPlan.first(2, 4, (3, 1)).heads == ((1, 3), (1, 3))
    assert ExecutionPlan.skip_middle(2, 2, 6, 4, (0,)).describe() == "2L1H+2L4H"
    grouped = ExecutionPlan.from_groups(range(4), [(0, 1, 2), (1,)], group_size=2)
    assert grouped.heads == ((0, 1, 2), (0, 1, 2), (1,), (1,))


def test_split_into_probe_and_rest():
    probe, rest = ExecutionPlan.first(4, 2).split(2)
    assert probe.layers == (0, 1) and rest.layers == (2, 3)
    assert ExecutionPlan.first(2, 2).split(2)[1] is None


def test_plans_are_hashable_and_compare_by_value():
    assert len({ExecutionPlan.first(2, 4), ExecutionPlan.first(2, 4), ExecutionPlan.first(2, 4, (0,))}) == 2


@pytest.mark.parametrize("layers, heads, message", [
    ((), (), "at least one layer"),
    ((0, 1), ((0,),), "2 layers but 1"),
    ((1, 0), ((0,), (0,)), "ascending"),
    ((0,), ((),), "keeps no head"),
    ((0,), ((1, 1),), "ascending"),
])
def test_invalid_plans(layers, heads, message):
    with pytest.raises(ValueError, match=message):
        ExecutionPlan(layers, heads)


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError):
        ExecutionPlan.skip_middle(3, 2, 4, 4)
    with pytest.raises(ValueError, match="groups"):
        ExecutionPlan.from_groups(range(3), [(0,)], group_size=2)
