"""The console in a real browser: Debian's headless chromium, driven by selenium through Debian's
chromium-driver (nothing downloads a browser), against a live Redis with a real worker. Finds a
failed task by its error text, logs in, retries it, watches the page change state by itself, and
screenshots each page: into the test's temporary folder, or into docs/console-*.png (the
pictures docs/CONSOLE.md shows) with DISTCOMP_UPDATE_SCREENSHOTS=1, so a test run leaves the
working tree as it found it."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from distcomp_obs.queue import Queue
from tests.conftest import REPO, require, wait_until
from tests.test_console import FAILING, SCRIPT, TOKEN, Console, start_console, stop

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS = REPO / "docs"


@pytest.fixture
def browser() -> Iterator[Any]:
    have = importlib.util.find_spec("selenium") is not None
    require(have, "selenium (pip install selenium)")
    for path in (CHROMIUM, CHROMEDRIVER):
        require(shutil.which(path) is not None, f"{path} (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def console(redis_url: str, prefix: str, tmp_path: Path, queue: Queue) -> Iterator[Console]:
    c = start_console(redis_url, prefix, tmp_path)
    yield c
    stop(c)


Shot = Callable[[Any, str], None]


@pytest.fixture
def shot(tmp_path: Path) -> Shot:
    folder = DOCS if os.environ.get("DISTCOMP_UPDATE_SCREENSHOTS") == "1" else tmp_path

    def save(driver: Any, name: str) -> None:
        path = folder / f"console-{name}.png"
        assert driver.save_screenshot(str(path)), name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    return save


def samples(driver: Any) -> int:
    found = re.search(r"\((\d+) samples\)", text_of(driver, ".spark"))
    return int(found.group(1)) if found else 0


def text_of(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("css selector", css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def running_with(marker: str) -> list[int]:
    """Pids of processes whose command line holds `marker`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_find_retry_cancel_and_watch_tasks(browser: Any, console: Console, queue: Queue, shot: Shot,
                                           start_worker: Callable[..., Any], tmp_path: Path) -> None:  # fmt: skip
    from selenium.common.exceptions import NoAlertPresentException

    failing = FAILING.format(flag=tmp_path / "flag", tag="browser")
    marker = f"cancel-me-{uuid.uuid4().hex[:8]}"
    sleeper = f"shell:5:0:0:sleep 60 && echo {marker}"
    queue.submit([failing, SCRIPT, *[f"builtin:1:0:0:noop warm {i}" for i in range(40)]], job="nightly")
    for _ in range(2):  # two slots each: one may run the 60 s sleeper, the other drains the buffer
        start_worker("--max-retry-per-task", "0", "--concurrency", "2")
    wait_until(lambda: failing in queue.list_state("failed") and queue.counts()["finished"] == 41, what="ran")
    queue.submit([f"shell:{i % 3}:0:0:echo later {i}" for i in range(5)] + [sleeper], job="sweep")
    queue.submit([f"builtin:0:0:0:sleep 0.{i % 3 + 3} flow-{i}" for i in range(60)], job="nightly")  # a flow
    wait_until(lambda: running_with(marker), what="the sleeper runs")
    # -- overview: counts in words, throughput line, workers --------------------------------------
    browser.get(console.url + "/")
    wait_until(lambda: samples(browser) >= 4, timeout=30, what="throughput samples, refreshed live")
    assert "waiting" in browser.page_source and "failed" in text_of(browser, "#count-failed")
    wait_until(lambda: len(browser.find_elements("css selector", "table.workers tr.live")) == 2, what="2 live")
    with pytest.raises(NoAlertPresentException):  # the <script> task never ran in the page
        browser.switch_to.alert.text  # noqa: B018
    shot(browser, "overview")
    # -- jobs: progress and ETA; one job's failures ------------------------------------------------
    browser.get(console.url + "/jobs")
    wait_until(lambda: {"nightly", "sweep"} <= {e.text for e in browser.find_elements("css selector", "tr.job-row a")},
               what="both jobs listed")  # fmt: skip
    assert "ETA" in text_of(browser, "table.jobs")
    shot(browser, "jobs")
    browser.find_element("link text", "nightly").click()
    eta = wait_until(lambda: re.fullmatch(r"\d+s|\d+m\d\ds|done", text_of(browser, "#job-eta")), what="an ETA")
    assert eta and "zorglub-browser exploded" in text_of(browser, "table.tasks")
    shot(browser, "job")
    browser.get(console.url + "/workers")
    assert "2 live of 2 registered" in text_of(browser, "#live")
    shot(browser, "workers")
    # -- find the failed task by its error text ----------------------------------------------------
    browser.get(console.url + "/tasks?state=failed")
    box = browser.find_element("css selector", "#search")
    box.send_keys("zorglub-BROWSER")
    box.submit()
    wait_until(lambda: "zorglub-browser exploded" in text_of(browser, "table.tasks"), what="search result")
    assert len(browser.find_elements("css selector", "tr.task-row")) == 1
    shot(browser, "tasks")
    browser.find_element("css selector", "tr.task-row td.line a").click()
    wait_until(lambda: text_of(browser, "#task-state") == "failed", what="the task page")
    assert text_of(browser, "#task-line") == failing and "zorglub-browser exploded" in text_of(browser, "#task-reason")
    # -- without logging in, retry is refused ------------------------------------------------------
    task_page = browser.current_url
    browser.find_element("css selector", "#retry").click()
    wait_until(lambda: "needs the console token" in text_of(browser, "#message"), what="refusal shown")
    # -- log in with the form, retry, see the state change without reloading -----------------------
    browser.get(console.url + "/login")
    shot(browser, "login")
    browser.find_element("css selector", "#token").send_keys(TOKEN)
    browser.find_element("css selector", "#login-submit").click()
    wait_until(lambda: "log out" in browser.page_source, what="logged in")
    assert browser.get_cookie("distcomp_console")["httpOnly"] is True
    browser.get(task_page)
    shot(browser, "task-failed")
    (tmp_path / "flag").write_text("passes now")
    browser.find_element("css selector", "#retry").click()
    wait_until(lambda: browser.current_url != task_page, what="went to the new submission's page")
    wait_until(lambda: text_of(browser, "#task-state") == "finished", timeout=30, what="finished, live")
    assert failing in queue.list_state("finished")
    new_id = urllib.parse.urlsplit(browser.current_url).path.rsplit("/", 1)[1]
    assert text_of(browser, "#task-id") == new_id
    shot(browser, "task-finished")
    # -- cancel the running sleeper from its page: its worker kills its process group ----------------
    meta = queue.meta(sleeper)
    assert meta is not None and running_with(marker)
    browser.get(f"{console.url}/tasks/{meta[0]}")
    assert text_of(browser, "#task-state") == "running"
    browser.find_element("css selector", "#cancel").click()
    browser.switch_to.alert.accept()  # "Cancel this task?"
    wait_until(lambda: text_of(browser, "#task-state") == "cancelled", timeout=15, what="cancelled, live")
    assert "cancelled" in text_of(browser, "#task-reason") and not running_with(marker)
    assert sleeper in queue.list_state("cancelled") and browser.find_elements("css selector", "#cancel") == []
    assert text_of(browser, "#task-worker") in ("w1", "w2")  # the worker that stopped it
    shot(browser, "task-cancelled")
