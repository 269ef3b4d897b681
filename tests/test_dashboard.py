"""The monitoring page: :func:`render_dashboard`'s HTML, and the live page in a real browser.

The unit tests check that every figure of the stats is on the page under its key path with its exact
value, that data is escaped, and that a service without data yet renders. The browser test runs the
service as in production (a real redis-server, uvicorn on 127.0.0.1, the simulator posting a test
day over HTTP), opens ``/dashboard`` in headless Chromium, watches it update itself, and checks that
it shows exactly the figures of ``GET /v1/stats``; it saves a screenshot (``dashboard.png`` under
``$RL_LIB_TEST_ARTIFACTS``, default ``results/test-artifacts/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from live import uvicorn_thread

from rl_lib.inference import export_onnx
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.serving.dashboard import render_dashboard
from rl_lib.training import train

REPO = Path(__file__).parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("RL_LIB_TEST_ARTIFACTS") or REPO / "results" / "test-artifacts")
EXPERIMENT = """\
name: agent-vs-insertion
unit: booking
arms:
  - {name: agent, policy: model, weight: 0.5}
  - {name: control, policy: insertion, weight: 0.5}
"""
ARMS = ("agent", "control")
SPEED = 2400.0  # simulated minutes per real minute: the test day's decisions take about 13 s
TIMEOUT_S = 60.0


# ------------------------------------------------------------------ helpers
def flatten(stats: dict, prefix: str = "") -> dict[str, object]:
    """Every leaf of the stats under its dotted key path (an empty mapping has no leaf)."""
    leaves: dict[str, object] = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            leaves.update(flatten(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


class _Figures(HTMLParser):
    """``data-stat`` -> [(data-value, visible text), ...] of a page (attributes and text unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, list[tuple[str, str]]] = {}
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if "data-stat" in attrs:
            self._open = [attrs["data-stat"], attrs["data-value"], ""]

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2] += data

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None:
            path, value, text = self._open
            self.figures.setdefault(path, []).append((value, text))
            self._open = None


def figures(page: str) -> dict[str, list[tuple[str, str]]]:
    parser = _Figures()
    parser.feed(page)
    return parser.figures


def kpi(mean, low, high, n) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n}


def sample_stats(arm: str = "agent", version: str = "run-1:abc123") -> dict:
    """Stats of the shape of DispatchService.stats(): two arms, one with refusals only."""
    return {
        "decisions_last_minute": {"by_arm": {arm: 41, "control": 37},
                                  "by_policy": {"model": 40, "fallback": 1, "insertion": 37}},
        "decisions_in_window": 1234,
        "latency_ms": {"p50": 1.23456, "p95": 3.5, "p99": np.float64(7.891)},
        "arms": {
            arm: {"assignment_rate": kpi(0.9, 0.8, 0.95, 80),
                  "completion_rate": kpi(0.8734, 0.8, 0.92, 78), "on_time_rate": kpi(0.75, 0.6, 0.85, 60),
                  "deadhead_km": kpi(np.float64(4.256), 3.9, 4.7, 60)},
            "control": {"assignment_rate": kpi(0.0, 0.0, 0.0, 3),
                        "completion_rate": kpi(None, None, None, 0), "on_time_rate": kpi(None, None, None, 0),
                        "deadhead_km": kpi(None, None, None, 0)},
        },
        "model_version": version,
        "model_registry_version": "v0002",
        "model_ready": True,
        "model_backend": "onnx",
        "model_swaps": 1,
        "model_load_failures": 1,
        "model_update_error": "v0003 not loaded, v0002:run-1:abc123 still decides: sha256 mismatch",
        "experiment": "agent-vs-insertion",
        "stream_length": {"decisions": 1234, "outcomes": 1100},
        "spool_backlog": 0,
        "log": {"appended": 2334, "spooled": 2, "replayed": 2, "duplicates": 0, "redis_errors": 1},
    }  # fmt: skip


def empty_stats() -> dict:
    """A fresh service whose model did not load and whose Redis is away."""
    return {
        "decisions_last_minute": {"by_arm": {}, "by_policy": {}},
        "decisions_in_window": 0,
        "latency_ms": {"p50": None, "p95": None, "p99": None},
        "arms": {},
        "model_version": None,
        "model_registry_version": None,
        "model_ready": False,
        "model_backend": None,
        "model_swaps": 0,
        "model_load_failures": 0,
        "model_update_error": None,
        "experiment": "model-only",
        "stream_length": {"decisions": None, "outcomes": None},
        "spool_backlog": 0,
        "log": {"appended": 0, "spooled": 0, "replayed": 0, "duplicates": 0, "redis_errors": 0},
    }


def assert_shows_exactly(shown: dict[str, list[str]], stats: dict) -> None:
    """Every leaf of ``stats`` is shown, each time with its exact JSON value, and nothing else is."""
    expected = {path: json.dumps(value) for path, value in flatten(stats).items()}
    assert sorted(shown) == sorted(expected)
    wrong = {path: (v, expected[path]) for path, v in shown.items() if set(v) != {expected[path]}}
    assert not wrong, f"shown (values, expected): {wrong}"


# --------------------------------------------------------------- unit tests
@pytest.mark.parametrize("stats", [sample_stats(), empty_stats()], ids=["data", "no-data"])
def test_every_figure_is_on_the_page_with_its_key_path_and_exact_value(stats):
    shown = figures(render_dashboard(stats))
    assert_shows_exactly({path: [v for v, _ in pairs] for path, pairs in shown.items()}, stats)
    for path, pairs in shown.items():  # every figure in the chart is in a table too, and vice versa
        if path.startswith(("decisions_last_minute.", "latency_ms.")) or path.endswith(".mean"):
            assert len(pairs) == 2, path


def test_figures_are_rounded_and_missing_ones_shown_as_a_dash():
    page = figures(render_dashboard(sample_stats()))
    shown = {path: {text for _, text in pairs} for path, pairs in page.items()}
    assert shown["arms.agent.completion_rate.mean"] == {"87.3%"}
    assert shown["arms.agent.deadhead_km.mean"] == {"4.26"}
    assert shown["latency_ms.p50"] == {"1.23"}
    assert shown["decisions_in_window"] == {"1,234"}
    assert shown["model_ready"] == {"yes"}
    assert shown["arms.control.on_time_rate.mean"] == shown["arms.control.deadhead_km.ci_high"] == {"–"}
    assert shown["arms.control.on_time_rate.n"] == {"0"}

    empty = render_dashboard(empty_stats())
    shown = figures(empty)
    for path in ("latency_ms.p99", "model_version", "model_backend", "stream_length.decisions"):
        assert set(shown[path]) == {("null", "–")}, path
    assert "no outcomes reported yet" in empty and "no data yet" in empty


def test_data_from_the_service_is_escaped():
    arm, version = "<img src=x onerror=alert(1)>", '"><script>alert("v")</script>'
    page = render_dashboard(sample_stats(arm=arm, version=version))
    assert arm not in page and version not in page and "<script>alert" not in page
    assert page.count("<script>") == 1  # the page's own refresh script
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    shown = figures(page)
    assert f"arms.{arm}.completion_rate.mean" in shown  # the names come back exactly, unescaped
    assert shown["model_version"] == [(json.dumps(version), version)]


def test_the_page_is_self_contained_and_refreshes_itself():
    page = render_dashboard(sample_stats())
    for external in ("http:", "https:", "//", "src=", "href=", "<link", "@import", "url("):
        assert external not in page.replace("</", ""), external
    assert page.count("<svg") == 2 + 1 + 4  # decisions by arm and policy, latency, four KPIs
    assert 'id="content"' in page and "fetch(location.pathname" in page
    assert "setTimeout(refresh, 2000)" in page


# ------------------------------------------------------------- browser test
@pytest.fixture(scope="module")
def browser_tools():
    found = {"redis-server": shutil.which("redis-server") is not None,
             "chromium": Path(CHROMIUM).is_file(), "chromedriver": Path(CHROMEDRIVER).is_file()}  # fmt: skip
    missing = [name for name, there in found.items() if not there]
    if missing:
        pytest.skip(f"the browser test needs {', '.join(missing)} (Debian: apt-get install redis-server "
                    "chromium chromium-driver)")  # fmt: skip


@pytest.fixture(scope="module")
def trained(browser_tools, tmp_path_factory):
    """The tiny experiment, trained and exported as in tests/test_inference.py."""
    run_dir = tmp_path_factory.mktemp("dashboard") / "run"
    config = tiny_config()
    assert train(config, run_dir, log=lambda *a: None).status == "completed"
    export_onnx(run_dir)
    return run_dir, config


@pytest.fixture
def live_service(trained, tmp_path, monkeypatch):
    """(base URL, token): the service with an A/B experiment, a real redis-server, uvicorn."""
    from rl_lib.serving.app import create_app
    from rl_lib.serving.redis_server import LocalRedis
    from rl_lib.serving.server import ServeOptions, build_service

    token = secrets.token_urlsafe(24)
    monkeypatch.setenv("RL_LIB_SERVICE_TOKEN", token)
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(EXPERIMENT)
    state = tmp_path / "state"
    options = ServeOptions(model=str(trained[0]), experiment=str(experiment), state_dir=str(state))
    with LocalRedis(tmp_path / "redis", port=0) as redis:
        service, security = build_service(options, redis_url=redis.url)
        try:
            assert service.model.ready, service.model.load_error
            with uvicorn_thread(create_app(service, security)) as url:
                yield url, token
        finally:
            service.log.close()


@pytest.fixture
def chromium(live_service):
    """Headless Chromium (set up after the service, so it quits before the service stops)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,2200"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(TIMEOUT_S)
        driver.set_script_timeout(TIMEOUT_S)
        yield driver
    finally:
        driver.quit()


class _Stopped(Exception):
    pass


@contextlib.contextmanager
def traffic(url: str, token: str, day):
    """Play ``day`` against the service in a thread; on exit, stop it (its next post raises) and join."""
    from rl_lib.serving.simulator import http_poster, play_day

    http, stop, errors = http_poster(url, token), threading.Event(), []

    def post(path: str, body: dict) -> dict:
        if stop.is_set():
            raise _Stopped
        return http(path, body)

    def play() -> None:
        try:
            play_day(day, post, "2027-01-04", speed=SPEED)
        except _Stopped:
            pass
        except Exception as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=play, name="simulator", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=TIMEOUT_S)
    assert not thread.is_alive(), "the simulator did not stop"
    assert not errors, f"the simulator failed: {errors[0]!r}"


# The figures on the page, read in one go (the refresh script replaces the elements every 2 s).
READ_PAGE = """
const shown = {}, charted = {};
for (const e of document.querySelectorAll('#content [data-stat]')) {
  const [path, value] = [e.getAttribute('data-stat'), e.getAttribute('data-value')];
  (shown[path] ||= []).push(value);
  if (e.closest('svg')) charted[path] = JSON.parse(value);
}
return {refreshes: Number(document.body.dataset.refreshes), shown: shown, charted: charted};
"""


def charts_show_traffic(page: dict) -> bool:
    """Both arms' decisions and a completed trip's deadhead km are drawn."""
    charted = page["charted"]
    decided = [charted.get(f"decisions_last_minute.by_arm.{arm}") or 0 for arm in ARMS]
    return min(decided) > 0 and any(charted.get(f"arms.{arm}.deadhead_km.mean") is not None for arm in ARMS)


def read_page_until(driver, condition: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
    """The page's figures (:data:`READ_PAGE`) once ``condition`` holds for them."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(driver) -> dict | bool:
        page = driver.execute_script(READ_PAGE)
        return page if condition(page) else False

    wait = WebDriverWait(driver, timeout_s, poll_frequency=0.2)
    return wait.until(ready, f"waited {timeout_s:.0f} s for {what}")


def test_the_live_dashboard_shows_the_service_figures_in_a_real_browser(live_service, chromium, trained):
    import httpx

    url, token = live_service
    day = SyntheticScenario(trained[1].scenario).days("test", 1)[0]
    chromium.get(f"{url}/dashboard")
    chromium.execute_script("window.loadedOnce = true")  # a reload would drop it
    page = chromium.execute_script(READ_PAGE)
    assert page["refreshes"] == 0 and not page["charted"].get("decisions_last_minute.by_arm.agent")
    with traffic(url, token, day):
        page = read_page_until(chromium, charts_show_traffic, TIMEOUT_S, "both arms and a trip charted")
    assert page["refreshes"] >= 1  # the page updated itself
    # Traffic has stopped (its thread is joined): the swap after the next one shows figures computed
    # after the last request (the next one may have been fetched before).
    after = chromium.execute_script(READ_PAGE)["refreshes"] + 2
    page = read_page_until(chromium, lambda p: p["refreshes"] >= after, 20, "two more refreshes")
    stats = httpx.get(f"{url}/v1/stats", timeout=TIMEOUT_S).raise_for_status().json()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert chromium.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    assert chromium.execute_script("return window.loadedOnce") is True  # swapped in place, never reloaded

    per_minute = stats["decisions_last_minute"]
    in_window = stats["decisions_in_window"]
    assert sum(per_minute["by_arm"].values()) == in_window, "a decision aged out of the last minute"
    assert stats["stream_length"]["decisions"] == in_window > 0
    assert set(per_minute["by_policy"]) == {"model", "insertion"} and stats["spool_backlog"] == 0
    assert_shows_exactly(page["shown"], stats)
