"""End to end: JupyterLab on loopback, examples/panel.ipynb run in Debian's Chromium.

The panel must render as live widgets in a real frontend: the header shows the tracking
URI, rows appear as tracked cells end, a running cell's row shows its metrics change
before the cell ends (read from the page), clicking a run shows its metrics, the compare
view renders, a sweep is one row that unfolds and compares its children, and `%aml_ui`'s
IFrame loads MLflow's UI drawing the session's runs.

One JupyterLab and one page for the module (starting them is most of the time); the tests
run in order over the one notebook run. Screenshots are kept in `test-artifacts/browser/`
(or `$DBXML_TEST_ARTIFACTS/browser/`), not in pytest's temporary folders, which later pytest
runs delete; with DBXML_UPDATE_SCREENSHOT=1 the panel's one replaces docs/panel.png (the README's).
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import free_port, wait_http

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "panel.ipynb"
README_SCREENSHOT = ROOT / "docs" / "panel.png"
SCREENSHOTS = Path(os.environ.get("DBXML_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "browser"
# JupyterLab, a kernel and MLflow on a busy 2-core machine: minutes, not seconds.
STEP_TIMEOUT_MS = 240_000


def _lab_settings(settings_dir: Path) -> None:
    """No dialog or pop-up in the way: start the notebook's kernel, no news or update notes."""
    for extension, name, settings in (
        # No windowing: every cell's output stays in the page, where the test reads it.
        ("notebook-extension", "tracker", '{"autoStartDefaultKernel": true, "windowingMode": "none"}'),
        ("apputils-extension", "notification", '{"fetchNews": "false", "checkForUpdates": false}'),
    ):
        path = settings_dir / "@jupyterlab" / extension / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(settings)


def _shut_down_kernels(base: str, token: str) -> None:
    """Kernels shut down (not killed) run their exit hooks: the `mlflow server` of %aml_ui,
    in its own process group, stops with its kernel."""
    import json
    import urllib.request

    def call(method: str, path: str):
        request = urllib.request.Request(f"{base}{path}?token={token}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body else None

    try:
        for kernel in call("GET", "/api/kernels"):
            call("DELETE", f"/api/kernels/{kernel['id']}")
    except OSError:
        pass  # the server is gone already; the process-group kill below still runs


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """JupyterLab serving a copy of the example in an empty folder; its process group is killed after."""
    tmp_path = tmp_path_factory.mktemp("browser")
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(EXAMPLE, root / EXAMPLE.name)
    config = tmp_path / "jupyter"
    _lab_settings(config / "lab" / "user-settings")
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(config / "lab" / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(config / "lab" / "workspaces"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "jupyter.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            # IdentityProvider.token: ServerApp.token still works but is deprecated in jupyter_server 2.
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            # Containers often run tests as root; the server refuses that unless told.
            f"--ServerApp.allow_root={os.geteuid() == 0}",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=root,
    )
    log.close()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/status?token={token}", timeout=240, process=process)
        yield base, token, root, tmp_path
    finally:
        _shut_down_kernels(base, token)
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
        try:  # kernels started by the server are in its group
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def notebook_page(jupyter_lab):
    """The example opened in Chromium, every cell started with Run All."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    from playwright.sync_api import expect, sync_playwright

    base, token, root, _ = jupyter_lab
    folder = SCREENSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # only this run's screenshots
        old.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            expect.set_options(timeout=STEP_TIMEOUT_MS)
            page.goto(f"{base}/lab/tree/{EXAMPLE.name}?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for()
            # Cells sent before the kernel's websocket is connected are dropped: wait for the
            # status bar to report the kernel itself idle ("Initializing"/"Connecting" before).
            expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible()
            page.locator(".lm-MenuBar-item", has_text="Run").click()
            page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
            yield page, root, folder
        finally:
            browser.close()


# The status and metrics of the runs table's row of a run, read in one step from the DOM.
READ_ROW = """name => {
  for (const row of document.querySelectorAll('.widget-hbox')) {
    const button = row.querySelector(':scope > button.widget-button');
    if (!button || button.textContent.trim() !== name) continue;
    const labels = row.querySelectorAll(':scope > .widget-label');
    return [row.querySelector(':scope > .widget-html').textContent.trim(), labels[2].textContent.trim()];
  }
  return null;
}"""


def test_running_cell_shows_changing_metrics_in_the_page(notebook_page):
    page, root, folder = notebook_page
    started = time.monotonic()
    seen = []
    deadline = started + 2 * STEP_TIMEOUT_MS / 1000  # includes the kernel start and the first cells
    while time.monotonic() < deadline:
        row = page.evaluate(READ_ROW, "live")
        if row is not None and row[0] != "RUNNING":
            break
        if row is not None and row[1] and (not seen or seen[-1] != row[1]):
            seen.append(row[1])
            if len(seen) == 2:
                page.screenshot(path=str(folder / "live.png"))
        time.sleep(0.1)
    assert row is not None and row[0] == "FINISHED", row
    live_values = {text for text in seen if "train_loss=" in text}
    assert len(live_values) >= 2, seen  # at least two values shown while the cell ran
    assert all(text.rstrip().split()[-2] == "step" for text in live_values), seen


def test_compare_view_renders_for_the_runs_named(notebook_page):
    from playwright.sync_api import expect

    page, root, folder = notebook_page
    view = page.locator(".dbxml-compare").last
    expect(view).to_contain_text("Comparing 3 runs")
    expect(view).to_contain_text("Params that differ")
    expect(view.locator("td", has_text="learning_rate").first).to_be_visible()
    expect(view.locator("img")).to_have_count(3)  # accuracy, loss, val_loss: one overlaid plot each
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(folder / "panel.png"))
    assert (folder / "panel.png").stat().st_size > 10_000
    if os.environ.get("DBXML_UPDATE_SCREENSHOT"):
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(folder / "panel.png", README_SCREENSHOT)


def test_aml_ui_iframe_loads_mlflow_ui_serving_the_session_runs(notebook_page):
    from playwright.sync_api import expect

    page, root, folder = notebook_page
    iframe = page.locator("iframe.dbxml-mlflow-ui")
    # Starting `mlflow server` takes minutes on a loaded machine.
    expect(iframe).to_be_attached(timeout=2 * STEP_TIMEOUT_MS)
    src = iframe.get_attribute("src")
    base = src.split("/#/")[0]
    assert base.startswith("http://127.0.0.1:") and "/#/experiments/" in src
    # The IFrame loaded MLflow's own UI (a React app) from that server, which fetched the
    # session's runs and drew them: their names, read inside the frame.
    frame = page.frame_locator("iframe.dbxml-mlflow-ui")
    expect(frame.locator("script[src*='static-files']").first).to_be_attached()
    for name in ("baseline", "tuned", "deeper", "live", "sweep"):
        expect(frame.get_by_text(name, exact=True).first).to_be_visible()
    iframe.screenshot(path=str(folder / "mlflow-ui.png"))
    print(f"screenshots in {folder}")


def test_panel_rows_header_and_inspector(notebook_page):
    """Last: a click reaches the kernel only once it is idle (comm messages wait for the cells)."""
    from playwright.sync_api import expect

    page, root, folder = notebook_page
    for name in ("baseline", "tuned", "deeper", "live"):
        expect(page.locator("button.widget-button", has_text=name).first).to_be_visible()
    header = page.locator(".widget-html", has_text="primary:").first
    expect(header).to_contain_text(f"sqlite:///{root.resolve() / 'mlflow.db'}")
    expect(header).to_contain_text("mode default")

    page.locator("button.widget-button", has_text="tuned").first.click()
    inspector = page.locator(".widget-tab").first
    expect(inspector).to_be_visible()
    # Exact cells: the tags tab also holds the run's %%track options (dbxml.track), which name them.
    expect(inspector.locator("td", has_text=re.compile(r"^val_loss$"))).to_be_visible()
    expect(inspector.locator("td", has_text=re.compile(r"^accuracy$"))).to_be_visible()
    expect(inspector.locator("img").first).to_be_visible()  # the val_loss history plot
    page.screenshot(path=str(folder / "inspector.png"))

    # The sweep: one row (its children folded under it), its best child; the toggle shows the
    # children's rows, Compare opens the compare view on them.
    group = page.locator(".dbxml-run-group").first
    expect(group).to_contain_text("2 runs")
    expect(group).to_contain_text("best accuracy=0.95 [learning_rate=0.3]")
    child = group.locator("button.widget-button", has_text="sweep[learning_rate=0.1]")
    expect(child).to_be_hidden()
    group.locator("button.widget-button", has_text="2 runs").click()
    expect(child).to_be_visible()
    group.locator("button.widget-button", has_text="Compare").click()
    view = page.locator(".dbxml-compare").last
    expect(view).to_contain_text("Comparing 2 runs: sweep[learning_rate=0.3], sweep[learning_rate=0.1]")
    group.scroll_into_view_if_needed()
    page.screenshot(path=str(folder / "sweep.png"))
