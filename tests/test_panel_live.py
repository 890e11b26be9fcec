"""The panel while a tracked cell runs: the row and the inspector follow the journal live."""

import time

from dbxml_magics.panel import live_panel
from dbxml_magics.panel.live import INTERVAL
from dbxml_magics.session import get_session
from test_panel import shown_panel, wait_for

# Cell code: log one point, then wait (bounded) until the panel shows it, from the kernel's thread.
WAIT_FOR_ROW = """
import time, mlflow
from dbxml_magics.panel import live_panel
from dbxml_magics.session import get_session
panel = live_panel(get_session())
run_id = mlflow.active_run().info.run_id
row = panel.runs.rows[run_id]
def shown(predicate, what):
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
"""


def test_running_row_shows_the_latest_metrics_and_step_before_the_cell_ends(ext, shell):
    shown_panel(shell)
    shell.run_cell_magic(
        "track", "live",
        WAIT_FOR_ROW
        + "seen = []\n"
        "for step in range(3):\n"
        "    mlflow.log_metrics({'loss': 1 / (step + 1), 'acc': step / 10}, step=step)\n"
        "    shown(lambda: f'step {step}' in row.metrics.value, f'step {step} in the row')\n"
        "    seen.append(row.metrics.value)\n"
        "from dbxml_magics.panel import panel_text\n"
        "text_inside = panel_text(get_session())\n",
    )
    assert "acc=0.2  loss=0.3333  step 2" in shell.user_ns["text_inside"]  # a terminal's text is live too
    assert shell.user_ns["seen"] == [
        "acc=0  loss=1  step 0", "acc=0.1  loss=0.5  step 1", "acc=0.2  loss=0.3333  step 2"
    ]
    row = shell.user_ns["row"]
    assert "FINISHED" in row.status.value
    assert row.metrics.value == "acc=0.2  loss=0.3333"  # the record's summary once ended
    panel = live_panel(ext)
    wait_for(lambda: panel.live._thread is None, what="the live thread ends with the last running run")


# What the issue asks: the row and the inspector redraw at most twice a second.
MOST_OFTEN = 0.5


def test_row_and_inspector_update_at_most_twice_a_second(ext, shell):
    assert INTERVAL >= MOST_OFTEN
    panel = shown_panel(shell)
    changes, tables, plots = [], [], []
    panel.runs.add = _observing(panel.runs.add, changes)
    panel.inspector.metrics.observe(lambda change: tables.append(time.monotonic()), names="value")
    draw = panel.inspector.show_live_plots
    panel.inspector.show_live_plots = lambda record, history: (plots.append(time.monotonic()), draw(record, history))
    shell.run_cell_magic(
        "track", "busy",
        WAIT_FOR_ROW
        + "panel.inspect(run_id).result(timeout=60)\n"
        "step, began = 0, time.monotonic()\n"
        "until = began + 3\n"
        "while time.monotonic() < until:\n"
        "    mlflow.log_metric('loss', 1 / (step + 1), step=step)\n"
        "    step += 1\n"
        "    time.sleep(0.005)\n"
        "ended = time.monotonic()\n",
    )
    assert step_count(shell) > 100
    began, ended = shell.user_ns["began"], shell.user_ns["ended"]
    for what, times in (("row", changes), ("inspector table", tables), ("inspector plots", plots)):
        times = [t for t in times if began <= t <= ended]
        assert len(times) >= 2, (what, times)  # live, not only at the end
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        assert min(gaps) >= MOST_OFTEN * 0.9, (what, gaps)


def _observing(add, changes):
    """Record when the new row's metrics label changes while the run is running."""

    def wrapped(record):
        row = add(record)
        row.metrics.observe(
            lambda change: changes.append(time.monotonic()) if record.status == "RUNNING" else None, names="value"
        )
        return row

    return wrapped


def step_count(shell):
    return shell.user_ns["step"]


def test_inspector_of_a_running_run_redraws_its_plots_in_place(ext, shell):
    shown_panel(shell)
    shell.run_cell_magic(
        "track", "watched",
        WAIT_FOR_ROW
        + "panel.inspect(run_id).result(timeout=60)\n"
        "inspector = panel.inspector\n"
        "for step in range(3):\n"
        "    mlflow.log_metric('loss', 1 / (step + 1), step=step)\n"
        "shown(lambda: len(inspector.plots.children) == 1 and '>3</td>' in inspector.metrics.value, 'a live plot')\n"
        "first_image, first_png = inspector.plots.children[0], inspector.plots.children[0].value\n"
        "title_inside = inspector.title.value\n"
        "mlflow.log_metric('loss', 0.1, step=3)\n"
        "shown(lambda: '>4</td>' in inspector.metrics.value, 'the fourth point')\n"
        "shown(lambda: first_image.value != first_png, 'a redrawn plot')\n"
        "same_image = inspector.plots.children[0] is first_image\n",
    )
    ns = shell.user_ns
    assert "RUNNING" in ns["title_inside"] and "live for" in ns["title_inside"]
    assert ns["same_image"]  # redrawn in place: the frontend swaps a picture, no new widget
    inspector = live_panel(ext).inspector
    # Once ended, the inspector reads the run back from its store.
    wait_for(lambda: "FINISHED" in inspector.title.value, what="the ended run read back")
    assert ext.journal.live_history(ext.runs[0].run_id) == {}


def test_live_updates_never_read_the_store(ext, shell):
    """What the live row shows comes from the journal alone: a store that holds nothing yet
    (writes waiting in the journal) still gives live values."""
    shell.run_line_magic("config", "DbxmlMagics.flush_interval = 3600.0")
    shown_panel(shell)
    shell.run_cell_magic(
        "track", "offline",
        WAIT_FOR_ROW
        + "mlflow.log_metric('loss', 0.25, step=7)\n"
        "shown(lambda: 'step 7' in row.metrics.value, 'step 7 in the row')\n"
        "pending_inside = get_session().journal.pending(run_id)\n",
    )
    assert shell.user_ns["pending_inside"] > 0  # nothing had been shipped when the row showed it
    assert get_session(shell).runs[0].status == "FINISHED"


def test_watching_a_running_run_sends_no_request_to_the_store(ext, shell, mlflow_server):
    """The row and an open inspector follow a running run on a real server through a counting
    proxy: from the inspector's first read to the cell's end, not one request reaches the
    store (the journal holds the writes meanwhile), though the row, the table and the plot
    were redrawn several times."""
    from counting_proxy import CountingProxy

    proxy = CountingProxy(mlflow_server.port)
    try:
        shell.run_line_magic("config", "DbxmlMagics.flush_interval = 3600.0")
        shell.run_line_magic("aml_link", f"--uri {proxy.uri}")
        shown_panel(shell)
        shell.user_ns["proxy"] = proxy
        shell.run_cell_magic(
            "track", "watched-remote",
            WAIT_FOR_ROW
            + "panel.inspect(run_id).result(timeout=60)\n"
            "inspector = panel.inspector\n"
            "before, ticks = len(proxy.seen), panel.live.ticks\n"
            "for step in range(12):\n"
            "    mlflow.log_metric('loss', 1 / (step + 1), step=step)\n"
            "    time.sleep(0.1)\n"
            "shown(lambda: 'step 11' in row.metrics.value and '>12</td>' in inspector.metrics.value, 'the last point')\n"
            "shown(lambda: len(inspector.plots.children) == 1, 'a live plot')\n"
            "redraws = panel.live.ticks - ticks\n"
            "during = proxy.seen[before:]\n",
        )
        ns = shell.user_ns
        assert ns["redraws"] >= 2, ns["redraws"]
        assert ns["during"] == []
        assert ext.journal.flush(timeout=60)  # ...and all of it reaches the store afterwards
        assert len(mlflow_server.client().get_metric_history(ext.last_run.run_id, "loss")) == 12
    finally:
        proxy.stop()


def test_live_row_follows_the_key_metrics_settings(ext, shell):
    """The live row shows the configured key metrics first (at most panel_max_metrics), each at its
    latest value, and the newest step of any metric."""
    from dbxml_magics.panel.text import live_text

    history = {"loss": [(0, 1.0), (3, 0.5)], "acc": [(0, 0.1), (2, 0.3)], "lr": [(0, 0.01)]}
    assert live_text(history, ext.settings) == "acc=0.3  loss=0.5  lr=0.01  step 3"
    shell.run_line_magic("config", "DbxmlMagics.key_metrics = ['lr', 'acc']")
    shell.run_line_magic("config", "DbxmlMagics.panel_max_metrics = 2")
    assert live_text(history, ext.settings) == "lr=0.01  acc=0.3  step 3"
