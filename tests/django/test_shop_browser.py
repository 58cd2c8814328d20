"""The admin in a real browser (headless Chromium through Selenium, a 1400 px window):

- a clerk places an order through the customer chooser, fixes a bad Decimal, lands on the row,
  confirms it with an action, and finds it in the history, the sales chart and the projections;
- a user without permissions is refused everywhere: command forms, actions, rebuild, re-drive,
  the command API and the query views;
- with the worker stopped, a command lands on the pending page, which turns into the row once
  the worker has caught up.

Screenshots go to test-output/admin-*.png; with ``KEEL_UPDATE_DOCS_SCREENSHOT=1`` (or when one
is missing) the README's pictures in docs/ are refreshed from them, so a plain test run leaves
the work tree clean.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``); without them the test skips, or fails under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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


DOCS_SHOTS = {
    "2-place-order-form": "admin-place-order.png",
    "3-order-row": "admin-order.png",
    "4-orders": "admin.png",
    "6-projections": "admin-projections.png",
    "7-sales": "admin-sales.png",
    "8-streams": "admin-streams.png",
    "denied": "admin-denied.png",
    "pending": "admin-pending.png",
}


def _shooter(browser: Any) -> Callable[[str], Path]:
    OUTPUT.mkdir(exist_ok=True)

    def shot(name: str) -> Path:
        path = OUTPUT / f"admin-{name}.png"
        browser.save_screenshot(str(path))
        assert path.stat().st_size > 10_000, name
        docs = DOCS_SHOTS.get(name)
        if docs:
            target = REPO / "docs" / docs
            if not target.exists() or os.environ.get("KEEL_UPDATE_DOCS_SCREENSHOT") == "1":
                target.parent.mkdir(exist_ok=True)
                shutil.copyfile(path, target)
        return path

    return shot


def _login(browser: Any, live_server: Any, username: str, password: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.ID, "user-tools")))


def _staff(username: str, *perms: str) -> Any:
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, f"{username}@example.com", f"pw-{username}-123")
    user.is_staff = True
    user.save()
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def _seed(shop: Any) -> None:
    from sample_app.shop.management.commands.seed_demo import demo_commands

    for command in demo_commands():  # a realistic list to look at
        shop.app.execute(command, user="seed_demo")


CLERK = (
    "keel.execute_placeorder",
    "keel.execute_confirmorder",
    "keel.execute_cancelorder",
    "keel.view_events",
    "keel.view_projection",
    "shop.view_customer",
    "shop.view_order",
    "shop.view_salesperhour",
)


def test_a_clerk_places_an_order_through_the_choosers(
    browser: Any, live_server: Any, shop: Any, worker: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    _seed(shop)
    worker()
    _staff("clerk", *CLERK)
    wait = WebDriverWait(browser, 15)
    shot = _shooter(browser)
    _login(browser, live_server, "clerk", "pw-clerk-123")
    shot("1-index")

    # Commands, by their names: "Place order".
    browser.find_element(By.LINK_TEXT, "Commands").click()
    browser.find_element(By.LINK_TEXT, "Place order").click()
    wait.until(ec.presence_of_element_located((By.ID, "keel-command-form")))
    assert "form=" in browser.current_url  # the form's own token: its ids are fixed
    order_field = browser.find_element(By.NAME, "order_id")
    assert order_field.get_attribute("disabled") is not None  # generated, read-only

    # The customer is chosen by name, not typed as a UUID.
    def choose_customer(text: str) -> None:
        from selenium.common.exceptions import StaleElementReferenceException

        browser.find_element(By.CSS_SELECTOR, ".field-customer_id .select2-selection").click()
        search = wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, ".select2-search__field"))
        )
        search.send_keys(text)
        option = (
            By.XPATH,
            "//li[contains(@class,'select2-results__option') and not(contains(@class,"
            f"'loading-results')) and contains(., '{text}')]",
        )
        for _ in range(5):  # select2 re-renders the list when its answer arrives
            try:
                wait.until(ec.element_to_be_clickable(option)).click()
                return
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"could not choose {text!r}")

    choose_customer("Hedy")
    lines = [("Frequency-hopping radio", "1", "1942.00"), ("Film reel", "3", "12.505")]
    for row, (product, quantity, price) in enumerate(lines):
        browser.find_element(By.NAME, f"lines-{row}-product").send_keys(product)
        browser.find_element(By.NAME, f"lines-{row}-quantity").send_keys(quantity)
        browser.find_element(By.NAME, f"lines-{row}-unit_price").send_keys(price)
    browser.find_element(By.NAME, "gift_wrap").click()
    shot("2-place-order-form")
    head = shop.head()
    browser.find_element(By.ID, "keel-execute").click()

    # 12.505 is no price: an error summary, the row marked, nothing written.
    summary = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".keel-summary")))
    assert "Lines, row 2: unit price: Use at most 2 decimal places." in summary.text
    assert shop.head() == head
    assert "Hedy Lamarr" in browser.find_element(By.CSS_SELECTOR, ".field-customer_id").text
    shot("2b-bad-decimal")
    price = browser.find_element(By.NAME, "lines-1-unit_price")
    price.clear()
    price.send_keys("12.50")
    browser.find_element(By.ID, "keel-execute").click()

    # The admin waited for the read model, then landed on the new order's row.
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert (
        "Place order: done for Order"
        in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    )
    assert "/admin/shop/order/" in browser.current_url
    order_id = browser.current_url.rstrip("/").split("/")[-2]
    page = browser.find_element(By.ID, "content").text
    assert "Hedy Lamarr" in page and "AT" in page and "1979.50" in page
    assert "Film reel" in browser.find_element(By.CSS_SELECTOR, "table.keel-lines").text
    offered = [
        a.get_attribute("textContent")
        for a in browser.find_elements(By.CSS_SELECTOR, "a.keel-row-command")
    ]
    assert offered == ["Confirm order", "Cancel order"]  # what this clerk may, and the row allows
    shot("3-order-row")

    # Back to the form (the browser restores what was typed) and Execute again: the same
    # form sends the same command id, so the order is not placed twice.
    head = shop.head()
    browser.back()
    browser.back()
    assert "form=" in browser.current_url
    choose_customer("Hedy")
    price = wait.until(ec.presence_of_element_located((By.NAME, "lines-1-unit_price")))
    price.clear()
    price.send_keys("12.50")
    browser.find_element(By.ID, "keel-execute").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert (
        "had been executed before" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    )
    assert shop.head() == head

    # Confirm it with an action on the list; the list searches by the short id it shows.
    browser.get(f"{live_server.url}/admin/shop/order/?q={order_id[:8]}")
    row = browser.find_element(By.XPATH, f"//tr[.//a[contains(@href, '{order_id}')]]")
    assert "Hedy Lamarr" in row.text and "open" in row.text
    row.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("execute_confirmorder")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert (
        "Confirm order: done for 1 row(s)"
        in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    )
    browser.get(f"{live_server.url}/admin/shop/order/")
    row = browser.find_element(By.XPATH, f"//tr[.//a[contains(@href, '{order_id}')]]")
    assert "confirmed" in row.text
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 1400, f"the orders page is {width} px wide"
    overflow = browser.execute_script(
        "const r = document.querySelector('#changelist .results');"
        "return r.scrollWidth - r.clientWidth;"
    )
    assert overflow <= 0, f"the orders table needs {overflow} px more than a 1400 px window"
    browser.get(f"{live_server.url}/admin/shop/customer/")
    overflow = browser.execute_script(
        "const r = document.querySelector('#changelist .results');"
        "return r.scrollWidth - r.clientWidth;"
    )
    assert overflow <= 0, f"the customers table needs {overflow} px more than 1400 px"
    browser.get(f"{live_server.url}/admin/shop/order/")
    shot("4-orders")

    browser.get(f"{live_server.url}/admin/keel/command/history/{order_id}/")
    events = browser.find_element(By.ID, "keel-events").text
    assert "Order.Placed" in events and "Order.Confirmed" in events and "clerk" in events
    shot("5-event-history")
    worker()
    browser.get(f"{live_server.url}/admin/keel/projection/")
    assert browser.find_elements(By.CSS_SELECTOR, ".keel-worker-running")
    shot("6-projections")
    browser.get(f"{live_server.url}/admin/shop/salesperhour/")
    assert browser.find_elements(By.CSS_SELECTOR, "#shop-sales-chart rect.keel-bar")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#shop-daily-chart rect.keel-bar")) == 14
    shot("7-sales")
    browser.get(f"{live_server.url}/admin/keel/stream/")
    streams = browser.find_element(By.ID, "stream-sales_per_hour").text
    assert "Stream time" in streams and "Watermark" in streams
    shot("8-streams")
    browser.get(f"{live_server.url}/admin/")
    recent = browser.find_element(By.ID, "recent-actions-module").text
    assert f"Order {order_id[:8]}: Place order" in recent and "Confirm order" in recent


def test_a_user_without_permission_is_refused_everywhere(
    browser: Any, live_server: Any, shop: Any, worker: Any
) -> None:
    from selenium.webdriver.common.by import By

    _seed(shop)
    worker()
    _staff("viewer", "shop.view_order")  # may look at orders, nothing else
    shot = _shooter(browser)
    head = shop.head()
    _login(browser, live_server, "viewer", "pw-viewer-123")
    for path in (
        "/admin/keel/command/PlaceOrder/",
        "/admin/keel/command/",
        "/admin/keel/projection/",
        "/admin/shop/customer/",
    ):
        browser.get(live_server.url + path)
        assert "403" in browser.title or "Permission denied" in browser.title, path
    browser.get(live_server.url + "/admin/keel/command/PlaceOrder/")
    assert "You may not run “Place order”" in browser.find_element(By.ID, "content").text
    assert browser.find_elements(By.ID, "header")  # the admin's frame
    shot("denied")
    browser.get(live_server.url + "/admin/shop/order/")
    assert not browser.find_elements(By.NAME, "action")  # no actions to choose
    assert not browser.find_elements(By.CSS_SELECTOR, "a.keel-row-command")

    def fetch(method: str, path: str, body: str | None = None) -> list[Any]:
        script = """
            const [method, path, body, done] = arguments;
            const token = (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";
            fetch(path, {method, body, headers: {"X-CSRFToken": token,
                         "Content-Type": "application/json"}})
              .then(async r => done([r.status, r.headers.get("Content-Type"), await r.text()]));
        """
        return list(browser.execute_async_script(script, method, path, body))

    some_order = shop.rows(__import__("projections.orders").orders.orders)[0]["order_id"]
    refused = {
        "rebuild": fetch("POST", "/admin/keel/projection/orders/rebuild/"),
        "redrive": fetch("POST", "/admin/keel/projection/orders/redrive/"),
        "action": fetch("POST", "/admin/shop/order/", None),
        "api command": fetch(
            "POST", "/api/commands/ConfirmOrder", f'{{"order_id": "{some_order}"}}'
        ),
        "customers": fetch("GET", "/api/customers/"),
        "history": fetch("GET", f"/api/orders/{some_order}/history"),
    }
    for what, (status, kind, text) in refused.items():
        assert status == 403 or (what == "action" and status in {200, 302}), (what, status, text)
        if what.startswith("api") or what in {"customers", "history"}:
            assert kind == "application/json" and "Ada" not in text, what
    assert fetch("GET", "/api/orders/")[0] == 200  # what the user may see, they see
    assert shop.head() == head  # nothing written by any of it


def test_the_pending_page_with_the_worker_stopped(
    browser: Any, live_server: Any, shop: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # (The admin waits KEEL['WAIT_TIMEOUT'] for the read model first: 5 s here.)
    _seed(shop)
    shop.catch_up()  # then the worker stops
    _staff("clerk", *CLERK)
    shot = _shooter(browser)
    _login(browser, live_server, "clerk", "pw-clerk-123")
    browser.get(f"{live_server.url}/admin/shop/order/?status__exact=open")
    browser.find_element(By.CSS_SELECTOR, "#result_list tbody tr th a").click()
    browser.find_element(By.CSS_SELECTOR, "a.keel-row-command[data-command=ConfirmOrder]").click()
    browser.find_element(By.ID, "keel-execute").click()
    wait = WebDriverWait(browser, 20)
    wait.until(ec.presence_of_element_located((By.CLASS_NAME, "keel-pending")))
    text = browser.find_element(By.ID, "content").text
    assert "Order.Confirmed" in text and "orders" in text
    assert "Perhaps it was deleted" not in text
    shot("pending")
    shop.catch_up()  # the worker comes back; the page refreshes itself into the row
    wait.until(ec.url_contains("/admin/shop/order/"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert "caught up" in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text
    assert "confirmed" in browser.find_element(By.CSS_SELECTOR, ".field-status").text
