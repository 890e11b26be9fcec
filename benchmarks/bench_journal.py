"""The journal against plain MLflow, ratios measured in this one run against a real `mlflow server`.

1. A %%track cell with 300 `mlflow.log_metric` calls, from the start of the cell to its end
   (run creation, params, tags and the source artifact included), vs the same loop with plain
   synchronous MLflow against the same server: goal >= 30x; with 20 ms added per request
   (a delaying proxy on loopback) goal >= 50x.
2. An empty %%track cell vs a hand-written `with mlflow.start_run(): pass`: goal <= 1.0.
3. 10 interleaved child runs of 500 points each: log-batch requests that reach the server
   (counted by a proxy): goal <= 30.
4. The cost of one `mlflow.log_metric` inside a tracked cell (embedded store), next to plain
   MLflow on SQLite per point, `log_batch` per point and a raw SQLite WAL insert: goal <= 50 us.

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


def per_point_costs(shell, work: Path, points: int) -> dict:
    """Microseconds per point: inside a tracked cell on the embedded store, plain MLflow on
    SQLite, MLflow log_batch on SQLite, and a raw SQLite WAL insert."""
    import mlflow
    from mlflow.entities import Metric

    shell.run_line_magic("aml_link", "--local")
    shell.run_cell_magic("track", "", "pass")  # warm-up
    shell.user_ns["_bench_n"] = points
    shell.run_cell_magic(
        "track", "per-point",
        "import mlflow, time\n_t = time.perf_counter()\nfor i in range(_bench_n):\n    mlflow.log_metric('x', i, step=i)\n"
        "_bench_elapsed = time.perf_counter() - _t",
    )
    tracked = shell.user_ns["_bench_elapsed"] / points * 1e6
    shell.run_line_magic("aml_unlink", "")
    shell.run_line_magic("unload_ext", "dbxml_magics")
    uri = f"sqlite:///{work / 'plain.db'}"
    mlflow.set_tracking_uri(uri)
    few = max(1, points // 20)
    with mlflow.start_run():
        start = time.perf_counter()
        for i in range(few):
            mlflow.log_metric("x", i, step=i)
        plain = (time.perf_counter() - start) / few * 1e6
        now = int(time.time() * 1000)
        start = time.perf_counter()
        mlflow.MlflowClient().log_batch(
            mlflow.active_run().info.run_id, metrics=[Metric("y", i, now, i) for i in range(points)]
        )
        batch = (time.perf_counter() - start) / points * 1e6
    mlflow.set_tracking_uri(None)
    conn = sqlite3.connect(work / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT)")
    start = time.perf_counter()
    for i in range(points):
        conn.execute("INSERT INTO t(payload) VALUES (?)", (f'["x", {i}, {now}, {i}]',))
    raw = (time.perf_counter() - start) / points * 1e6
    conn.close()
    return {"tracked cell": tracked, "plain MLflow SQLite": plain, "MLflow log_batch SQLite": batch, "raw WAL insert": raw}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--per-point", type=int, default=10000)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    work = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    os.chdir(work)
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
        from IPython.testing.globalipapp import start_ipython

        shell = start_ipython()
        shell.run_line_magic("load_ext", "dbxml_magics")
        shell.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
        for label, uri in routes:
            shell.run_line_magic("aml_link", f"--uri {uri}")
            tracked_cell(shell, 5)  # warm-up: store construction, experiment lookup
            results[label]["%%track"] = measure(tracked_cell, args.repeat, shell, args.points)
            results[label]["%%track empty"] = measure(tracked_empty, args.repeat, shell, 0)
        requests = interleaved_requests(shell, server)
        costs = per_point_costs(shell, work, args.per_point)
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
    print(f"\none metric point, {args.per_point} points, microseconds:")
    for name, micros in costs.items():
        print(f"  {name:<24} {micros:8.1f} us")
    print("  goal: tracked cell <= 50 us")


if __name__ == "__main__":
    main()
