"""Malformed magic lines, a fixed corpus and generated ones: each ends in one UsageError
line (no traceback) and changes nothing - link, tracking URI, runs, experiments and
registered models in the real store, the session's records, the notebook's variables -
and leaves no run active.

Lines go through `run_cell`, the path a notebook cell takes, so what IPython prints for
the error (stderr) is checked too, not only the exception object.
"""

import sqlite3

import mlflow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from servers import free_port

SENTINEL_CELL = "bad_input_cell_ran = 1\n"
HUGE = 3000  # IPython's own {var} expansion of a magic line is quadratic: 100k chars take minutes


@pytest.fixture
def linked_with_variables(linked, shell, tmp_path):
    """Linked to the real server; the notebook holds a number (not a model / DataFrame)."""
    shell.user_ns["plain_number"] = 42
    (tmp_path / "broken.json").write_text("{not json")
    yield linked


def _snapshot(session, shell, server):
    # The server's own database, read directly: an HTTP round trip per line would make
    # this module slow, and the rows are what any client would see.
    with sqlite3.connect(f"file:{server.root / 'srv.db'}?mode=ro", uri=True) as store:
        rows = {
            table: store.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("experiments", "runs", "params", "tags", "metrics", "registered_models", "model_versions")
        }
    return {
        "link": session.link,
        "tracking_uri": mlflow.get_tracking_uri(),
        "store_rows": rows,
        "session_runs": len(session.runs),
        "session_models": len(session.models),
        "session_scorings": len(session.scorings),
        "variables": sorted(name for name in shell.user_ns if not name.startswith("_")),
    }


def _source(magic: str, line: str, cell: str | None) -> str:
    if magic == "track":
        return f"%%track {line}\n{SENTINEL_CELL if cell is None else cell}"
    return f"%{magic} {line}"


def _assert_one_line_usage_error(shell, capsys, source: str) -> str:
    capsys.readouterr()
    result = shell.run_cell(source)
    printed = capsys.readouterr()
    error = result.error_in_exec
    assert isinstance(error, UsageError), f"{source[:200]!r} -> {type(error).__name__}: {str(error)[:500]}"
    message = str(error)
    assert message and "\n" not in message, repr(message[:500])
    assert "Traceback" not in printed.out + printed.err, printed.err[-2000:]
    assert printed.err.count("UsageError:") == 1, printed.err[-2000:]
    assert mlflow.active_run() is None
    return message


def _corpus(tmp_path, server_uri: str):
    closed_port = free_port()
    huge = "x" * HUGE
    return [
        # ---- %%track: unknown options, missing values, bad names, quotes, cells
        ("track", "--bogus", None),
        ("track", "--zz-unknown=3", None),
        ("track", "--experiment", None),
        ("track", "-e", None),
        ("track", "--params", None),
        ("track", "--metrics", None),
        ("track", "--tags", None),
        ("track", "--artifacts", None),
        ("track", "--tags novalue", None),
        ("track", "--tags =v", None),
        ("track", "--params 1abc", None),
        ("track", "--metrics a-b", None),
        ("track", "--params 'x", None),
        ("track", 'run "name', None),
        ("track", "first second", None),
        ("track", "--autolog=yes", None),
        ("track", "--nested extra words", None),
        ("track", "--experiment ''", None),
        ("track", "ok", ""),
        ("track", "ok", "   \n\t\n"),
        ("track", "ok", "def broken(:\n    pass\n"),
        ("track", "--experiment " + "e" * 600, None),  # over MLflow's 500-character limit
        ("track", "--params " + huge + "-y", None),
        ("track", "--tags " + "k" * 300 + "=v", None),  # tag key over MLflow's 250 characters
        ("track", "--params café-au-lait", None),
        ("track", "--tags ключ", None),
        ("track", "--métriques x", None),
        ("track", "名前 余分", None),
        # ---- %aml_link
        ("aml_link", "--bogus", None),
        ("aml_link", "--uri", None),
        ("aml_link", "--mode", None),
        ("aml_link", "--mode sideways --local", None),
        ("aml_link", "--auth password --local", None),
        ("aml_link", "--uri ftp://host/x", None),
        ("aml_link", "--uri http://", None),
        ("aml_link", "--uri http://user:pw@", None),
        ("aml_link", "--uri 'http://127.0.0.1:5000", None),
        ("aml_link", f"--local --uri {server_uri}", None),
        ("aml_link", "--mode both", None),
        ("aml_link", "--experiment lonely", None),
        ("aml_link", "-s sub", None),
        ("aml_link", "-s sub -g rg", None),
        ("aml_link", f"--config {tmp_path / 'no' / 'such' / 'config.json'}", None),
        ("aml_link", f"--config {tmp_path / 'broken.json'}", None),
        ("aml_link", f"--uri sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}", None),
        ("aml_link", "--uri sqlite://", None),
        ("aml_link", f"--uri http://127.0.0.1:{closed_port}", None),
        ("aml_link", f"--uri {server_uri} --mode both", None),  # a mirror equal to the primary
        ("aml_link", "--local /proc/dbxml-cannot-be-created", None),
        ("aml_link", "--uri " + huge, None),
        ("aml_link", "--uri ftp://ünïcode", None),
        ("aml_link", "--mode ambos --local", None),
        ("aml_link", "--läuft", None),
        ("aml_link", "--uri $no_such_variable", None),
        # ---- %aml_unlink
        ("aml_unlink", "extra", None),
        ("aml_unlink", "--force", None),
        ("aml_unlink", "'", None),
        ("aml_unlink", "ünlink", None),
        # ---- %aml_register
        ("aml_register", "", None),
        ("aml_register", "m --bogus", None),
        ("aml_register", "m --model", None),
        ("aml_register", "m", None),
        ("aml_register", "m --model no_such_model", None),
        ("aml_register", "m --model 1x", None),
        ("aml_register", "m --model plain_number --run last", None),
        ("aml_register", "m --flavor tensorflow --model plain_number", None),
        ("aml_register", "m --run last", None),  # no run in this session yet
        ("aml_register", "m --uri not-a-uri", None),
        ("aml_register", "m --uri runs:/abc", None),
        ("aml_register", "'m --model plain_number", None),
        ("aml_register", "bad/name --model plain_number", None),
        ("aml_register", "m --model plain_number", None),  # a number is not a model
        ("aml_register", "m --model plain_number --alias latest", None),
        ("aml_register", "m --model plain_number --tags novalue", None),
        ("aml_register", "m --input-example plain_number --run last", None),
        ("aml_register", "m --artifact-path ../up --run last", None),
        ("aml_register", huge + " --model plain_number", None),
        ("aml_register", "modèle --model inconnu", None),
        ("aml_register", "m --model café", None),
        # ---- %aml_score
        ("aml_score", "", None),
        ("aml_score", "m", None),
        ("aml_score", "m --table t --df d", None),
        ("aml_score", "m --df no_such_frame", None),
        ("aml_score", "m --df plain_number", None),
        ("aml_score", "m --table t --limit x", None),
        ("aml_score", "m --table t --limit -1", None),
        ("aml_score", "m --table t --format xml", None),
        ("aml_score", "m --table t --into 1bad", None),
        ("aml_score", "m --table t --into spark", None),
        ("aml_score", "m --table t --output-col ''", None),
        ("aml_score", "last --table t", None),  # nothing registered in this session
        ("aml_score", "m --table 't", None),
        ("aml_score", "m --bogus", None),
        ("aml_score", "m --table t --columns", None),
        ("aml_score", "m --df " + huge, None),
        ("aml_score", "modèle --df données", None),
        # ---- %aml_deploy / %aml_invoke
        ("aml_deploy", "", None),
        ("aml_deploy", "ep", None),
        ("aml_deploy", "1ep m", None),
        ("aml_deploy", "e_p m", None),
        ("aml_deploy", "ep m --target azure", None),
        ("aml_deploy", "ep m --instance-count two", None),
        ("aml_deploy", "ep m --traffic 20", None),  # aml options on the local target
        ("aml_deploy", "ep no_such_model", None),
        ("aml_deploy", "ep m --port 0", None),
        ("aml_deploy", "ep m --timeout -1", None),
        ("aml_deploy", "--delete", None),
        ("aml_deploy", "--delete nosuch", None),
        ("aml_deploy", "--list extra", None),
        ("aml_deploy", huge + " m", None),
        ("aml_invoke", "", None),
        ("aml_invoke", "ep", None),
        ("aml_invoke", "ep --df plain_number", None),
        ("aml_invoke", "ep --df no_such_frame", None),
        ("aml_invoke", "nosuch --df plain_number --timeout x", None),
        ("aml_invoke", "ép --df données", None),
        # ---- %aml_sync
        ("aml_sync", "--bogus", None),
        ("aml_sync", "--timeout abc", None),
        ("aml_sync", "--timeout", None),
        ("aml_sync", "--flush --timeout -1", None),
        ("aml_sync", "--flush --timeout nan", None),
        ("aml_sync", "--flush --timeout inf", None),
        ("aml_sync", "extra", None),
        ("aml_sync", "--flush 'x", None),
        ("aml_sync", "--zeitüberschreitung 5", None),
        # ---- %aml_panel
        ("aml_panel", "x", None),
        ("aml_panel", "--bogus", None),
        ("aml_panel", "'", None),
        ("aml_panel", "ß", None),
        ("aml_panel", "--compare", None),
        ("aml_panel", "--compare nosuchrun other", None),
        # ---- %aml_ui
        ("aml_ui", "--bogus", None),
        ("aml_ui", "extra", None),
        ("aml_ui", "--stop now", None),
    ]


MAGICS = (
    "track", "aml_link", "aml_unlink", "aml_register", "aml_score", "aml_deploy", "aml_invoke", "aml_sync", "aml_panel",
    "aml_ui",
)


def test_corpus_of_malformed_lines_ends_in_one_line_each_and_changes_nothing(
    linked_with_variables, shell, capsys, tmp_path, mlflow_server
):
    session = linked_with_variables
    corpus = _corpus(tmp_path, mlflow_server.uri)
    assert len(corpus) >= 50 and {magic for magic, _, _ in corpus} == set(MAGICS)
    before = _snapshot(session, shell, mlflow_server)
    messages = {}
    for magic, line, cell in corpus:
        source = _source(magic, line, cell)
        messages[source] = _assert_one_line_usage_error(shell, capsys, source)
        after = _snapshot(session, shell, mlflow_server)
        assert after == before, f"{source[:200]!r} changed {[k for k in before if before[k] != after[k]]}"
    assert "bad_input_cell_ran" not in shell.user_ns
    # The messages say what to fix, and say it differently for different mistakes.
    assert len(set(messages.values())) > len(corpus) * 0.8
    for source, message in messages.items():
        assert len(message) < 600, (source[:100], message)


# ---------------------------------------------------------------------- generated lines
# Words free of quotes, braces, '$' and backslashes (IPython would expand or escape them),
# with non-ASCII letters and digits.
_WORD = st.text(
    alphabet=st.characters(categories=("L", "N"), include_characters="-_.:/=@+%,", exclude_characters="'\"{}$\\"),
    min_size=1,
    max_size=12,
).filter(lambda w: not w.startswith("-"))
_IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)


def _not_a_number(kind):
    def bad(word: str) -> bool:
        try:
            kind(word)
        except ValueError:
            return True
        return False

    return _WORD.filter(bad)


# Options that are valid on their own: whatever the generator puts before the defect must
# not make the line valid (so: no repeated option after the defect, defect last).
_BENIGN = {
    "track": [
        _WORD.map(lambda w: f"--experiment {w}"),
        _IDENT.map(lambda w: f"--params {w}"),
        _IDENT.map(lambda w: f"--metrics {w}"),
        st.tuples(_IDENT, _WORD).map(lambda kv: f"--tags {kv[0]}={kv[1]}"),
        st.sampled_from(["--autolog", "--nested", "--no-source"]),
    ],
    "aml_link": [
        _WORD.map(lambda w: f"--experiment {w}"),
        st.sampled_from(["--mode both", "--mode aml-only", "--auth cli", "--local", "-s sub", "-g rg", "-w ws"]),
    ],
    "aml_unlink": [],
    "aml_register": [
        _IDENT.map(lambda w: f"--alias {w}"),
        _WORD.map(lambda w: f"--description {w}"),
        st.sampled_from(["--flavor sklearn", "--run last", "--model plain_number", "--artifact-path model"]),
    ],
    "aml_score": [
        _WORD.map(lambda w: f"--table {w}"),
        _WORD.map(lambda w: f"--where {w}"),
        st.sampled_from(["--log-run", "--format csv", "--limit 3", "--output-col p"]),
    ],
    "aml_deploy": [st.sampled_from(["--target local", "--timeout 5", "--port 8080"])],
    "aml_invoke": [st.sampled_from(["--df plain_number", "--into out", "--timeout 5"])],
    "aml_sync": [st.sampled_from(["--flush", "--timeout 0"])],
    "aml_panel": [],
    "aml_ui": [],
}
_NEEDS_VALUE = {
    "track": ["--experiment", "--params", "--metrics", "--tags", "--artifacts"],
    "aml_link": ["--uri", "--mode", "--auth", "--experiment", "-s", "-g", "-w"],
    "aml_register": ["--model", "--run", "--uri", "--alias", "--flavor", "--tags"],
    "aml_score": ["--table", "--df", "--path", "--into", "--limit", "--columns"],
    "aml_deploy": ["--target", "--deployment", "--instance-count", "--traffic", "--port", "--timeout", "--delete"],
    "aml_invoke": ["--df", "--into", "--deployment", "--timeout"],
    "aml_sync": ["--timeout"],
}
_BAD_TYPED_VALUE = {
    "aml_link": [_WORD.filter(lambda w: w not in ("aml-only", "both")).map(lambda w: f"--mode {w}")],
    "aml_register": [_WORD.filter(lambda w: w not in ("sklearn", "spark", "pyfunc")).map(lambda w: f"--flavor {w}")],
    "aml_score": [_not_a_number(int).map(lambda w: f"--limit {w}")],
    "aml_deploy": [_not_a_number(int).map(lambda w: f"--port {w}")],
    "aml_invoke": [_not_a_number(float).map(lambda w: f"--timeout {w}")],
    "aml_sync": [_not_a_number(float).map(lambda w: f"--timeout {w}")],
}
_POSITIONAL = {
    "track": st.one_of(st.just(""), _WORD), "aml_register": _WORD, "aml_score": _WORD, "aml_deploy": _WORD,
    "aml_invoke": _WORD,
}


@st.composite
def malformed_lines(draw):
    magic = draw(st.sampled_from(MAGICS))
    parts = []
    if magic in _POSITIONAL:
        parts.append(draw(_POSITIONAL[magic]))
    if _BENIGN[magic]:
        parts += draw(st.lists(st.one_of(*_BENIGN[magic]), max_size=4))
    defects = [
        # unknown option: '--zq' is no prefix of a real option, so argparse cannot abbreviate to one
        _WORD.map(lambda w: f"--zq{w}"),
        _WORD.map(lambda w: f"'{w}"),  # unbalanced quote
    ]
    if magic in _NEEDS_VALUE:
        defects.append(st.sampled_from(_NEEDS_VALUE[magic]))  # last, so its value is missing
    defects += _BAD_TYPED_VALUE.get(magic, [])
    if magic in ("aml_unlink", "aml_panel", "aml_ui"):
        defects.append(_WORD)  # %aml_unlink takes no arguments; no run of the session has such a name
    parts.append(draw(st.one_of(*defects)))
    return magic, " ".join(p for p in parts if p)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(case=malformed_lines())
def test_generated_malformed_lines_end_in_one_line_and_change_nothing(
    linked_with_variables, shell, capsys, mlflow_server, case
):
    magic, line = case
    session = linked_with_variables
    before = _snapshot(session, shell, mlflow_server)
    _assert_one_line_usage_error(shell, capsys, _source(magic, line, None))
    assert _snapshot(session, shell, mlflow_server) == before
    assert "bad_input_cell_ran" not in shell.user_ns


def test_quoted_values_lose_their_quotes(linked, shell, mlflow_server):
    """IPython keeps quotes in magic arguments; the magics must not pass them on."""
    shell.run_cell_magic(
        "track", '"quoted run" --experiment "bad input quoted" --tags "team=data science" stage=\'dev\'', "x = 1"
    )
    run = mlflow_server.client().get_run(linked.last_run.run_id)
    assert run.info.run_name == "quoted run"
    assert mlflow_server.client().get_experiment(run.info.experiment_id).name == "bad input quoted"
    assert run.data.tags["team"] == "data science"
    assert run.data.tags["stage"] == "dev"
