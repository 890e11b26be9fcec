"""`%aml_invoke` vs a hand-written `requests.post` on a kept-alive session, and the start-up
of a local endpoint (`%aml_deploy`) vs `mlflow models serve` run by hand.

Invocation: the same registered scikit-learn model behind one local endpoint; the same
DataFrame (1 row, then 1,000 rows) sent as `dataframe_split`. By hand, as the MLflow docs
show it: `requests.Session().post(url, json={"dataframe_split": df.to_dict(orient="split")})`,
then the predictions made a pandas Series. The magic returns the same Series. The two sides
run in pairs, back to back, the order alternating; each pair gives one ratio (magic time
over hand time) and the reported ratio is the median over `--rounds` pairs (target <= 1.2).

Start-up: wall time from the call to the first answer of `/ping`, for `%aml_deploy`
(which also resolves and copies the model) and for `mlflow models serve -m models:/...` by
hand (which downloads the model itself), each `--starts` times, alternating.

    .venv/bin/python benchmarks/bench_deploy.py [--rounds 20] [--starts 2]
"""

import argparse
import contextlib
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def _register_model(shell):
    shell.run_cell(
        "from sklearn.datasets import load_iris\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "X, y = load_iris(return_X_y=True, as_frame=True)\n"
        "clf = LogisticRegression(max_iter=300).fit(X, y)\n"
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        shell.run_cell_magic("track", "bench --no-source", "a = 1")
        shell.run_line_magic("aml_register", "bench-iris --model clf --input-example X")


def _rows(X, n: int):
    import pandas as pd

    return pd.concat([X] * (n // len(X) + 1), ignore_index=True).head(n)


def _by_hand(http, url: str, df):
    import pandas as pd

    response = http.post(url + "/invocations", json={"dataframe_split": df.to_dict(orient="split")}, timeout=60)
    response.raise_for_status()
    return pd.Series(response.json()["predictions"], index=df.index, name="prediction")


def _by_magic(shell, df):
    shell.user_ns["bench_df"] = df
    return shell.run_line_magic("aml_invoke", "bench-ep --df bench_df")


def _wait_ping(url: str, timeout: float = 600) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/ping", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise TimeoutError(url)


def _serve_by_hand(tracking_uri: str) -> float:
    from dbxml_magics.deploy.local import free_port

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/bench-iris/1", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_ping(f"http://127.0.0.1:{port}")
        return time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _serve_by_magic(shell, name: str) -> float:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        shell.run_line_magic("aml_deploy", f"{name} models:/bench-iris/1")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20, help="Timed pairs (hand, magic) per payload size.")
    parser.add_argument("--starts", type=int, default=2, help="Start-ups timed per side (0: invocations only).")
    args = parser.parse_args()

    os.chdir(tempfile.mkdtemp(prefix="bench-deploy-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import logging

    import requests
    from IPython.core.interactiveshell import InteractiveShell

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "dbxml_magics")
    from dbxml_magics.session import get_session

    session = get_session(shell)
    _register_model(shell)
    tracking_uri = session.link.primary.uri

    starts: dict[str, list[float]] = {"hand": [], "magic": []}
    for round_ in range(args.starts):
        for side in ("hand", "magic") if round_ % 2 == 0 else ("magic", "hand"):
            if side == "hand":
                starts[side].append(_serve_by_hand(tracking_uri))
            else:
                starts[side].append(_serve_by_magic(shell, f"start-{round_}"))
                with contextlib.redirect_stdout(io.StringIO()):
                    shell.run_line_magic("aml_deploy", f"--delete start-{round_}")
    if args.starts:
        hand_start, magic_start = statistics.median(starts["hand"]), statistics.median(starts["magic"])
        print(
            f"start-up to first /ping: mlflow models serve by hand {hand_start:.1f} s, %aml_deploy {magic_start:.1f} s "
            f"(ratio {magic_start / hand_start:.2f}; runs: hand {', '.join(f'{s:.1f}' for s in starts['hand'])}, "
            f"magic {', '.join(f'{s:.1f}' for s in starts['magic'])})"
        )

    _serve_by_magic(shell, "bench-ep")
    url = session.endpoints["bench-ep"].url
    X = shell.user_ns["X"]
    worst = 0.0
    with requests.Session() as http:
        for rows in (1, 1000):
            df = _rows(X, rows)
            for _ in range(3):  # warm both connections and the server's code paths
                _by_hand(http, url, df)
                _by_magic(shell, df)
            assert (_by_magic(shell, df) == _by_hand(http, url, df)).all()
            seconds: dict[str, list[float]] = {"hand": [], "magic": []}
            ratios = []
            for round_ in range(args.rounds):
                pair = {}
                for side in ("hand", "magic") if round_ % 2 == 0 else ("magic", "hand"):
                    started = time.perf_counter()
                    _by_hand(http, url, df) if side == "hand" else _by_magic(shell, df)
                    pair[side] = time.perf_counter() - started
                    seconds[side].append(pair[side])
                ratios.append(pair["magic"] / pair["hand"])
            ratio = statistics.median(ratios)
            worst = max(worst, ratio)
            print(
                f"{rows:>5} rows: requests.post by hand {statistics.median(seconds['hand']) * 1000:.1f} ms, "
                f"%aml_invoke {statistics.median(seconds['magic']) * 1000:.1f} ms, ratio {ratio:.2f} "
                f"(median of {args.rounds} pairs)"
            )
    print(f"%aml_invoke / hand-written time: {worst:.2f} (target <= 1.2) {'OK' if worst <= 1.2 else 'ABOVE TARGET'}")
    shell.run_line_magic("unload_ext", "dbxml_magics")


if __name__ == "__main__":
    main()
