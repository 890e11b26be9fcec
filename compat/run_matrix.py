"""The runtime matrix: one environment per compat/ profile, the project installed with plain
pip on top of the runtime's own packages, then the core suite in it.

    python compat/run_matrix.py [PROFILE ...] [--build-only | --test-only] [--jobs N] [--ci]

For each profile (`compat/<name>.txt`: `# python:`, `# runtime:` and optional `# install:` lines, then
the runtime's pins, MLflow as the `mlflow-skinny` distribution the runtimes ship):
1. a virtualenv under `.compat/<name>/` with the runtime's packages (installed with uv when
   it is there: they stand for what the runtime already has, not for what a user types);
2. `pip install --dry-run --report` of the project with the install line the README gives for
   that runtime (`dbxml-magics` plus the profile's `# install:` pins): it must install none of
   the runtime's packages at another version and no full `mlflow` over its mlflow-skinny; where
   the line has pins, the bare line is resolved too, and what it would do is printed;
3. the same install for real, with plain pip, timed, and the installed versions checked again;
4. the test tools (pytest), and beside the environment a second one with the full `mlflow` of
   the runtime's version for the tests' own `mlflow server` (the runtime's holds mlflow-skinny
   only, so the kernel side is tested as a runtime has it); then the core suite (CORE_TESTS).

With --ci (what `.ci/run` does, inside its time): step 3 installs with uv instead, after the
plain-pip dry run of step 2 has proved the plan (the unpinned line is not resolved), and
step 4 runs CI_TESTS, the tests of what differs between runtimes.

An environment whose profile and project requirements are unchanged is reused (its checks
passed when it was built). Exit status is non-zero when any step of any profile fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / "compat"
ENVS = ROOT / ".compat"

# What a notebook user does every day: track, journal, link, register (every sklearn family),
# score on local Spark, panel state. Spark Connect is left out: Spark 3.5's server is not
# bundled with pyspark (it is fetched from Maven), and the main suite covers it on "latest".
CORE_TESTS = [
    "tests/test_tracking.py",
    "tests/test_journal.py",
    "tests/test_aml_protocol.py",
    "tests/test_registry.py",
    "tests/test_sklearn_families.py",
    "tests/test_scoring.py",
    "tests/test_panel.py",
    "tests/test_versions.py",
]
CORE_DESELECT = "not connect and not remote"
# What differs between runtimes (MLflow 2.x / 3.x store, client and artifact APIs, Spark 3.5 / 4,
# Python 3.11-3.13, azureml-mlflow's plugin): tracking on an embedded store and on a server,
# the journal's shipping and mirror, the AML plugin, registering and loading every sklearn
# family, scoring on local Spark, one mlflow.
CI_TESTS = [
    "tests/test_tracking.py::test_track_logs_params_metrics_source_on_embedded_store",
    "tests/test_tracking.py::test_track_on_real_server",
    "tests/test_journal.py::test_metrics_reach_server_in_few_requests",
    "tests/test_aml_protocol.py::test_both_mode_mirrors_to_aml_with_mapped_experiment",
    # runs only where azureml-core is absent, as on a runtime without the sdk-v1 extra
    "tests/test_aml_protocol.py::test_without_the_sdk_v1_extra_a_workspace_variable_says_how_to_get_it",
    "tests/test_registry.py::test_register_from_run_last_and_from_runs_uri",
    "tests/test_sklearn_families.py",
    "tests/test_scoring.py::test_table_scored_with_registered_name_equals_model_predict",
    "tests/test_versions.py",
    # the panel's state under the runtime's ipywidgets (7 on Databricks)
    "tests/test_panel.py::test_click_shows_params_tags_metric_plots_and_artifacts",
    "tests/test_panel_compare.py::test_ticking_runs_compares_them_params_overlaid_histories_best_run",
]
# "latest" holds the main suite's releases, which `make test` scores on local Spark already:
# there CI checks what only its Python (3.13) can change.
CI_SKIP_ON_LATEST = ("tests/test_scoring.py",)
TEST_TOOLS = ["pytest>=8", "hypothesis>=6.100"]
RUNTIME_KEYS = ("pyspark", "mlflow-skinny", "pandas", "numpy", "scikit-learn", "pyarrow")


@dataclass
class Profile:
    name: str
    python: str
    runtime: str
    pins: dict[str, str]
    install: list[str]  # the `# install:` line: extras in brackets, then pins

    @property
    def mlflow(self) -> str:
        return self.pins["mlflow-skinny"]

    @property
    def path(self) -> Path:
        return COMPAT / f"{self.name}.txt"

    @property
    def extras(self) -> str:
        return "".join(word for word in self.install if word.startswith("["))

    @property
    def install_args(self) -> list[str]:
        """The README's install line for this runtime (the project from this checkout)."""
        return ["-e", f"{ROOT}{self.extras}", *(word for word in self.install if not word.startswith("["))]

    @property
    def install_line(self) -> str:
        if self.name == "latest":
            return f"`pip install 'dbxml-magics{self.extras}'`"
        return f"`%pip install {' '.join(['dbxml-magics', *self.install])}`"


def load_profiles() -> list[Profile]:
    profiles = []
    for path in sorted(COMPAT.glob("*.txt"), key=_profile_order):
        meta, pins = {}, {}
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("#") and ":" in line:
                key, _, value = line[1:].partition(":")
                meta[key.strip()] = value.strip()
            elif line and not line.startswith("#"):
                name, _, version = line.partition("==")
                pins[name.strip().lower()] = version.strip()
        missing = [k for k in RUNTIME_KEYS if k not in pins] + [k for k in ("python", "runtime") if k not in meta]
        if missing:
            raise SystemExit(f"{path}: missing {', '.join(missing)}")
        profiles.append(Profile(path.stem, meta["python"], meta["runtime"], pins, meta.get("install", "").split()))
    return profiles


def _profile_order(path: Path):
    """Runtimes oldest first, "latest" last."""
    try:
        return (0, tuple(int(p) for p in path.stem.split(".")))
    except ValueError:
        return (1, ())


def support_table(profiles: list[Profile]) -> str:
    """The README's support table: what each profile pins, and the install line it proves."""
    rows = [
        "| Runtime | Python | Spark | MLflow | pandas | numpy | scikit-learn | pyarrow | Install with |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in profiles:
        runtime = "newest releases (no runtime)" if p.name == "latest" else f"Databricks {p.runtime}"
        versions = " | ".join(p.pins[k] for k in RUNTIME_KEYS)
        rows.append(f"| {runtime} | {p.python} | {versions} | {p.install_line} |")
    return "\n".join(rows)


def _stamp(profile: Profile) -> str:
    """What an environment was built from: the profile, the project's own requirements, the recipe."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    digest = hashlib.sha256(profile.path.read_bytes())
    digest.update(json.dumps([project["requires-python"], project["dependencies"]]).encode())
    digest.update(inspect.getsource(build).encode())  # and how: a changed recipe rebuilds
    return digest.hexdigest()


def _stamps(profile: Profile, ci: bool) -> list[str]:
    """Stamps an environment may carry to be reused: one the plain-pip install proved, and for
    --ci also one installed with uv (which `make compat` then rebuilds with plain pip)."""
    proved = _stamp(profile)
    return [proved, f"{proved} uv"] if ci else [proved]


class Failed(Exception):
    pass


def _run(cmd: list[str], log: Path, env: dict | None = None, timeout: float = 1800) -> float:
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=ROOT)
    if result.returncode:
        raise Failed(f"`{' '.join(cmd[:6])} ...` exited {result.returncode}; see {log}")
    return time.monotonic() - started


def _resolve(profile: Profile, python: Path, args: list[str], log: Path) -> dict[str, str]:
    """What `pip install ARGS` would install or replace: {name: version}."""
    report = log.parent / "report.json"
    _run([str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), *args], log)
    installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


def check_plan(profile: Profile, planned: dict[str, str]) -> list[str]:
    """Problems with a pip install plan (or an installed environment): a runtime package at
    another version, or the full `mlflow` over the runtime's mlflow-skinny (only `[server]`
    asks for it, and then at the runtime's version)."""
    problems = [
        f"{name} {profile.pins[name]} would be replaced by {planned[name]}"
        for name in profile.pins
        if name in planned and planned[name] != profile.pins[name]
    ]
    full = planned.get("mlflow")
    if full is not None and ("server" not in profile.extras or full != profile.mlflow):
        problems.append(f"mlflow {full} would be installed over the runtime's mlflow-skinny {profile.mlflow}")
    return problems


def _interpreter(version: str) -> str:
    """`pythonX.Y`; pyenv's shim for it fails unless that version is selected, so its own first."""
    pyenv = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    found = sorted(pyenv.glob(f"versions/{version}.*/bin/python{version}"))
    return str(found[-1]) if found else f"python{version}"


def build(profile: Profile, ci: bool = False) -> str:
    home = ENVS / profile.name
    venv, log = home / "venv", home / "build.log"
    stamp_file = home / "stamp"
    if stamp_file.exists() and stamp_file.read_text() in _stamps(profile, ci):
        return f"{profile.name}: environment reused"
    started = time.monotonic()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    python = venv / "bin" / "python"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    _run([_interpreter(profile.python), "-m", "venv", str(venv)], log)
    runtime = ["-r", str(profile.path)]
    if uv:
        _run([uv, "pip", "install", "--quiet", "--python", str(python), "--upgrade-package", "pip", "pip", *runtime], log)
    else:
        _run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], log)
        _run([str(python), "-m", "pip", "install", "--quiet", *runtime], log)

    bare = ["-e", f"{ROOT}{profile.extras}"]
    unpinned = [] if ci or profile.install_args == bare else check_plan(profile, _resolve(profile, python, bare, log))
    resolving = time.monotonic()
    problems = check_plan(profile, _resolve(profile, python, profile.install_args, log))
    resolved = time.monotonic() - resolving
    if problems:
        raise Failed(f"{profile.name}: `pip install` would change the runtime: {'; '.join(problems)}")
    if ci and uv:
        # uv's resolver may choose differently from pip's (e.g. a newer azureml-mlflow with an
        # older mlflow-skinny): held to the runtime's pins, it installs the plan pip proved.
        seconds = _run([uv, "pip", "install", "--quiet", "--python", str(python), *profile.install_args,
                        "-c", str(profile.path)], log)
        how = "uv install"
    else:
        seconds = _run([str(python), "-m", "pip", "install", "--quiet", *profile.install_args], log)
        how = "plain pip install"
    changed = check_plan(profile, _installed(python))
    if changed:
        raise Failed(f"{profile.name}: the install changed the runtime: {'; '.join(changed)}")
    _install(uv, python, [*TEST_TOOLS, "-c", str(profile.path)], log)
    # The tests' `mlflow server` needs the full distribution: its own environment, the
    # runtime's versions held (MLflow 2.x's server imports a name SQLAlchemy 2.1 removed).
    _run([_interpreter(profile.python), "-m", "venv", str(home / "server")], log)
    _install(uv, home / "server" / "bin" / "python", [f"mlflow=={profile.mlflow}", "-c", str(profile.path)], log)
    stamp_file.write_text(_stamps(profile, ci)[-1])
    without_pin = f"; without the install line's pins: {'; '.join(unpinned)}" if unpinned else ""
    return (
        f"{profile.name}: runtime kept, pip dry run {resolved:.0f} s, {how} {seconds:.0f} s, "
        f"built in {time.monotonic() - started:.0f} s{without_pin}"
    )


def _install(uv: str | None, python: Path, args: list[str], log: Path) -> None:
    """Tools beside the project (not what a user types): with uv when it is there."""
    if uv:
        _run([uv, "pip", "install", "--quiet", "--python", str(python), *args], log)
    else:
        _run([str(python), "-m", "pip", "install", "--quiet", *args], log)


def _installed(python: Path) -> dict[str, str]:
    """What the environment holds after the install: {name: version}."""
    out = subprocess.run(
        [str(python), "-c", "import json, importlib.metadata as m; "
         "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)


def test(profile: Profile, ci: bool = False) -> str:
    home = ENVS / profile.name
    if not (home / "stamp").exists() or (home / "stamp").read_text() not in _stamps(profile, True):
        raise Failed(f"no up-to-date environment; build it: python compat/run_matrix.py {profile.name} --build-only")
    python = home / "venv" / "bin" / "python"
    log = home / "pytest.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["DBXML_TEST_SERVER_PYTHON"] = str(home / "server" / "bin" / "python")
    if ci:
        skipped = CI_SKIP_ON_LATEST if profile.name == "latest" else ()
        selection = [t for t in CI_TESTS if not t.startswith(skipped)]
    else:
        selection = ["-k", CORE_DESELECT, *CORE_TESTS]
    try:
        seconds = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5", *selection],
                       log, env=env, timeout=1800)
    finally:
        lines = log.read_text().strip().splitlines()
        for line in lines:
            if line.startswith(("FAILED", "ERROR")):
                print(line, flush=True)
    # pytest's closing line; an interpreter's noise at exit may follow it
    summary = next((line for line in reversed(lines) if " passed" in line or " failed" in line), lines[-1])
    return f"{profile.name}: {'CI' if ci else 'core'} suite {summary.strip('= ')} ({seconds:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="*", help="profile names (default: all in compat/)")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--build-only", action="store_true")
    step.add_argument("--test-only", action="store_true")
    step.add_argument("--table", action="store_true", help="print the README's support table")
    parser.add_argument("--jobs", type=int, default=2, help="environments built at once")
    parser.add_argument("--ci", action="store_true", help="uv install after the pip dry run; CI_TESTS only")
    args = parser.parse_args(argv)
    profiles = load_profiles()
    if args.profiles:
        unknown = set(args.profiles) - {p.name for p in profiles}
        if unknown:
            parser.error(f"unknown profile(s) {', '.join(sorted(unknown))}; see compat/*.txt")
        profiles = [p for p in profiles if p.name in args.profiles]
    if args.table:
        print(support_table(profiles))
        return 0

    failed: set[str] = set()
    started = time.monotonic()
    if not args.test_only:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for profile, future in [(p, pool.submit(build, p, args.ci)) for p in profiles]:
                try:
                    print(future.result(), flush=True)
                except (Failed, subprocess.TimeoutExpired) as exc:
                    failed.add(profile.name)
                    print(f"{profile.name}: BUILD FAILED: {exc}", flush=True)
    if not args.build_only:
        # One profile at a time: each starts its own Spark and MLflow servers on 2 cores.
        for profile in profiles:
            if profile.name in failed:
                continue
            try:
                print(test(profile, args.ci), flush=True)
            except (Failed, subprocess.TimeoutExpired) as exc:
                failed.add(profile.name)
                print(f"{profile.name}: CORE SUITE FAILED: {exc}", flush=True)
    print(f"matrix: {time.monotonic() - started:.0f} s")
    print(f"profiles: {len(profiles) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
