"""Comparing runs: ticked rows -> the compare view; `%aml_panel --compare` as text."""

import re

import pytest
from IPython.core.error import UsageError

from dbxml_magics.panel.compare import MAX_RUNS, compare, metric_goal, overlay_lines
from dbxml_magics.panel.compat import titles_of
from dbxml_magics.inspect_run import RunDetails
from test_panel import shown_panel

TWO_RUNS = [
    ("first --params lr epochs --metrics loss accuracy", "lr, epochs = 0.1, 5\nloss = [0.9, 0.5, 0.4]\naccuracy = 0.80"),
    ("second --params lr epochs --metrics loss accuracy", "lr, epochs = 0.01, 5\nloss = [0.8, 0.3, 0.2]\naccuracy = 0.75"),
]


def _track_two(shell):
    for line, cell in TWO_RUNS:
        shell.run_cell_magic("track", line, cell)


def test_ticking_runs_compares_them_params_overlaid_histories_best_run(ext, shell):
    panel = shown_panel(shell)
    _track_two(shell)
    first, second = ext.runs
    table = panel.runs
    assert table.compare.disabled
    table.rows[first.run_id].check.value = True
    assert table.compare.disabled  # one run is nothing to compare
    table.rows[second.run_id].check.value = True
    assert not table.compare.disabled and table.compare.description == "Compare selected (2)"
    table.compare.click()
    comparison = panel.comparison.pending.result(timeout=120)

    view = panel.comparison
    assert view.widget.layout.display is None
    assert [run.run_id for run in comparison.runs] == [first.run_id, second.run_id]
    assert comparison.differing == [("lr", ["0.1", "0.01"])]
    assert comparison.equal == [("epochs", "5")]
    assert "lr" in view.differing.value and "epochs" not in view.differing.value
    assert view.folded.selected_index is None and "epochs" in view.equal.value  # equal params folded
    assert titles_of(view.folded) == ("Params equal in all runs (1)",)
    # one overlaid plot per metric; loss is lower-better, accuracy higher-better by its name
    assert len(view.plots.children) == 2 and all(p.value[:4] == b"\x89PNG" for p in view.plots.children)
    assert comparison.goals == {"accuracy": "max", "loss": "min"}
    assert comparison.best == {"accuracy": 0, "loss": 1}
    assert "0.2 *" in view.metrics.value and "0.8 *" in view.metrics.value
    # each plot overlays every run's whole history, the best one marked
    assert overlay_lines("loss", comparison) == [
        ("first", [(0, 0.9), (1, 0.5), (2, 0.4)], False), ("second", [(0, 0.8), (1, 0.3), (2, 0.2)], True),
    ]
    assert overlay_lines("accuracy", comparison) == [("first", [(0, 0.8)], True), ("second", [(0, 0.75)], False)]

    # Unticking one leaves one run: nothing to compare.
    table.rows[first.run_id].check.value = False
    assert table.compare.disabled and table.checked == [second.run_id]


def test_more_than_ten_ticked_runs_cannot_be_compared(ext, shell):
    panel = shown_panel(shell)
    for index in range(MAX_RUNS + 1):
        shell.run_cell_magic("track", f"r{index} --metrics m", f"m = {index}")
    table = panel.runs
    for count, record in enumerate(ext.runs, start=1):
        table.rows[record.run_id].check.value = True
        assert table.compare.disabled == (count < 2 or count > MAX_RUNS), count
    assert table.compare.description == "Compare selected (11)"
    names = " ".join(record.name for record in ext.runs)
    with pytest.raises(UsageError, match="Compare takes 2 to 10 different runs; got 11"):
        shell.run_line_magic("aml_panel", f"--compare {names}")


def test_metric_goals_setting_decides_the_best_run(ext, shell, capsys):
    _track_two(shell)
    shell.run_line_magic("config", "DbxmlMagics.metric_goals = {'accuracy': 'min'}")
    capsys.readouterr()
    shell.run_line_magic("aml_panel", "--compare first second")
    text = capsys.readouterr().out  # a terminal shell displays the comparison's text
    first, second = ext.runs
    assert text.startswith(f"Comparing 2 runs: first (FINISHED, {first.run_id}), second (FINISHED, {second.run_id})")
    assert re.search(r"accuracy\s+min\s+0.8\s+0.75 \*", text)
    assert re.search(r"loss\s+min\s+0.4\s+0.2 \*", text)
    assert re.search(r"lr\s+0.1\s+0.01", text)
    assert "Params equal in all runs: epochs=5" in text


@pytest.mark.parametrize(
    "line, message",
    [
        ("--compare first", "Compare takes 2 to 10 different runs; got 1"),
        ("--compare first first", "Compare takes 2 to 10 different runs; got 1"),
        ("--compare first nosuchrun", "No run named 'nosuchrun'"),
    ],
)
def test_compare_bad_runs_are_one_line(ext, shell, line, message):
    shell.run_cell_magic("track", "first", "x = 1")
    with pytest.raises(UsageError, match=message):
        shell.run_line_magic("aml_panel", line)


def test_metric_goal_configured_else_guessed_from_the_name():
    assert metric_goal("val_loss", {}) == "min"
    assert metric_goal("rmse", {}) == "min"
    assert metric_goal("train_time_s", {}) == "min"
    assert metric_goal("auc", {}) == "max"
    assert metric_goal("loss", {"loss": "max"}) == "max"


def test_compare_marks_names_that_repeat_and_skips_missing_values():
    runs = [
        RunDetails(run_id="a" * 32, name="same", status="FINISHED", experiment_id="0", store="s", metrics={"f1": 0.5}),
        RunDetails(run_id="b" * 32, name="same", status="FINISHED", experiment_id="0", store="s",
                   metrics={"f1": 0.7, "loss": 1.0}, params={"k": "1"}),
    ]
    comparison = compare(runs, {})
    assert comparison.labels == ["same (aaaaaaaa)", "same (bbbbbbbb)"]
    assert comparison.best == {"f1": 1, "loss": 1}
    assert comparison.differing == [("k", ["", "1"])]
