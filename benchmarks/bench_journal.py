"""300 metric points to a real `mlflow server`: %%track (journal) vs plain MLflow.

Prints seconds and ratios measured in this one run: plain synchronous `mlflow.log_metric`,
MLflow's async logging, one hand-written `MlflowClient.log_batch`, and a %%track cell doing
the same 300 `mlflow.log_metric` calls (run start and end included in every variant).
Then the same with ~20 ms added per request by a delaying proxy on loopback.

    .venv/bin/python benchmarks/bench_journal.py [--points 300] [--repeat 3]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency_proxy import LatencyProxy  # noqa: E402
from servers import MlflowServer  # noqa: E402


def plain_sync(uri, points):
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        for i in range(points):
            mlflow.log_metric("loss", 1.0 / (i + 1), step=i)


def plain_async(uri, points):
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        for i in range(points):
            mlflow.log_metric("loss", 1.0 / (i + 1), step=i, synchronous=False)
    # end_run waits for the async queue to drain


def hand_batch(uri, points):
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        now = int(time.time() * 1000)
        mlflow.MlflowClient().log_batch(
            run.info.run_id, metrics=[Metric("loss", 1.0 / (i + 1), now, i) for i in range(points)]
        )


def tracked_cell(shell, uri, points):
    shell.run_cell_magic(
        "track", "", f"import mlflow\nfor i in range({points}):\n    mlflow.log_metric('loss', 1.0 / (i + 1), step=i)"
    )


def measure(fn, repeat, *args):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    work = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    os.chdir(work)
    server = MlflowServer(work / "server").start()
    proxy = LatencyProxy(server.port, delay=args.latency_ms / 1000)
    results = {}
    try:
        import mlflow

        for label, uri in (("loopback", server.uri), (f"+{args.latency_ms:.0f} ms", proxy.uri)):
            sync_repeat = 1 if label != "loopback" else min(2, args.repeat)
            results[label] = {
                "plain sync": measure(plain_sync, sync_repeat, uri, args.points),
                "mlflow async": measure(plain_async, args.repeat, uri, args.points),
                "hand log_batch": measure(hand_batch, args.repeat, uri, args.points),
            }
        mlflow.set_tracking_uri(None)
        from IPython.testing.globalipapp import start_ipython

        shell = start_ipython()
        shell.run_line_magic("load_ext", "dbxml_magics")
        shell.run_line_magic("config", "DbxmlMagics.show_panel_on_link = False")
        for label, uri in ((("loopback", server.uri)), (f"+{args.latency_ms:.0f} ms", proxy.uri)):
            shell.run_line_magic("aml_link", f"--uri {uri}")
            tracked_cell(shell, uri, 5)  # warm-up: store construction, experiment lookup
            results[label]["%%track (journal)"] = measure(tracked_cell, args.repeat, shell, uri, args.points)
        shell.run_line_magic("unload_ext", "dbxml_magics")
    finally:
        proxy.stop()
        server.stop()
    print(f"\n{args.points} mlflow.log_metric points per run, median of {args.repeat} (plain sync: fewer), seconds")
    for label, figures in results.items():
        track = figures["%%track (journal)"]
        print(f"\n[{label}]")
        for name, seconds in figures.items():
            print(f"  {name:<20} {seconds:8.3f} s")
        print(f"  %%track vs plain sync:     {figures['plain sync'] / track:6.1f}x faster (goal >= 30x)")
        print(f"  %%track vs mlflow async:   {figures['mlflow async'] / track:6.1f}x faster (goal >= 5x)")
        print(f"  %%track / hand log_batch:  {track / figures['hand log_batch']:6.2f}x the time (goal <= 2x)")


if __name__ == "__main__":
    main()
