"""The journal against plain MLflow, ratios measured in this one run against a real `mlflow server`.

1. A %%track cell with 300 `mlflow.log_metric` calls, from the start of the cell to its end
   (run creation, params, tags and the source artifact included), vs the same loop with plain
   synchronous MLflow against the same server: goal >= 30x; with 20 ms added per request
   (a delaying proxy on loopback) goal >= 50x.
2. An empty %%track cell vs a hand-written `with mlflow.start_run(): pass`: goal <= 1.0.
3. 10 interleaved child runs of 500 points each: log-batch requests that reach the server
   (counted by a proxy): goal <= 30.
4. The cost of one `mlflow.log_metric` inside a tracked cell (embedded store): goal <= 50 us.
   Next to it: `MlflowClient.log_metric` in the same cell (MLflow's client path, no fast path),
   the journal's own write alone (validation + one outbox row), MLflow's fluent path into a
   store that drops the point (MLflow's floor), plain MLflow on SQLite per point, `log_batch`
   per point, and a raw SQLite WAL insert (the price of "on disk when the call returns").

    .venv/bin/python benchmarks/bench_journal.py [--points 300] [--repeat 3]
"""

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from counting_proxy import CountingProxy  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402
from servers import MlflowServer  # noqa: E402


def plain_sync(uri, points):
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        for i in range(points):
            mlflow.log_metric("loss", 1.0 / (i + 1), step=i)


def plain_empty(uri, _points):
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        pass


def tracked_cell(shell, points):
    shell.run_cell_magic(
        "track", "bench --params lr --tags kind=bench",
        f"import mlflow\nlr = 0.1\nfor i in range({points}):\n    mlflow.log_metric('loss', 1.0 / (i + 1), step=i)",
    )


def tracked_empty(shell, _points):
    shell.run_cell_magic("track", "", "pass")


def measure(fn, repeat, *args):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_requests(shell, server) -> int:
    """10 child runs logging in turn, 500 points each: log-batch requests at the server."""
    proxy = CountingProxy(server.port)
    try:
        shell.run_line_magic("aml_link", f"--uri {proxy.uri}")
        shell.run_cell_magic(
            "track", "interleaved",
            "import mlflow\nclient = mlflow.MlflowClient()\n"
            "parent = mlflow.active_run().info\n"
            "children = [client.create_run(parent.experiment_id, tags={'mlflow.parentRunId': parent.run_id}).info.run_id"
            " for _ in range(10)]\n"
            "for i in range(500):\n    for c in children:\n        client.log_metric(c, 'x', i, step=i)\n"
            "for c in children:\n    client.set_terminated(c)\n",
        )
        from dbxml_magics.session import get_session

        get_session(shell).journal.flush(timeout=120)
        return proxy.requests["runs/log-batch"]
    finally:
        proxy.stop()


def _tracked_loop(shell, setup: str, call: str, points: int) -> float:
    """Microseconds per `call` in a loop of `points` inside a tracked cell, after `setup`; the
    previous loop's rows are shipped first, so each loop competes only with its own shipping."""
    from dbxml_magics.session import get_session

    get_session(shell).journal.flush(timeout=300)
    shell.user_ns["_bench_n"] = points
    shell.run_cell_magic(
        "track", "per-point",
        f"import mlflow, time\n{setup}\n_t = time.perf_counter()\nfor i in range(_bench_n):\n"
        f"    {call}\n_bench_elapsed = time.perf_counter() - _t",
    )
    return shell.user_ns["_bench_elapsed"] / points * 1e6


def _noop_metric_store(work: Path):
    """An embedded store that drops metric points: MLflow's fluent path with no store cost."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    class NoMetrics(SqlAlchemyStore):
        def log_metric(self, run_id, metric):
            pass

    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    db = f"sqlite:///{work / 'floor.db'}"
    _tracking_store_registry.register("benchfloor", lambda store_uri=None, artifact_uri=None: NoMetrics(db, str(work / "floor")))
    return "benchfloor://floor"


def per_point_costs(shell, work: Path, points: int) -> dict:
    """Microseconds per point: inside a tracked cell on the embedded store (MLflow's fluent
    call, MLflow's client call, the journal's own write alone), MLflow's fluent path with a
    store that does nothing (MLflow's floor), plain MLflow on SQLite, MLflow log_batch on
    SQLite, and a raw SQLite WAL insert."""
    import mlflow
    from mlflow.entities import Metric

    shell.run_line_magic("aml_link", "--local")
    shell.run_cell_magic("track", "", "pass")  # warm-up
    run_id = "_r = mlflow.active_run().info.run_id"
    costs = {
        "tracked mlflow.log_metric": _tracked_loop(shell, "", "mlflow.log_metric('x', i, step=i)", points),
        "tracked MlflowClient.log_metric": _tracked_loop(
            shell, f"_c = mlflow.MlflowClient()\n{run_id}", "_c.log_metric(_r, 'x', i, step=i)", points
        ),
        # What the journal adds: MLflow's validation and one outbox row, no MLflow call around it.
        "journal write alone": _tracked_loop(
            shell,
            "from dbxml_magics.session import get_session\nfrom dbxml_magics.journal.intercept import validate_metric\n"
            f"_j = get_session(get_ipython()).journal\n{run_id}",
            "_ts = int(time.time() * 1000); validate_metric('x', float(i), _ts, i); _j.log_metric(_r, 'x', float(i), _ts, i)",
            points,
        ),
    }
    shell.run_line_magic("aml_unlink", "")
    shell.run_line_magic("unload_ext", "dbxml_magics")
    mlflow.set_tracking_uri(_noop_metric_store(work))
    with mlflow.start_run():
        start = time.perf_counter()
        for i in range(points):
            mlflow.log_metric("x", i, step=i)
        costs["MLflow fluent floor"] = (time.perf_counter() - start) / points * 1e6
    uri = f"sqlite:///{work / 'plain.db'}"
    mlflow.set_tracking_uri(uri)
    few = max(1, points // 20)
    with mlflow.start_run():
        start = time.perf_counter()
        for i in range(few):
            mlflow.log_metric("x", i, step=i)
        costs["plain MLflow SQLite"] = (time.perf_counter() - start) / few * 1e6
        now = int(time.time() * 1000)
        start = time.perf_counter()
        mlflow.MlflowClient().log_batch(
            mlflow.active_run().info.run_id, metrics=[Metric("y", i, now, i) for i in range(points)]
        )
        costs["MLflow log_batch SQLite"] = (time.perf_counter() - start) / points * 1e6
    mlflow.set_tracking_uri(None)
    conn = sqlite3.connect(work / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    start = time.perf_counter()
    for i in range(points):
        conn.execute("INSERT INTO t(payload) VALUES (?)", (f'["x", {i}, {now}, {i}]',))
    costs["raw WAL insert"] = (time.perf_counter() - start) / points * 1e6
    conn.close()
    return costs


def cells(args, work: Path, shell) -> None:
    """Figures 1-3, against a real server; printed as they come."""
    server = MlflowServer(work / "server").start()
    slow = LatencyProxy(server.port, delay=args.latency_ms / 1000)
    results = {}
    try:
        import mlflow

        routes = (("loopback", server.uri), (f"+{args.latency_ms:.0f} ms", slow.uri))
        for label, uri in routes:
            results[label] = {
                "plain sync": measure(plain_sync, 1 if label != "loopback" else min(2, args.repeat), uri, args.points),
                "plain empty run": measure(plain_empty, args.repeat, uri, 0),
            }
        mlflow.set_tracking_uri(None)
        shell.run_line_magic("load_ext", "dbxml_magics")
        shell.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
        for label, uri in routes:
            shell.run_line_magic("aml_link", f"--uri {uri}")
            tracked_cell(shell, 5)  # warm-up: store construction, experiment lookup
            results[label]["%%track"] = measure(tracked_cell, args.repeat, shell, args.points)
            results[label]["%%track empty"] = measure(tracked_empty, args.repeat, shell, 0)
        requests = interleaved_requests(shell, server)
        shell.run_line_magic("aml_unlink", "")
        shell.run_line_magic("unload_ext", "dbxml_magics")
    finally:
        slow.stop()
        server.stop()
    print(f"\n{args.points} mlflow.log_metric points per run, median of {args.repeat} (plain sync: fewer), seconds")
    for label, goal in zip(results, (30, 50)):
        figures = results[label]
        print(f"\n[{label}]")
        for name, seconds in figures.items():
            print(f"  {name:<20} {seconds:8.3f} s")
        print(f"  %%track vs plain sync:            {figures['plain sync'] / figures['%%track']:6.1f}x faster (goal >= {goal}x)")
        print(f"  empty %%track / plain empty run:  {figures['%%track empty'] / figures['plain empty run']:6.2f} (goal <= 1.0)")
    print(f"\n10 interleaved child runs x 500 points: {requests} log-batch requests (goal <= 30)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--per-point", type=int, default=10000)
    parser.add_argument("--per-point-only", action="store_true", help="only the cost of one metric point")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    work = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    os.chdir(work)
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    if not args.per_point_only:
        cells(args, work, shell)
    shell.run_line_magic("load_ext", "dbxml_magics")
    shell.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
    costs = per_point_costs(shell, work, args.per_point)
    print(f"\none metric point, {args.per_point} points, microseconds:")
    for name, micros in costs.items():
        print(f"  {name:<32} {micros:8.1f} us")
    print("  goal: tracked mlflow.log_metric <= 50 us")
    print(f"  tracked mlflow.log_metric / raw WAL insert: {costs['tracked mlflow.log_metric'] / costs['raw WAL insert']:.1f}x;"
          f" journal write alone / raw WAL insert: {costs['journal write alone'] / costs['raw WAL insert']:.1f}x")


if __name__ == "__main__":
    main()
