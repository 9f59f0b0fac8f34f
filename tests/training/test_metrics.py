import pytest
import torch

from dht.training.metrics import MetricsWarning, accuracy, confusion, f1_macro, route_scores


def test_f1_macro_by_hand():
    predictions, labels = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])
    # class 0: TP 1, FP 1 -> 2/3; class 1: TP 1, FN 1 -> 2/3; class 2: 1
    assert f1_macro(predictions, labels, 3) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert accuracy(predictions, labels) == 0.75


def test_a_class_absent_from_the_test_split_is_left_out_of_macro_f1_with_a_warning():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])  # 4 classes, class 3 neither in the labels nor predicted
    with pytest.warns(MetricsWarning, match=r"classes \[3\] occur neither"):
        assert f1_macro(labels.clone(), labels, 4) == 1.0  # a perfect classifier, not 0.75
    predicted = torch.tensor([0, 1, 2, 0, 1, 3])  # class 3 predicted once: it counts, with F1 0
    assert f1_macro(predicted, labels, 4) == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert confusion(predicted, labels, 4) == [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]


def test_route_scores_share_and_accuracy_per_path_shallowest_first():
    routes = ["4L12H", "2L12H", "2L12H", "4L8H+2L12H", "2L12H"]
    predictions, labels = torch.tensor([1, 0, 0, 2, 3]), torch.tensor([1, 0, 1, 2, 3])
    scores = route_scores(routes, predictions, labels)
    assert list(scores) == ["2L12H", "4L8H+2L12H", "4L12H"]
    assert scores["2L12H"] == {"share": 0.6, "accuracy": round(2 / 3, 4)}
    assert scores["4L12H"] == {"share": 0.2, "accuracy": 1.0}
