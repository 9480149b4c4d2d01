"""A person's path through the dashboard in a real browser (Debian's headless Chromium, driven by
Selenium): log in, read the overview, open a deployment, run it now with a parameter, watch its
output arrive live, cancel a long run and see its state change without a reload, log out.

One browser and one ``orchd up`` (scheduler, worker and dashboard on SQLite) serve the whole
module.  A screenshot of every page is saved under the module's tmp dir (the path is printed):
a page can pass its asserts and still look broken, so look at them.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from orchd.web.auth import write_user
from tests.helpers import Daemons, daemons, wait_for
from tests.web_support import PASSWORDS, free_port

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CONFIG = """
[scheduler]
loop_interval = "200ms"
[worker]
concurrency = 4
heartbeat = "1s"
poll_interval = "500ms"
shutdown_grace = "1s"
kill_grace = "1s"
[web]
listen = "127.0.0.1:{port}"
users_file = "{users}"
session_key_file = "{key}"

[[deployments]]
name = "ticker"
description = "Prints a line every 0.4 s for a few seconds."
command = ["sh", "-c", "for i in $(seq 12); do echo \\"tick $i $ORCHD_PARAMETERS\\"; sleep 0.4; done"]
parameters = {{ who = "world" }}
schedules = [{{ interval = "1h" }}]

[[deployments]]
name = "long"
command = ["sh", "-c", "echo started; exec sleep 300"]
"""


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`orchd up` with the dashboard on a free port and the user olga (operator)."""
    tmp = tmp_path_factory.mktemp("site")
    port = free_port()
    write_user(tmp / "web-users.toml", "olga", "operator", PASSWORDS["olga"])
    body = CONFIG.format(port=port, users=tmp / "web-users.toml", key=tmp / "web-session-key")
    (tmp / "orchd.toml").write_text(
        f'[database]\nurl = "sqlite:///{tmp / "orchd.db"}"\n' + textwrap.dedent(body)
    )
    group: Daemons
    with daemons(tmp) as group:
        up = group.start(
            "orchd", "up", "--config", str(tmp / "orchd.toml"), env={"ORCHD_STATE_DIR": str(tmp)}
        )
        wait_for(lambda: f"dashboard: http://127.0.0.1:{port}/" in group.output(), what="the dashboard")
        yield f"http://127.0.0.1:{port}"
        assert group.stop(up) == 0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("the browser tests need Debian's browser: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition: object, timeout: float = 20) -> object:
    return WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    ).until(condition)  # type: ignore[arg-type]


def text_of(driver: WebDriver, selector: str) -> str:
    """The element's text; the live parts of a page are replaced as they change, so an element
    found a moment ago may be gone: look again."""
    for _ in range(50):
        try:
            return str(driver.find_element(By.CSS_SELECTOR, selector).text)
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector} keeps being replaced")


def mark(driver: WebDriver) -> None:
    """A flag on the page's window: still there later means the page was not reloaded."""
    driver.execute_script("window.orchdMark = 'kept'")


def kept(driver: WebDriver) -> bool:
    return driver.execute_script("return window.orchdMark") == "kept"


def no_console_errors(driver: WebDriver) -> None:
    """Nothing blocked by the Content-Security-Policy, no script error."""
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_a_persons_walk_through_the_dashboard(site: str, browser: WebDriver, shots: Path) -> None:
    driver = browser
    driver.get(site + "/")
    wait(driver, ec.url_contains("/login?next="))
    driver.save_screenshot(str(shots / "01-login.png"))
    driver.find_element(By.ID, "username").send_keys("olga")
    driver.find_element(By.ID, "password").send_keys(PASSWORDS["olga"])
    driver.find_element(By.ID, "login").click()

    wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, ".tile[data-check='database']")))
    tiles = [e.get_attribute("data-check") for e in driver.find_elements(By.CSS_SELECTOR, ".tile")]
    assert tiles == ["database", "scheduler", "workers", "late runs", "stuck runs", "failures"]
    assert "OK" in text_of(driver, ".tile[data-check='database'] .tile-mark")
    driver.save_screenshot(str(shots / "02-overview.png"))
    no_console_errors(driver)

    driver.find_element(By.LINK_TEXT, "Deployments").click()
    wait(driver, ec.presence_of_element_located((By.LINK_TEXT, "ticker")))
    assert "every hour" in driver.page_source  # the schedule in words
    driver.save_screenshot(str(shots / "03-deployments.png"))
    driver.find_element(By.LINK_TEXT, "ticker").click()

    # Run now: invalid JSON is caught before it is sent, then a parameter is given
    box = wait(driver, ec.presence_of_element_located((By.ID, "parameters")))
    assert '"who": "world"' in box.get_attribute("value")  # type: ignore[attr-defined]
    box.clear()  # type: ignore[attr-defined]
    box.send_keys('{"who": ')  # type: ignore[attr-defined]
    driver.find_element(By.ID, "run-now-button").click()
    error = wait(driver, ec.visibility_of_element_located((By.ID, "parameters-error")))
    assert "not JSON" in error.text  # type: ignore[attr-defined]
    driver.save_screenshot(str(shots / "04-deployment-bad-json.png"))
    box.clear()  # type: ignore[attr-defined]
    box.send_keys('{"who": "browser"}')  # type: ignore[attr-defined]
    driver.find_element(By.ID, "run-now-button").click()

    # the run page: its output arrives while it runs, without a reload
    wait(driver, ec.url_matches(r"/runs/\d+$"))
    mark(driver)
    wait(driver, lambda d: "RUNNING" in text_of(d, "#run-summary h1 [data-state]"))
    first = len(driver.find_elements(By.CSS_SELECTOR, "#log-lines .line"))
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log-lines .line")) >= first + 2)
    assert "RUNNING" in text_of(driver, "#run-summary h1 [data-state]") and kept(driver)
    assert '"who": "browser"' in text_of(driver, "#log-lines") and '"who": "browser"' in text_of(
        driver, "#run-parameters"
    )
    driver.save_screenshot(str(shots / "05-run-live.png"))
    wait(driver, lambda d: "COMPLETED" in text_of(d, "#run-summary h1 [data-state]"))
    assert "tick 12" in text_of(driver, "#log-lines") and kept(driver)
    driver.save_screenshot(str(shots / "06-run-completed.png"))
    no_console_errors(driver)

    # a long run, cancelled: CANCELLING after the click, CANCELLED arrives live
    driver.get(site + "/deployments/long")
    driver.find_element(By.ID, "run-now-button").click()
    wait(driver, lambda d: "RUNNING" in text_of(d, "#run-summary h1 [data-state]"))
    wait(driver, lambda d: "started" in text_of(d, "#log-lines"))
    driver.find_element(By.CSS_SELECTOR, "#run-summary form[action$='/cancel'] button").click()
    wait(driver, ec.alert_is_present()).accept()  # type: ignore[attr-defined]
    wait(driver, lambda d: "CANCELL" in text_of(d, "#run-summary h1 [data-state]"))
    mark(driver)
    wait(driver, lambda d: text_of(d, "#run-summary h1 [data-state]") == "CANCELLED")
    assert kept(driver)
    driver.save_screenshot(str(shots / "07-run-cancelled.png"))

    driver.find_element(By.LINK_TEXT, "Runs").click()
    wait(driver, ec.presence_of_element_located((By.ID, "runs-table")))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run-id]")) >= 2
    driver.save_screenshot(str(shots / "08-runs.png"))
    driver.execute_script(  # a run started elsewhere: the list offers it instead of jumping
        "fetch('/api/deployments/ticker/runs', {method: 'POST', body: '{}', headers: {'Content-Type':"
        " 'application/json', 'X-CSRF-Token': document.querySelector('meta[name=orchd-csrf]').content}})"
    )
    wait(driver, ec.visibility_of_element_located((By.ID, "new-runs")))
    driver.find_element(By.LINK_TEXT, "Pools & workers").click()
    wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-pool='default']")))
    driver.save_screenshot(str(shots / "09-pools.png"))
    driver.find_element(By.LINK_TEXT, "Overview").click()
    wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "svg.chart rect")))
    driver.save_screenshot(str(shots / "10-overview-after.png"))
    no_console_errors(driver)

    driver.find_element(By.ID, "logout").click()
    wait(driver, ec.url_contains("/login"))
    driver.get(site + "/runs")
    wait(driver, ec.url_contains("/login?next="))


def test_a_run_printing_html_shows_it_as_text(site: str, browser: WebDriver, shots: Path) -> None:
    """The output, the parameters and the error of a run are text: nothing in them executes."""
    driver = browser
    driver.get(site + "/login")
    if driver.find_elements(By.ID, "username"):
        driver.find_element(By.ID, "username").send_keys("olga")
        driver.find_element(By.ID, "password").send_keys(PASSWORDS["olga"])
        driver.find_element(By.ID, "login").click()
        wait(driver, lambda d: "/login" not in d.current_url)
    driver.get(site + "/deployments/ticker")
    box = wait(driver, ec.presence_of_element_located((By.ID, "parameters")))
    box.clear()  # type: ignore[attr-defined]
    evil = '<img src=x onerror="window.orchdPwned=1"><script>window.orchdPwned=1</script>'
    box.send_keys('{"who": "' + evil.replace('"', '\\"') + '"}')  # type: ignore[attr-defined]
    driver.find_element(By.ID, "run-now-button").click()
    wait(driver, lambda d: "tick 2" in text_of(d, "#log-lines"))
    assert "<script>window.orchdPwned=1</script>" in text_of(driver, "#log-lines")  # shown as text
    assert driver.execute_script("return window.orchdPwned") is None
    assert not driver.find_elements(By.CSS_SELECTOR, "#log-lines img, #run-parameters img")
    driver.save_screenshot(str(shots / "11-run-with-html-output.png"))
    no_console_errors(driver)


@pytest.fixture(autouse=True)
def _explain_driver_failures() -> Iterator[None]:
    try:
        yield
    except WebDriverException as exc:  # pragma: no cover - only on failure
        raise AssertionError(f"browser: {exc.msg}") from None
