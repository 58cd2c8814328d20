"""The admin in a real browser (headless Chromium through Selenium): log in, place an order
through the generated form, see it in the enriched orders read model, confirm it with an admin
action. Screenshots go to test-output/admin-*.png; the orders list is copied to docs/admin.png
(the README's picture) when that is missing or ``KEEL_UPDATE_DOCS_SCREENSHOT=1``, so a test run
leaves the work tree clean.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``); without them the test skips, or fails under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, databases=["default", "readmodels"]),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser test must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        _missing("no Chromium: apt-get install -y chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed: pip install -e '.[test]'")
    profile = tempfile.mkdtemp(prefix="keel-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never downloads anything.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_place_and_confirm_an_order_in_the_browser(
    browser: Any, live_server: Any, shop: Any, worker: Any
) -> None:
    from django.contrib.auth.models import User
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    from sample_app.shop.management.commands.seed_demo import demo_commands

    for command in demo_commands():  # a realistic list to look at
        shop.app.execute(command, user="seed_demo")
    worker()
    User.objects.create_superuser("admin", "admin@example.com", "browser-pw")
    OUTPUT.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, 15)

    def shot(name: str) -> Path:
        path = OUTPUT / f"admin-{name}.png"
        browser.save_screenshot(str(path))
        return path

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys("browser-pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "user-tools")))
    shot("1-index")

    # From the customer's page to the PlaceOrder form, prefilled with the customer's id.
    browser.get(f"{live_server.url}/admin/shop/customer/?q=Hedy")
    browser.find_element(By.LINK_TEXT, "Hedy Lamarr").click()
    browser.find_element(By.CSS_SELECTOR, "a.keel-row-command[href*='PlaceOrder']").click()
    wait.until(ec.presence_of_element_located((By.ID, "keel-command-form")))
    for row, (product, quantity, price) in enumerate(
        [("Frequency-hopping radio", "1", "1942.00"), ("Film reel", "3", "12.50")]
    ):
        browser.find_element(By.NAME, f"lines-{row}-product").send_keys(product)
        browser.find_element(By.NAME, f"lines-{row}-quantity").send_keys(quantity)
        browser.find_element(By.NAME, f"lines-{row}-unit_price").send_keys(price)
    browser.find_element(By.NAME, "gift_wrap").click()
    shot("2-place-order-form")
    browser.find_element(By.NAME, "_execute").click()

    # The admin waited for the read model, then redirected to the new order's row.
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert "PlaceOrder executed" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    assert "/admin/shop/order/" in browser.current_url
    order_id = browser.current_url.rstrip("/").split("/")[-2]
    page = browser.find_element(By.ID, "content").text
    assert "Hedy Lamarr" in page and "AT" in page and "1979.50" in page

    # The enriched orders list: the customer's name and country, joined in by the projection.
    browser.get(f"{live_server.url}/admin/shop/order/?status__exact=open")
    row = browser.find_element(By.XPATH, f"//tr[.//a[contains(@href, '{order_id}')]]")
    assert "Hedy Lamarr" in row.text and "AT" in row.text and "open" in row.text
    row.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("execute_confirmorder")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert (
        "ConfirmOrder done for 1 row(s)"
        in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    )

    browser.get(f"{live_server.url}/admin/shop/order/")
    row = browser.find_element(By.XPATH, f"//tr[.//a[contains(@href, '{order_id}')]]")
    assert "confirmed" in row.text
    listing = shot("3-orders-confirmed")
    docs_picture = REPO / "docs" / "admin.png"
    if not docs_picture.exists() or os.environ.get("KEEL_UPDATE_DOCS_SCREENSHOT") == "1":
        docs_picture.parent.mkdir(exist_ok=True)
        shutil.copyfile(listing, docs_picture)

    # The order's event history, as the admin shows it.
    browser.get(f"{live_server.url}/admin/keel/command/history/{order_id}/")
    events = browser.find_element(By.ID, "keel-events").text
    assert "Order.Placed" in events and "Order.Confirmed" in events and "admin" in events
    shot("4-event-history")
    for name in ("1-index", "2-place-order-form", "3-orders-confirmed", "4-event-history"):
        assert (OUTPUT / f"admin-{name}.png").stat().st_size > 10_000
