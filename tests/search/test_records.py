"""What the bandits chose (dht/search/records.py), against hand-counted decision records."""

from __future__ import annotations

import json

import pytest

from dht.search.records import (
    draw_shares,
    head_count,
    kept_shares,
    plot_heads,
    plot_selection,
    read_decisions,
    selection_summary,
    shares,
    windows,
    write_selection_report,
)


def record(epoch, step, depth, heads, arm=None):
    return {"epoch": epoch, "step": step, "depth": depth, "heads": heads, "arm": arm or f"{depth}L"}


def test_head_count_averages_the_groups_and_rounds():
    assert head_count(record(0, 0, 6, [[0, 1, 2], [0, 1, 2, 3, 4]]), 12) == 4  # (3 + 5) / 2
    assert head_count(record(0, 0, 6, [[0], [0, 1], [0, 1]]), 12) == 2  # 5 / 3 = 1.67 → 2
    assert head_count(record(0, 0, 2, []), 12) == 12  # no dynamic group: every head


def test_shares_are_fractions_sorted_by_their_text():
    assert shares([4, 2, 2, 6]) == {"2": 0.5, "4": 0.25, "6": 0.25}
    assert shares(["b", "a", "a"]) == {"a": 0.6667, "b": 0.3333}


def test_the_summary_counts_each_epoch_apart():
    records = [record(0, 0, 2, []), record(0, 1, 4, [[0, 1]]), record(0, 2, 4, [[0, 1]]),
               record(1, 3, 6, [[0, 1, 2], [0, 1, 2]])]
    summary = selection_summary(records, 12)
    assert summary == {"arms": [{"2L": 0.3333, "4L": 0.6667}, {"6L": 1.0}],
                       "depth": [{"2": 0.3333, "4": 0.6667}, {"6": 1.0}],
                       "heads": [{"12": 0.3333, "2": 0.6667}, {"3": 1.0}]}


def test_windows_give_each_values_share_per_window_of_steps():
    # 40 steps, one record each: depth 2 on even steps, 4 on odd ones, but 6 throughout the last ten.
    records = [record(0, s, 6 if s >= 30 else (2 if s % 2 == 0 else 4), []) for s in range(40)]
    xs, series = windows(records, lambda r: r["depth"], max_windows=4, min_steps=10)
    assert xs == [9, 19, 29, 39]
    assert series == {2: [0.5, 0.5, 0.5, 0.0], 4: [0.5, 0.5, 0.5, 0.0], 6: [0.0, 0.0, 0.0, 1.0]}
    xs, series = windows(records, lambda r: r["depth"], max_windows=30, min_steps=20)
    assert xs == [19, 39] and series[6] == [0.0, 0.5]
    xs, series = windows(records[:5], lambda r: r["depth"])  # fewer steps than a window: one window
    assert xs == [4] and series == {2: [0.6], 4: [0.4]}


def test_a_run_of_one_window_is_drawn_as_one_stacked_bar():
    """An area over a single step draws nothing (a short run's selection.png was blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [record(0, s, 2 if s < 3 else 4, []) for s in range(5)]
    figure, ax = plt.subplots()
    draw_shares(ax, *windows(records, lambda r: r["depth"]))
    heights = [(bar.get_y(), bar.get_height()) for bar in ax.patches]
    assert heights == [(0.0, 0.6), (pytest.approx(0.6), pytest.approx(0.4))]  # depth 2 below, depth 4 on top
    figure, ax = plt.subplots()
    draw_shares(ax, *windows(records * 8, lambda r: r["depth"], min_steps=1))
    assert not ax.patches and ax.collections  # several windows: stacked areas
    plt.close("all")


def test_windows_of_several_records_per_step_keep_each_step_whole():
    records = [record(0, s, d, []) for s in range(20) for d in (2, 4, 4)]
    xs, series = windows(records, lambda r: r["depth"], max_windows=2, min_steps=10)
    assert xs == [9, 19] and series == {2: pytest.approx([1 / 3, 1 / 3]), 4: pytest.approx([2 / 3, 2 / 3])}


def test_the_report_reads_decisions_writes_both_plots_and_returns_the_summary(tmp_path):
    records = [record(e, s, d, [[0, 1, 2]] if d > 2 else []) for e in (0, 1) for s in range(12) for d in (2, 4)]
    (tmp_path / "decisions.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert read_decisions(tmp_path / "decisions.jsonl") == records
    block = write_selection_report(tmp_path, 4)
    assert block == {"selection": selection_summary(records, 4)}
    assert block["selection"]["heads"] == [{"3": 0.5, "4": 0.5}] * 2
    for name in ("selection.png", "heads.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_without_decisions_reports_nothing_and_draws_nothing(tmp_path):
    (tmp_path / "decisions.jsonl").write_text("")
    assert write_selection_report(tmp_path, 12) == {}
    assert not (tmp_path / "selection.png").exists()


def test_each_plot_draws_a_picture_on_its_own(tmp_path):
    records = [record(0, s, 4, [[0, 2], [1]]) for s in range(3)]
    plot_selection(records, 4, tmp_path / "s.png")
    plot_heads(records, 4, tmp_path / "h.png")
    plot_heads([record(0, 0, 2, [])], 4, tmp_path / "none.png")  # no group ran: an empty matrix
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("s.png", "h.png", "none.png"))


def test_each_groups_kept_heads_are_shares_of_the_samples_that_ran_it():
    records = [record(0, 0, 6, [[0, 1], [2]]), record(0, 1, 4, [[0, 3]]), record(0, 2, 2, [])]
    groups, matrix = kept_shares(records, 4)
    assert groups == [0, 1]
    assert matrix == [[1.0, 0.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]]  # group 1 ran for one sample only
    assert kept_shares([record(0, 0, 2, [])], 4) == ([], [])


def test_the_plots_draw_the_tested_data(tmp_path, monkeypatch):
    """What reaches matplotlib: the stacked shares per window (depth, then heads) with their labels, and the
    kept-head matrix on a 0-1 scale."""
    import matplotlib.axes
    drawn = []
    stackplot, imshow = matplotlib.axes.Axes.stackplot, matplotlib.axes.Axes.imshow

    def record_stack(ax, xs, *series, **kwargs):
        drawn.append(("stack", ax.get_subplotspec().colspan.start, list(xs), [list(s) for s in series],
                      kwargs.get("labels")))
        return stackplot(ax, xs, *series, **kwargs)

    def record_image(ax, matrix, **kwargs):
        drawn.append(("image", matrix, kwargs.get("vmin"), kwargs.get("vmax")))
        return imshow(ax, matrix, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "stackplot", record_stack)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", record_image)
    records = [record(0, s, 2 if s % 2 else 4, [] if s % 2 else [[0, 1, 2]]) for s in range(30)]
    plot_selection(records, 4, tmp_path / "s.png")
    depth_x, depth = windows(records, lambda r: r["depth"])
    heads_x, heads = windows(records, lambda r: head_count(r, 4))
    assert drawn == [("stack", 0, depth_x, list(depth.values()), ["2", "4"]),  # depth left, heads right
                     ("stack", 1, heads_x, list(heads.values()), ["3", "4"])]
    drawn.clear()
    plot_heads(records, 4, tmp_path / "h.png")
    assert drawn == [("image", [[1.0, 1.0, 1.0, 0.0]], 0, 1)]
    drawn.clear()
    plot_heads([record(0, 0, 2, [])], 4, tmp_path / "none.png")
    assert drawn == [("image", [[0.0, 0.0, 0.0, 0.0]], 0, 1)]
