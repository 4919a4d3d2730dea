"""The MLflow UI over a finished smoke study, as a researcher sees it, in headless Chromium.

A real `mlflow ui` on 127.0.0.1 serves the study's SQLite store; Chromium (Debian packages
chromium + chromium-driver, installed by .ci/run) is driven through ChromeDriver's W3C WebDriver
HTTP API with the standard library (no client library needed for a few commands). The tests
open the URLs the study printed at its end: its trials side by side (every trial's status,
validation metric and searched parameters *visible* on the page: inside the window, not cut
off, not covered by another panel), the best trial's page and its artifacts (the per-fold
validation curves, the predictions) and the study run's report. Screenshots are kept as test
artifacts in ``$KS_TEST_ARTIFACTS/browser`` (default ``test-artifacts/browser`` in the
repository); the test prints the folder.

The smoke study here runs with the packages of the ``dev`` extra hidden (`DEV_ONLY`): README's
smoke command installs the runtime dependencies only.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from study.record import Artifacts, Roles, Status, Tags
from study.view import ML_VIEW
from tests.study_helpers import ROOT, run_study, study_env

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Flags that work as root in a container with no network beyond loopback
# (no sandbox, no GPU, none of Chromium's background connections).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1920,1200"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifact_dir() -> Path:
    out = Path(os.environ.get("KS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


class WebDriver:
    """The few W3C WebDriver commands the test needs, against a local ChromeDriver."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                self._call("GET", "/status")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": CHROMIUM_ARGS}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())["value"]

    def _s(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        """Load ``url`` afresh (a URL differing in its #fragment only would keep the previous
        page's elements around while the new one renders)."""
        self._s("POST", "/url", {"url": "about:blank"})
        self._s("POST", "/url", {"url": url})

    def find(self, xpath: str) -> list[dict]:
        try:
            return self._s("POST", "/elements", {"using": "xpath", "value": xpath})
        except urllib.error.HTTPError:
            return []

    def wait(self, xpath: str, timeout: float = 90) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.find(xpath)
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"not on the page after {timeout} s: {xpath}\n{self.text()[:3000]}")

    def wait_text(self, text: str, timeout: float = 90) -> str:
        """The page's visible text, once it contains ``text``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            shown = self.text()
            if text in shown:
                return shown
            time.sleep(0.5)
        raise AssertionError(f"{text!r} not on the page after {timeout} s")

    def click(self, element: dict) -> None:
        self._s("POST", f"/element/{next(iter(element.values()))}/click", {})

    def click_text(self, text: str, timeout: float = 90) -> None:
        """Click the element showing exactly ``text`` once it is there and clickable (a tree
        that is still loading refuses clicks for a moment)."""
        deadline = time.time() + timeout
        while True:
            try:
                self.click(self.wait(_by_text(text), timeout=max(1.0, deadline - time.time()))[0])
                return
            except urllib.error.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def element_text(self, element: dict) -> str:
        return self._s("GET", f"/element/{next(iter(element.values()))}/text")

    def show(self, element: dict) -> None:
        """Scroll ``element`` to the middle of its scrolling panel (for the screenshot)."""
        self._s("POST", "/execute/sync", {
            "script": "arguments[0].scrollIntoView({block: 'center'})", "args": [element]})
        time.sleep(0.5)

    def text(self) -> str:
        return self._s("POST", "/execute/sync",
                       {"script": "return document.body.innerText", "args": []})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._s("GET", "/screenshot")))
        return path

    def quit(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def _by_text(text: str) -> str:
    return f"//*[normalize-space(text())='{text}']"


DEV_ONLY = ("pytest", "_pytest", "ruff", "pirlygenes", "psycopg2")
"""Modules only the ``dev`` extra installs (pyproject.toml); hidden from the smoke study."""


def _hide_dev_packages(folder: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes importing any `DEV_ONLY` module fail."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in DEV_ONLY:
        (folder / f"{name}.py").write_text(
            f"raise ImportError('{name} belongs to the dev extra; the study must not need it')\n")
    return folder


def _printed_url(stdout: str, after: str, base: str) -> str:
    """The URL printed on the line after the one starting with ``after``, moved from the
    printed UI address to the test's `mlflow ui`."""
    lines = stdout.splitlines()
    at = max(i for i, line in enumerate(lines) if line.startswith(after))
    url = lines[at + 1].strip()
    assert url.startswith("http://127.0.0.1:5000/#/"), url
    return base + url.removeprefix("http://127.0.0.1:5000")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished smoke study with its report (analysis.compare logs it to the parent run)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = ("headless Chromium not installed: apt-get install chromium chromium-driver "
                   "(.ci/run installs them)")
        if os.environ.get("KS_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("browser")
    out = root / "study"
    hidden = _hide_dev_packages(root / "no-dev-extra")
    proc = run_study(out, env={"PYTHONPATH": os.pathsep.join(
        [str(hidden), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{out / 'mlflow.db'}"
    report = subprocess.run([sys.executable, "-m", "analysis.compare", "--experiment", "smoke",
                             "--tracking-uri", uri, "--out", str(out / "report")], cwd=ROOT,
                            env=study_env(), capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return {"out": out, "uri": uri, "stdout": proc.stdout, "client": client,
            "experiment_id": experiment.experiment_id,
            "parent": next(r for r in runs if r.data.tags.get(Tags.ROLE) == Roles.STUDY),
            "trials": [r for r in runs if r.data.tags.get(Tags.ROLE) == Roles.TRIAL],
            "baselines": [r for r in runs if r.data.tags.get(Tags.ROLE) == Roles.BASELINE]}


@pytest.fixture(scope="module")
def ui(study: dict[str, Any]) -> str:
    """`mlflow ui` over the study's store, on a free port of 127.0.0.1."""
    port = _free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    log = (study["out"] / "mlflow-ui.log").open("w")
    proc = subprocess.Popen([str(mlflow_cli), "ui", "--backend-store-uri", study["uri"],
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=study["out"], stdout=log, stderr=subprocess.STDOUT,
                            env=study_env(), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # a loaded 2-core machine takes tens of seconds
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (study["out"] / "mlflow-ui.log").read_text()[-3000:]
            assert time.time() < deadline, "mlflow ui did not answer /health"
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> WebDriver:
    driver = WebDriver()
    try:
        yield driver
    finally:
        driver.quit()


VISIBLE_CELLS = """
const out = [];
document.querySelectorAll('div[role=row][row-index]').forEach(row => {
  row.querySelectorAll('[col-id]').forEach(cell => {
    const range = document.createRange();
    range.selectNodeContents(cell);
    const t = range.getBoundingClientRect();
    const y = (t.top + t.bottom) / 2;
    // visible: nothing cut off (no element of the cell wider than its box: an ellipsis), and
    // the text's both ends on screen, inside the cell, not covered by anything
    const cut = [cell, ...cell.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1);
    const shown = !cut && t.width > 0 && [t.left + 1, t.right - 1].every(x => {
      const e = document.elementFromPoint(x, y);
      return e !== null && (e === cell || cell.contains(e));
    });
    const link = cell.querySelector('a');
    out.push({row: row.getAttribute('row-index'), col: cell.getAttribute('col-id'),
              text: (link ? link.innerText : cell.innerText).trim(), shown: shown});
  });
});
return out;
"""


def _table(browser: WebDriver) -> dict[str, dict[str, tuple[str, bool]]]:
    """The runs table as rendered: {run name: {column id: (text, visible)}}."""
    rows: dict[str, dict[str, tuple[str, bool]]] = {}
    for cell in browser._s("POST", "/execute/sync", {"script": VISIBLE_CELLS, "args": []}):
        rows.setdefault(cell["row"], {})[cell["col"]] = (cell["text"], cell["shown"])
    return {cols["attributes.`Run Name`"][0]: cols for cols in rows.values()
            if "attributes.`Run Name`" in cols}


def _seen(row: dict[str, tuple[str, bool]], col: str) -> str:
    text, shown = row[col]
    assert shown, f"{col} ({text!r}) is not visible"
    return text


def test_printed_url_shows_every_trial_side_by_side(study: dict[str, Any], ui: str,
                                                    browser: WebDriver) -> None:
    """The URL the study printed opens its trials in one table: for every trial its status
    (a trial stopped early by ASHA says so), val_auc and the searched lr and alpha, all
    visible at once (the study's own run and the baselines are not rows)."""
    shots = _artifact_dir()
    print(f"\nscreenshots: {shots}")
    url = _printed_url(study["stdout"], "then open the trials side by side", ui)
    assert ML_VIEW in url
    browser.open(url)
    names = sorted(r.info.run_name for r in study["trials"])
    assert len(names) == 4
    deadline = time.time() + 120
    while not set(names) <= set(table := _table(browser)) and time.time() < deadline:
        time.sleep(1)
    time.sleep(1)  # let the columns settle at their widths before the picture
    table = _table(browser)
    browser.screenshot(shots / "1-trials-side-by-side.png")
    assert set(names) <= set(table), (names, sorted(table))
    statuses = set()
    for run in study["trials"]:
        row = table[run.info.run_name]
        status = _seen(row, "tags.`ks.status`")
        assert status == run.data.tags[Tags.STATUS]
        statuses.add(status)
        assert float(_seen(row, "metrics.`val_auc`")) == pytest.approx(
            run.data.metrics["val_auc"], rel=1e-9)
        for param in ("lr", "alpha"):
            assert float(_seen(row, f"params.`{param}`")) == pytest.approx(
                float(run.data.params[param]), rel=1e-9)
    assert Status.STOPPED_EARLY in statuses and Status.COMPLETED in statuses, statuses
    others = [r.info.run_name for r in [study["parent"], *study["baselines"]]]
    assert others and not set(others) & set(table), sorted(table)
    assert "Model training" in browser.text()  # the runs table, not the GenAI overview


def test_best_trial_page_shows_alpha_and_val_metric(study: dict[str, Any], ui: str,
                                                    browser: WebDriver) -> None:
    """The best trial's page, from the URL the study printed: its params and metrics (the
    run page, not MLflow 3's GenAI view), the per-fold curves and the predictions."""
    shots = _artifact_dir()
    url = _printed_url(study["stdout"], "the best trial's page", ui)
    assert url.endswith(f"?{ML_VIEW}")
    run_id = url.split("/runs/", 1)[1].split("?", 1)[0]
    trial = study["client"].get_run(run_id)
    assert trial.data.tags[Tags.STATUS] == Status.COMPLETED
    browser.open(url)
    alpha_cell = browser.wait(_by_text("alpha"))[0]
    browser.show(browser.wait(_by_text("val_auc"))[0])
    browser.screenshot(shots / "2-best-trial-metrics.png")
    browser.show(alpha_cell)
    browser.screenshot(shots / "2-best-trial-params.png")
    text = browser.text()
    assert trial.info.run_name in text and "Evaluation runs" not in text
    lines = text.splitlines()
    alpha = lines[lines.index("alpha") + 1]
    assert float(alpha) == pytest.approx(float(trial.data.params["alpha"]))
    val = lines[lines.index("val_auc") + 1]
    assert float(val) == pytest.approx(trial.data.metrics["val_auc"])

    browser.open(url.replace(f"/runs/{run_id}?", f"/runs/{run_id}/artifacts?"))
    for name in (Artifacts.CURVES, Artifacts.PREDICTIONS_CSV, Artifacts.PREDICTIONS):
        browser.wait(_by_text(name))
    browser.click_text(Artifacts.CURVES)
    browser.wait(f"//img[@alt='{Artifacts.CURVES}']")
    time.sleep(1)  # let the image paint before the screenshot
    browser.screenshot(shots / "3-trial-curves.png")
    browser.click_text(Artifacts.PREDICTIONS_CSV)
    browser.wait_text("SYN-")  # the CSV previews as a table of the cases
    browser.screenshot(shots / "4-trial-predictions-csv.png")


def test_parent_run_has_params_and_the_html_report(study: dict[str, Any], ui: str,
                                                   browser: WebDriver) -> None:
    shots = _artifact_dir()
    parent, exp = study["parent"], study["experiment_id"]
    assert "report/report.html" in {a.path for a in study["client"].list_artifacts(
        parent.info.run_id, Artifacts.REPORT_DIR)}
    assert parent.data.params.get("study.search.alpha", "").startswith("float")
    page = f"{ui}/#/experiments/{exp}/runs/{parent.info.run_id}"
    browser.open(f"{page}?{ML_VIEW}")
    browser.show(browser.wait(_by_text("study.search.alpha"))[0])
    browser.screenshot(shots / "5-parent-params.png")
    browser.open(f"{page}/artifacts?{ML_VIEW}")
    browser.click_text(Artifacts.REPORT_DIR)
    browser.click_text("report.html")
    browser.wait("//iframe")  # MLflow previews HTML artifacts in a frame
    time.sleep(1)
    browser.screenshot(shots / "6-parent-report-html.png")
