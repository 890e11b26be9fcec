"""`%aml_score` vs the hand-written `mlflow.pyfunc.spark_udf` pipeline, on one Spark session.

Both score the same 1,000,000-row parquet table with the same registered scikit-learn model
and produce the same thing, in two shapes:
- files:  `%aml_score MODEL --table T --save-path P` vs `spark_udf` + `withColumn` + `write.parquet`;
- memory: `%aml_score MODEL --table T --into VAR`    vs `spark_udf` + `withColumn` + `cache()` + `count()`;
both sides then display the first 10 rows (the seed's `display(preds)` step).
Wall time covers everything each side does (model lookup and download, UDF, job, display,
and for the magic its checks and record). Python workers are warmed up first so neither
side pays their start-up.

The machines are shared and their load drifts within a minute, so the two sides run in
pairs, back to back, the order alternating from pair to pair; each pair gives one ratio
(magic rows/s over hand-written rows/s) and the reported ratio is the median over the
pairs. Rows/s are reported from each side's median time. The target is >= 0.9.

    .venv/bin/python benchmarks/bench_score.py [--rows 1000000] [--rounds 5]
"""

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _spark():
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("bench-score")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _register_model() -> str:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True, as_frame=True)
    features.columns = FEATURES
    model = LogisticRegression(max_iter=500).fit(features, target)
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model, name="model", registered_model_name="bench-iris",
            signature=infer_signature(features, model.predict(features)),
        )
    return "models:/bench-iris/1"


def _input_table(spark, rows: int, folder: str, name: str) -> None:
    from pyspark.sql import functions as F

    columns = [(F.rand(seed=i) * 7).alias(column) for i, column in enumerate(FEATURES)]
    spark.range(rows, numPartitions=4).select(*columns).write.parquet(folder)
    spark.read.parquet(folder).createOrReplaceTempView(name)


def _quietly(function, *args):
    """Both sides print into the same sink, so rendering costs the same and the terminal stays clean."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return function(*args)


def _by_hand(spark, model_uri: str, table: str, shape: str, out: str) -> int:
    import mlflow
    from IPython.display import display
    from pyspark.sql.types import LongType

    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=LongType(), env_manager="local")
    scored = spark.table(table).withColumn("prediction", udf(*FEATURES))
    if shape == "files":
        scored.write.parquet(out)
        result = spark.read.parquet(out)
    else:
        result = scored.cache()
    rows = result.count()
    _quietly(display, result.limit(10).toPandas())  # the seed's last step, as the magic does it
    if shape == "memory":
        result.unpersist()
    return rows


def _by_magic(shell, model_uri: str, table: str, shape: str, out: str) -> int:
    target = f"--save-path {out}" if shape == "files" else "--into scored"
    _quietly(shell.run_line_magic, "aml_score", f"{model_uri} --table {table} {target} --limit 10")
    if shape == "memory":
        shell.user_ns.pop("scored").unpersist()
    from dbxml_magics.session import get_session

    return get_session(shell).scorings[-1].rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5, help="Timed pairs (hand, magic) per shape.")
    args = parser.parse_args()

    os.chdir(tempfile.mkdtemp(prefix="bench-score-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    import mlflow
    from IPython.core.interactiveshell import InteractiveShell

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "dbxml_magics")
    mlflow.set_tracking_uri(f"sqlite:///{os.getcwd()}/mlflow.db")
    model_uri = _register_model()
    spark = _spark()
    started = time.perf_counter()
    _input_table(spark, args.rows, os.path.abspath("input.parquet"), "bench_input")
    _input_table(spark, 20_000, os.path.abspath("warm.parquet"), "bench_warm")
    print(f"input: {args.rows:,} rows of parquet written in {time.perf_counter() - started:.1f} s")
    _by_hand(spark, model_uri, "bench_warm", "memory", "")
    _by_magic(shell, model_uri, "bench_warm", "memory", "")

    seconds: dict[tuple[str, str], list[float]] = {}
    ratios: dict[str, list[float]] = {}
    sides = [("hand", _by_hand), ("magic", _by_magic)]
    for shape in ("files", "memory"):
        for round_ in range(args.rounds):
            # Whoever runs second finds warmer caches (JIT, OS pages): alternate who goes first.
            pair = {}
            for side, run in sides if (round_ + (shape == "memory")) % 2 == 0 else sides[::-1]:
                target = shell if side == "magic" else spark
                out = os.path.abspath(f"out-{shape}-{side}-{round_}.parquet")
                started = time.perf_counter()
                rows = run(target, model_uri, "bench_input", shape, out)
                pair[side] = time.perf_counter() - started
                assert rows == args.rows, (side, shape, rows)
                seconds.setdefault((shape, side), []).append(pair[side])
            ratios.setdefault(shape, []).append(pair["hand"] / pair["magic"])
    worst_ratio = float("inf")
    for shape in ("files", "memory"):
        hand_s = statistics.median(seconds[(shape, "hand")])
        magic_s = statistics.median(seconds[(shape, "magic")])
        ratio = statistics.median(ratios[shape])
        worst_ratio = min(worst_ratio, ratio)
        print(
            f"{shape:>6}: spark_udf by hand {args.rows / hand_s:,.0f} rows/s ({hand_s:.2f} s), "
            f"%aml_score {args.rows / magic_s:,.0f} rows/s ({magic_s:.2f} s), "
            f"ratio {ratio:.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios[shape])})"
        )
    print(f"%aml_score / hand-written throughput: {worst_ratio:.2f} (target >= 0.9) "
          f"{'OK' if worst_ratio >= 0.9 else 'BELOW TARGET'}")
    spark.stop()


if __name__ == "__main__":
    main()
