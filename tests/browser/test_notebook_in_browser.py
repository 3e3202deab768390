"""Notebook 06 in a real browser: JupyterLab on 127.0.0.1, driven by headless Chromium (root only).

What nbclient cannot see is what the person sees: whether the widgets' JavaScript renders them,
whether an error is one red line, whether a figure is an image. This test starts JupyterLab on a
free port of 127.0.0.1 with a token, in a temporary root holding a copy of
notebooks/06-container-magic.ipynb, opens it in Debian's chromium through chromium-driver and
Selenium, runs Run → Run All Cells, and asserts on the page. It equals, by hand::

    jupyter lab --no-browser --allow-root --ip 127.0.0.1 --port PORT --IdentityProvider.token=T
    chromium --headless --no-sandbox http://127.0.0.1:PORT/lab/tree/06-container-magic.ipynb?token=T

The test's copy ends with three cells of its own: a pull from the local registry (the progress
bar), a cell whose container exits 3, and a cell printing a marker that must never run. At the
end it clicks the dashboard's "refresh" button and watches the kernel answer. Screenshots of the
page at the cells it asserts on are kept in the test's tmp dir, and copied to
$CONTAINED_ARTIFACTS when that is set.
"""

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import free_port, needs_root, remove_cgroup_parent
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "06-container-magic.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the network flags Chromium keeps calling Google's hosts, which this machine refuses.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]
SERVER_START = 40  # seconds for JupyterLab to answer /api/status
PAGE_LOAD = 40  # seconds for the notebook to open with an idle kernel
RUN_ALL = 120  # seconds for every cell up to the failing one (15-25 s here)
MARKER = "this cell must never run"
FAILING_CELL = "%%container busybox\nexit 3"


def missing_tools() -> str | None:
    """Why the test cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"needs {path} (apt-get install {package})"
    for module, package in (("selenium", "selenium"), ("jupyterlab", "jupyterlab")):
        if importlib.util.find_spec(module) is None:
            return f"needs the Python package {package} (pip install -e '.[test]')"
    if not (shutil.which("skopeo") and shutil.which("docker-registry")):
        return "needs skopeo and docker-registry (apt-get install skopeo docker-registry)"
    return None


MISSING = missing_tools()
pytestmark = [pytest.mark.browser, needs_root,
              pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


# ---------------------------------------------------------------------------------------------
# The notebook, JupyterLab and the browser


def notebook_copy(directory: Path, registry_address: str) -> Path:
    """Notebook 06 with the test's three cells appended, written into `directory`."""
    book = nbformat.read(NOTEBOOK, as_version=4)
    book.cells += [
        new_code_cell(f"%container pull {registry_address}/library/busybox"),
        new_code_cell(FAILING_CELL),
        # Split so that the marker is in the cell's output only if the cell ran.
        new_code_cell(f"print({MARKER[:9]!r} + {MARKER[9:]!r})"),
    ]
    path = directory / NOTEBOOK.name
    nbformat.write(book, path)
    return path


def lab_settings(directory: Path) -> None:
    """User settings: every cell in the DOM (no windowing), and no news or update toasts."""
    overrides = {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {
            "fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    }
    for plugin, values in overrides.items():
        package, name = plugin.rsplit("/", 1)
        path = directory / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def server_config(directory: Path) -> None:
    """Nothing may leave 127.0.0.1: no news feed, no update check, no PyPI extension manager."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"terminals_enabled": False},
        "LabApp": {"news_url": None, "extension_manager": "readonly",
                   "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"},
    }))


def lab_environment(base: Path, home: Path, parent: str) -> dict:
    """The server's (and so the kernel's) environment: our home, our cgroup parent, and
    Jupyter's own directories in `base` so nothing of the machine's user leaks in or out."""
    for name in ("config", "data", "runtime", "settings", "workspaces", "ipython"):
        (base / name).mkdir(parents=True, exist_ok=True)
    server_config(base / "config")
    lab_settings(base / "settings")
    return {**os.environ, "CONTAINED_HOME": str(home), "CONTAINED_CGROUP_PARENT": parent,
            "PYTHONPATH": str(ROOT), "JUPYTER_CONFIG_DIR": str(base / "config"),
            "JUPYTER_DATA_DIR": str(base / "data"), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
            "IPYTHONDIR": str(base / "ipython")}


class Lab:
    """A JupyterLab server on 127.0.0.1:port, stopped (and its kernels with it) by `stop`."""

    def __init__(self, root: Path, notebook: Path, env: dict, log: Path):
        self.notebook = notebook
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.env = env
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}"],
            env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            return json.loads(body) if body else None

    def wait_until_ready(self, log: Path) -> None:
        deadline = time.monotonic() + SERVER_START
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter lab exited: {log.read_text()[-2000:]}")
            try:
                self.api("/api/status")
                return
            except OSError:
                time.sleep(0.2)  # polled until it answers, with a deadline
        raise AssertionError(f"jupyter lab did not answer in {SERVER_START} s: "
                             f"{log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Shut down through the API (kernels end cleanly), then by signal; then kill anything
        still running with our home in its environment (kernels live in sessions of their own)."""
        try:
            for kernel in self.api("/api/kernels") or []:
                self.api(f"/api/kernels/{kernel['id']}", method="DELETE")
            self.api("/api/shutdown", method="POST")
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()
        kill_processes_with("environ", f"CONTAINED_HOME={self.env['CONTAINED_HOME']}")


def kill_processes_with(field: str, entry: str) -> list[int]:
    """SIGKILL the processes whose /proc/PID/`field` (environ or cmdline) holds `entry`: only
    ours can (our home and our browser profile are unique temporary paths). Returns them."""
    wanted = entry.encode()
    killed = []
    for process in Path("/proc").iterdir():
        if not process.name.isdigit() or int(process.name) == os.getpid():
            continue
        try:
            if wanted in (process / field).read_bytes().split(b"\0"):
                os.kill(int(process.name), signal.SIGKILL)
                killed.append(int(process.name))
        except (OSError, ProcessLookupError):
            pass  # gone meanwhile, or not readable: not ours
    return killed


def start_chromium(base: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={base / 'chromium-profile'}"]:
        options.add_argument(flag)
    # Both paths given: Selenium Manager (which would download a driver) is never called.
    service = Service(executable_path=CHROMEDRIVER, log_output=str(base / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture
def lab(tmp_path, registry):
    """JupyterLab serving a temporary root with the test's copy of notebook 06; its containers,
    kernels and cgroup parent are gone afterwards."""
    from contained.images.busybox import import_busybox
    from contained.images.store import Store

    root, home = tmp_path / "lab", tmp_path / "home"
    root.mkdir()
    import_busybox(Store(home))
    notebook = notebook_copy(root, registry.address)
    parent = f"contained-test-browser-{os.getpid()}"
    env = lab_environment(tmp_path / "jupyter", home, parent)
    server = Lab(root, notebook, env, tmp_path / "jupyterlab.log")
    try:
        server.wait_until_ready(tmp_path / "jupyterlab.log")
        yield server
    finally:
        server.stop()
        subprocess.run([sys.executable, "-c", CLEAN_UP], env=env, check=False)
        from contained import workbook

        workbook.unmount_all(root, echo=False)
        remove_cgroup_parent(parent)


CLEAN_UP = ("from contained.runtime import container\n"
            "for c in container.containers(): container.remove(c.id, force=True)\n"
            "container.gc()\n")


@pytest.fixture
def chromium(tmp_path):
    """Headless Chromium through chromedriver; quit after, and killed if quitting failed."""
    driver = start_chromium(tmp_path)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            kill_processes_with("cmdline", f"--user-data-dir={tmp_path / 'chromium-profile'}")


# ---------------------------------------------------------------------------------------------
# Reading the page

#: Every cell as the page shows it: its input, prompt, output text, and what its outputs hold.
CELLS_SCRIPT = """
return Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell'))
  .map(cell => {
    const outputs = cell.querySelector('.jp-OutputArea');
    const all = sel => outputs ? Array.from(outputs.querySelectorAll(sel)) : [];
    return {
      input: (cell.querySelector('.cm-content') || {}).innerText || '',
      prompt: (cell.querySelector('.jp-InputArea-prompt') || {}).innerText || '',
      text: outputs ? outputs.innerText : '',
      stderr: all('[data-mime-type="application/vnd.jupyter.stderr"]').map(e => e.innerText),
      widgets: all('.jupyter-widgets').length,
      progress: all('.widget-hprogress .progress-bar').map(bar => ({
        style: Array.from(bar.classList).join(' '), width: bar.style.width})),
      buttons: all('.jupyter-widgets button').map(b => b.innerText.trim()),
      images: all('img').map(i => ({src: i.src.slice(0, 22), width: i.naturalWidth})),
    };
  });
"""


def cells(driver) -> list[dict]:
    return driver.execute_script(CELLS_SCRIPT)


def cell_with(found: list[dict], source_start: str) -> dict:
    matching = [cell for cell in found if cell["input"].startswith(source_start)]
    assert matching, f"no cell starts with {source_start!r}"
    return matching[0]


def open_notebook(driver, lab: Lab, cell_count: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
    idle = '.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]'
    WebDriverWait(driver, PAGE_LOAD).until(
        lambda d: len(cells(d)) == cell_count and d.find_elements("css selector", idle),
        "the notebook did not open with an idle kernel")


def run_all_from_the_menu(driver) -> None:
    """Run → Run All Cells, as a person would click it. The command marks every code cell
    queued ("[*]") at once; if none is, the click was lost (seen once on a loaded machine:
    nothing ran), so close the menu and open it again, as a person would."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 10)
    for _ in range(3):
        wait.until(until.element_to_be_clickable(
            ("xpath", "//li[contains(@class,'lm-MenuBar-item')][normalize-space()='Run']")),
            "no Run menu").click()
        wait.until(until.element_to_be_clickable(
            ("css selector", 'li.lm-Menu-item[data-command="runmenu:run-all"]')),
            "no Run All Cells in the Run menu").click()
        try:
            WebDriverWait(driver, 5, poll_frequency=0.1).until(
                lambda d: any(re.fullmatch(r"\[(\*|\d+)\]:", cell["prompt"].strip())
                              for cell in cells(d)))
            return
        except TimeoutException:
            driver.find_element("css selector", "body").send_keys(Keys.ESCAPE)
    raise AssertionError("Run → Run All Cells did not start the notebook")


def run_finished(driver) -> list[dict] | bool:
    """The cells, once Run All has run (a cell has an execution count), nothing is queued or
    running any more ("[*]"), and every widget view has rendered (no "Loading widget…")."""
    found = cells(driver)
    started = any(re.fullmatch(r"\[\d+\]:", cell["prompt"].strip()) for cell in found)
    busy = any("*" in cell["prompt"] for cell in found)
    loading = any("Loading widget" in cell["text"] for cell in found)
    return found if started and not busy and not loading else False


def close_the_file_browser(driver) -> None:
    """More room for the notebook in the screenshots: click the open side panel's tab."""
    for tab in driver.find_elements("css selector",
                                    ".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current"):
        tab.click()


#: Where the screenshots look: the cell each one starts at.
VIEWS = {"output": '%%container busybox\necho "hostname', "stats": "%%container busybox --cpus",
         "dashboard": "%container dashboard", "end": "%container pull"}


def save_screenshots(driver, directory: Path, views: dict[str, str]) -> list[Path]:
    """The page scrolled to each view's cell; copied to $CONTAINED_ARTIFACTS too when set."""
    shots = []
    for name, source in views.items():
        driver.execute_script("""
            const cell = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'))
              .find(c => (c.querySelector('.cm-content') || {}).innerText.startsWith(arguments[0]));
            if (cell) cell.scrollIntoView({block: 'start'});""", source)
        path = directory / f"notebook-06-{name}.png"
        driver.save_screenshot(str(path))
        shots.append(path)
    artifacts = os.environ.get("CONTAINED_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        for path in shots:
            shutil.copy(path, artifacts)
    print("screenshots:", *shots)
    return shots


def click_dashboard_refresh(driver) -> None:
    driver.execute_script("""
        const cell = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'))
          .find(c => (c.querySelector('.cm-content') || {}).innerText.startsWith(arguments[0]));
        cell.scrollIntoView({block: 'start'});""", "%container dashboard")
    dashboard = [element for element in driver.find_elements("css selector", ".jp-Cell")
                 if element.find_elements("css selector", ".widget-gridbox")]
    dashboard[0].find_element("css selector", 'button[title="refresh"]').click()


# ---------------------------------------------------------------------------------------------
# The test


def test_run_all_in_a_browser_shows_outputs_live_widgets_a_figure_and_stops_at_one_line(
        lab, chromium, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    expected_cells = len(nbformat.read(lab.notebook, as_version=4).cells)
    try:
        open_notebook(chromium, lab, expected_cells)
        close_the_file_browser(chromium)
        run_all_from_the_menu(chromium)
        found = WebDriverWait(chromium, RUN_ALL, poll_frequency=0.5).until(
            run_finished, f"Run All did not finish in {RUN_ALL} s: a cell still queued or "
            "running ([*]), or a widget still 'Loading widget…' (see the screenshots)")
    finally:
        save_screenshots(chromium, tmp_path, VIEWS)
    # Run All stops at the first failure: the last cell that ran must be the test's failing one.
    ran = [cell for cell in found if re.fullmatch(r"\[\d+\]:", cell["prompt"].strip())]
    assert ran[-1]["input"] == FAILING_CELL, \
        f"Run All stopped at another cell: {ran[-1]['input']!r}: {ran[-1]['text'][:1000]}"

    # The %%container output: the container's own hostname, not the host's.
    hostname = re.search(r"^hostname: (\S+)$", cell_with(found, VIEWS["output"])["text"],
                         re.MULTILINE)
    assert hostname and hostname.group(1) != socket.gethostname()

    # The failing cell: one line, no traceback, and the cell after it never ran.
    failing = cell_with(found, FAILING_CELL)
    error = "".join(failing["stderr"]).strip()
    assert re.fullmatch(r"\w+: .*exited with status 3", error), error
    assert "Traceback" not in failing["text"] and len(failing["text"].strip().splitlines()) == 1
    if "ContainerFailed" in vars(importlib.import_module("contained.jupyter.magics")):
        assert error == "ContainerFailed: exited with status 3"
    marker = cell_with(found, "print(")
    assert MARKER not in marker["text"] and marker["prompt"].strip() == "[ ]:"

    # The pull's progress bar and the dashboard are widget views, not "Loading widget…" (which
    # run_finished waits out) nor their text repr (HBox(children=...)).
    pull = cell_with(found, "%container pull")
    assert pull["progress"] == [{"style": "progress-bar progress-bar-success", "width": "100%"}]
    assert "HBox(" not in pull["text"]
    dashboard = cell_with(found, "%container dashboard")
    assert dashboard["widgets"] > 0 and "VBox(" not in dashboard["text"]
    assert "refresh" in dashboard["buttons"] and "stop" in dashboard["buttons"]
    web_row = re.compile(r"^web\s+busybox:latest\s+running$", re.MULTILINE)
    assert web_row.search(dashboard["text"])

    # The --stats figure is an image the browser decoded.
    stats = cell_with(found, VIEWS["stats"])
    assert [image for image in stats["images"]
            if image["src"] == "data:image/png;base64," and image["width"] > 0]

    # Live: a click on "refresh" reaches the kernel, which re-reads the containers; the
    # notebook's clean-up cells removed "web" since the dashboard was drawn.
    click_dashboard_refresh(chromium)
    try:
        WebDriverWait(chromium, 15, poll_frequency=0.2).until(
            lambda d: not web_row.search(cell_with(cells(d), "%container dashboard")["text"]),
            "the dashboard's refresh button did not update it from the kernel")
    finally:
        save_screenshots(chromium, tmp_path, {"dashboard-refreshed": VIEWS["dashboard"]})
