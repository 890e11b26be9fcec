"""End to end: JupyterLab on loopback, examples/panel.ipynb run in Debian's Chromium.

The panel must render as live widgets in a real frontend: the header shows the tracking
URI, rows appear as tracked cells end, and clicking a run shows its metrics.
"""

import os
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
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "panel.ipynb"
# JupyterLab, a kernel and MLflow on a busy 2-core machine: minutes, not seconds.
STEP_TIMEOUT_MS = 240_000


def _lab_settings(settings_dir: Path) -> None:
    """No dialog or pop-up in the way: start the notebook's kernel, no news or update notes."""
    for extension, name, settings in (
        ("notebook-extension", "tracker", '{"autoStartDefaultKernel": true}'),
        ("apputils-extension", "notification", '{"fetchNews": "false", "checkForUpdates": false}'),
    ):
        path = settings_dir / "@jupyterlab" / extension / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(settings)


@pytest.fixture
def jupyter_lab(tmp_path):
    """JupyterLab serving a copy of the example in an empty folder; its process group is killed after."""
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
        yield base, token, root
    finally:
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


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium")
def test_panel_runs_in_jupyterlab(jupyter_lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, token, root = jupyter_lab
    started = time.monotonic()
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

            # The rows arrive while the cells run, through the live widget.
            for name in ("baseline", "tuned", "deeper"):
                expect(page.locator("button.widget-button", has_text=name)).to_be_visible()
            header = page.locator(".widget-html", has_text="primary:").first
            expect(header).to_contain_text(f"sqlite:///{root.resolve() / 'mlflow.db'}")
            expect(header).to_contain_text("mode default")

            page.locator("button.widget-button", has_text="tuned").click()
            inspector = page.locator(".widget-tab")
            expect(inspector).to_be_visible()
            expect(inspector.locator("td", has_text="val_loss")).to_be_visible()
            expect(inspector.locator("td", has_text="accuracy")).to_be_visible()
            expect(inspector.locator("img").first).to_be_visible()  # the val_loss history plot
            page.screenshot(path=str(tmp_path / "panel.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "panel.png").stat().st_size > 10_000
    print(f"browser steps took {time.monotonic() - started:.1f}s; screenshot {tmp_path / 'panel.png'}")
