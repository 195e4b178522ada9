"""`idp inspect --html` on what the worker left in the real Redis, loaded in headless Chromium.

The journey is the unit test's (Maya: a lead on her phone merged by e-mail, a login on her
laptop, her token replayed elsewhere, a kiosk beyond the shared-identifier limit, a logout),
sent through the real broker to a worker, stamped with the events' own times (R14). Chromium
and its driver come from Debian (`.ci/run` installs them); without them the test fails.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from pipeline.core import ids
from tests.integration.conftest import SECRETS, TOKEN_EXP
from tests.support import events as ev
from tests.support.kafka import PROJECT_ROOT, Pipeline
from tests.unit.tools.test_inspect_html import maya_journey

WS = "ws-a"
LIMIT = {"IDP_SHARED_DEVICE_LIMIT": "2"}  # the kiosk is Maya's third device within the window


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium at 1280×800, recording the page's console."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are missing: `apt-get install chromium "
                    "chromium-driver` (as .ci/run does)", pytrace=False)  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,800"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    # The window's size includes what a headless window keeps for its frame: set the viewport.
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


async def test_the_page_draws_mayas_devices_sessions_and_refusals(
    pipeline: Pipeline, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def ts(clock: str) -> str:  # "09:05:00" -> that many hours, minutes, seconds after `start`
        h, m, s = (int(part) for part in clock.split(":"))
        at = start + timedelta(hours=h - 9, minutes=m, seconds=s)
        return at.isoformat().replace("+00:00", "Z")

    journey = maya_journey(WS, SECRETS[WS], ts, TOKEN_EXP)
    pipeline.start_worker(LIMIT)
    for event in journey.values():
        await pipeline.send(ev.TOPIC_OF[event["event_id"].split("-")[0]], event)
    contact = ids.user_contact_id(WS, "maya")

    def settled(out) -> bool:
        # The final profile, whatever order the worker read the topics in: the thief's use of
        # the token is refused once the laptop's earlier one is read (R17, any arrival order).
        profile = out.latest_profiles().get(contact, {})
        return (
            profile.get("anonymous_ids") == ["maya-laptop"]
            and profile.get("conversation_ids") == ["conv-phone", "conv-laptop"]
            and "shared_identifier" in profile.get("flags", [])
            and any(s["user_id"] == "maya" for s in out.values("identity.shutdown"))
        )

    await pipeline.wait_for(settled, what="maya's final profile and the laptop's logout")

    html = tmp_path / "maya.html"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipeline.cli", "inspect", WS, "maya@example.com", "--html",
         str(html)], cwd=PROJECT_ROOT, env={**pipeline.env, **LIMIT}, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {html}"
    unwritable = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipeline.cli", "inspect", WS, "maya", "--html",
         str(tmp_path / "no-such-dir" / "maya.html")], cwd=PROJECT_ROOT,
        env={**pipeline.env, **LIMIT}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr
    assert unwritable.stderr.startswith("idp inspect: cannot write ")
    assert unwritable.stderr.count("\n") == 1

    browser.get(html.as_uri())
    assert browser.title == f"contact {contact} · idp inspect"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []

    def attrs(selector: str, *names: str) -> list[tuple[str, ...]]:
        return [tuple(el.get_attribute(n) for n in names)
                for el in browser.find_elements(By.CSS_SELECTOR, selector)]  # fmt: skip

    assert attrs("#timeline g.lane", "data-device", "data-role") == [
        ("maya-laptop", "profile"), ("maya-phone", "lead"), ("shop-kiosk", "refused"),
        ("thief-pc", "refused"),
    ]  # fmt: skip
    login, logout = journey["laptop_login"]["event_id"], journey["laptop_logout"]["event_id"]
    sessions = attrs("#timeline g.session", "data-device", "data-contact")
    assert sessions == [
        ("maya-laptop", ids.visitor_contact_id(WS, "maya-laptop", "origin")),
        ("maya-laptop", contact),
        ("maya-laptop", ids.visitor_contact_id(WS, "maya-laptop", logout)),
        ("maya-phone", ids.visitor_contact_id(WS, "maya-phone", "origin")),
        ("maya-phone", ids.visitor_contact_id(WS, "maya-phone",
                                              f"email:{journey['phone_chat']['event_id']}")),
    ]  # fmt: skip
    assert sorted(attrs("#timeline g.mark", "class", "data-device", "data-reason")) == sorted([
        ("mark conversation", "maya-phone", "chat_start"),
        ("mark conversation", "maya-laptop", "chat_start"),
        ("mark merge", "maya-laptop", "login"),
        ("mark merge", "maya-phone", "email_match"),
        ("mark shutdown", "maya-laptop", "logout"),
        ("mark refusal", "thief-pc", "token_reused"),
        ("mark refusal", "shop-kiosk", "shared_identifier"),
    ])  # fmt: skip
    assert {e for (e,) in attrs("#timeline g.merge", "data-event-id")} == {login}
    legend = attrs("#legend li.legend-contact", "data-contact", "data-role")
    assert (contact, "profile") in legend and len(legend) == 5
    assert {m for (m,) in attrs("#legend li.legend-mark", "data-mark")} == {
        "merge", "shutdown", "conversation", "refusal"}  # fmt: skip
    # Readable at 1280×800: the chart fits the window's width, its lanes are drawn at a size
    # one can read (the SVG scales to the page).
    chart = browser.find_element(By.ID, "timeline")
    assert 900 <= chart.size["width"] <= 1280 and chart.size["height"] >= 250
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280
    shot = tmp_path / "maya.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    header = shot.read_bytes()[:24]  # PNG: the IHDR chunk holds the width and the height
    assert int.from_bytes(header[16:20]) == 1280 and int.from_bytes(header[20:24]) == 800
    # The whole chart is in that first screen.
    bottom = browser.execute_script(
        "return document.getElementById('timeline').getBoundingClientRect().bottom"
    )
    assert bottom <= 800
