"""A sweep in the panel: one expandable row (children under it, never top-level), its best
child and metric on the row, a Compare button opening the compare view on its children."""

from dbxml_magics.panel import close_panel, live_panel, panel_text
from dbxml_magics.session import get_session
from test_panel import row_names, shown_panel
from test_sweep import CELL  # the sweep's cell: one combination (alpha=1, max_iter=300) fails

SWEEP = "tune --sweep alpha=0.01,1 max_iter=100,300 --metrics r2 --metric r2 --goal max"


def _sweep(shell):
    shell.run_cell_magic("track", "before --metrics r2", "r2 = 0.5")
    shell.run_cell_magic("track", SWEEP, CELL)
    shell.run_cell_magic("track", "after --metrics r2", "r2 = 0.6")


def _check_sweep_row(panel, ext):
    parent = next(r for r in ext.runs if r.name == "tune")
    children = [r for r in ext.runs if r.parent_run_id == parent.run_id]
    assert len(children) == 4
    assert row_names(panel) == ["after", "tune", "before"]  # the children are no top-level rows
    row = panel.runs.rows[parent.run_id]
    best = f"{1 - 0.01 / 300:.4g}"
    assert row.metrics.value == f"4 runs (1 failed)  best r2={best} [alpha=0.01,max_iter=300]"
    assert row.toggle.description == "\u25b8 4 runs" and row.kids_box.layout.display == "none"
    assert [r.name.description for r in row.kids.values()] == [c.name for c in children]  # in run order
    assert "FAILED" in row.kids[children[3].run_id].status.value
    assert panel.runs.count.value == "7 runs"
    return parent, children, row


def test_sweep_is_one_expandable_row_with_its_best_child_and_compare(ext, shell):
    panel = shown_panel(shell)
    _sweep(shell)
    parent, children, row = _check_sweep_row(panel, ext)

    row.toggle.click()
    assert row.kids_box.layout.display is None and row.toggle.description == "\u25be 4 runs"
    assert [child.widget for child in row.kids.values()] == list(row.kids_box.children)
    row.toggle.click()
    assert row.kids_box.layout.display == "none"

    # A child is still inspected and ticked like any run.
    row.kids[children[0].run_id].name.click()
    assert panel.inspector.pending.result(timeout=120).run_id == children[0].run_id

    assert not row.compare.disabled
    row.compare.click()
    comparison = panel.comparison.pending.result(timeout=120)
    # Best first by the sweep's metric; the failed combination (no r2) last.
    assert [run.run_id for run in comparison.runs] == [children[i].run_id for i in (1, 0, 2, 3)]
    assert comparison.best["r2"] == 0
    assert [key for key, _ in comparison.differing] == ["alpha", "max_iter"]
    assert "Comparing 4 runs" in panel.comparison.title.value
    assert panel.comparison.widget.layout.display is None

    # The text form: the parent's summary, its children indented under it.
    lines = panel_text(ext).splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[0] == "tune")
    assert "4 runs (1 failed)  best r2=" in lines[at]
    assert [line.split()[0] for line in lines[at + 1 : at + 5]] == [c.name for c in children]
    assert lines[at + 1].startswith("    tune[")  # indented under the parent


def test_a_panel_opened_after_the_sweep_groups_it_too(ext, shell):
    _sweep(shell)
    close_panel(ext)
    panel = shown_panel(shell)
    _check_sweep_row(panel, ext)


def test_without_a_sweep_metric_the_first_key_metric_picks_the_best_child(ext, shell):
    shell.run_line_magic("config", "DbxmlMagics.key_metrics = ['loss']")
    panel = shown_panel(shell)
    shell.run_cell_magic("track", "grid --sweep alpha=3,1,2", "import mlflow\nmlflow.log_metric('loss', alpha)")
    parent = ext.runs[0]
    row = panel.runs.rows[parent.run_id]
    assert row.metrics.value == "3 runs  best loss=1 [alpha=1]"  # loss: lower is better
    row.compare.click()
    comparison = panel.comparison.pending.result(timeout=120)
    assert [run.params["alpha"] for run in comparison.runs] == ["1", "2", "3"]
    assert live_panel(get_session(shell)) is panel
