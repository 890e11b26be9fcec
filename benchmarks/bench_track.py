"""Start-up and per-cell overhead: `%load_ext dbxml_magics` wall time, and an empty
`%%track` cell vs a hand-written `with mlflow.start_run(): pass` on the same embedded store.

    .venv/bin/python benchmarks/bench_track.py [--repeat 20]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

LOAD_EXT = """
import sys, time
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
start = time.perf_counter()
ip.run_line_magic("load_ext", "dbxml_magics")
elapsed = time.perf_counter() - start
heavy = [m for m in ("mlflow", "pyspark", "azureml", "ipywidgets") if m in sys.modules]
start = time.perf_counter()
import mlflow
print(elapsed, time.perf_counter() - start, ",".join(heavy) or "-")
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    loads, mlflow_imports = [], []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", LOAD_EXT], capture_output=True, text=True, check=True).stdout
        load, mlflow_import, heavy = out.split()
        loads.append(float(load))
        mlflow_imports.append(float(mlflow_import))
    print(f"%load_ext dbxml_magics: {statistics.median(loads) * 1000:.1f} ms (median of 5 fresh processes); "
          f"heavy modules imported by it: {heavy}; `import mlflow` alone: {statistics.median(mlflow_imports):.2f} s")

    os.chdir(tempfile.mkdtemp(prefix="bench-track-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import mlflow
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "dbxml_magics")
    ip.run_cell_magic("track", "warm-up", "pass")  # store creation, journal start
    plain_times, track_times, bare_times = [], [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        ip.run_cell_magic("track", "", "pass")
        track_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with mlflow.start_run():
            pass
        plain_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        ip.run_cell_magic("track", "--no-source", "pass")
        bare_times.append(time.perf_counter() - start)
    ip.run_line_magic("unload_ext", "dbxml_magics")
    track, plain, bare = (statistics.median(t) for t in (track_times, plain_times, bare_times))
    print(f"empty %%track cell:               {track * 1000:7.1f} ms (median of {args.repeat})")
    print(f"empty %%track --no-source:        {bare * 1000:7.1f} ms")
    print(f"with mlflow.start_run(): pass     {plain * 1000:7.1f} ms (same store, journal wrapper installed)")
    print(f"overhead of %%track:              {(track - plain) * 1000:7.1f} ms per cell ({track / plain:.2f}x)")


if __name__ == "__main__":
    main()
