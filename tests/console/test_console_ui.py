"""The web console in a real browser (Debian chromium via Playwright) against a real
``matrixos serve``: log in, run and page queries, cancel, errors at line:column, the catalog
explorer with history and time travel, search with thumbnails, admin tokens, escaping of HTML
in data, and a user without grants seeing no table names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

try:
    from tests.console.conftest import XSS
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from console.conftest import XSS  # type: ignore[no-redef]
    from server._serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]

TIMEOUT_MS = 30_000


@pytest.fixture
def page(browser: Any, console_server: MatrixOSServer) -> Any:
    ctx = browser.new_context(
        base_url=console_server.http_url, viewport={"width": 1400, "height": 900}
    )
    ctx.set_default_timeout(TIMEOUT_MS)
    p = ctx.new_page()
    p.errors = []
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    yield p
    ctx.close()


def login(page: Any, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("#login-token button")
    page.wait_for_selector("#top:not([hidden])")


def run_sql(page: Any, sql: str) -> None:
    page.goto("/#/sql")
    page.wait_for_selector("textarea.sql-input")
    page.fill("textarea.sql-input", sql)
    page.click("button:has-text('Run')")


def test_login_run_query_types_and_history(
    page: Any, console_warehouse: ServedWarehouse, artifacts: Path
) -> None:
    login(page, console_warehouse.tokens["alice"])
    assert page.inner_text("#who") == "alice"
    run_sql(page, "SELECT id, customer, amount FROM sales.orders ORDER BY id")
    page.wait_for_selector("table.grid tbody tr")
    headers = page.locator("table.grid th").all_inner_texts()
    assert any("customer" in h and "STRING" in h for h in headers)
    assert any("amount" in h and "DOUBLE" in h for h in headers)
    assert page.locator("table.grid tbody tr").count() == 5
    assert "rows 1\u20135 of 5" in page.inner_text(".page-info")
    assert "ORDER BY id" in page.inner_text("ol.history")
    # the server's history (system.query.history): this user's statements, literals blanked
    recorded = page.locator("ol.history a:has-text('FROM sales.orders')")
    for _ in range(60):  # the server writes its history about once a second
        page.click(".side button:has-text('Server')")
        page.wait_for_selector("ol.history :is(li, p, .error)")
        if recorded.count():
            break
        page.wait_for_timeout(500)
    assert recorded.count() == 1, page.inner_text("ol.history")
    # highlighting: the keywords are spans of class kw
    assert "SELECT" in page.locator(".sql-shade span.kw").all_inner_texts()
    page.screenshot(path=str(artifacts / "sql.png"))
    assert page.errors == []


def test_a_million_rows_page_through_and_the_dom_holds_one_page(
    page: Any, console_warehouse: ServedWarehouse, artifacts: Path
) -> None:
    login(page, console_warehouse.tokens["admin"])
    run_sql(page, "SELECT a.n AS a, b.n AS b FROM big.nums a, big.nums b LIMIT 1000000")
    page.wait_for_selector(".page-info:has-text('of 1,000,000')", timeout=120_000)
    assert page.locator("table.grid tbody tr").count() == 100
    page.click("button:has-text('Next')")
    page.wait_for_selector(".page-info:has-text('rows 101')")
    assert page.locator("table.grid tbody tr").count() == 100
    assert page.locator("table.grid tbody tr").first.locator("td").first.inner_text() == "101"
    # still responsive: a click answers, and the whole document stays small
    assert page.evaluate("document.getElementsByTagName('tr').length") <= 101
    assert page.evaluate("document.documentElement.outerHTML.length") < 200_000
    page.screenshot(path=str(artifacts / "million.png"))
    # a chart of the page's rows, drawn as SVG by the page
    page.click("button:has-text('Chart')")
    page.select_option("select[aria-label='chart kind']", "scatter")
    assert page.locator("svg.chart circle.dot").count() == 100


def test_cancel_a_long_query(page: Any, console_warehouse: ServedWarehouse) -> None:
    login(page, console_warehouse.tokens["admin"])
    run_sql(page, "SELECT count(*) FROM big.nums a, big.nums b, big.nums c")
    page.wait_for_selector(".status:has-text('running')")
    page.click("button:has-text('Cancel')")
    page.wait_for_selector(".status:has-text('canceled')", timeout=60_000)
    assert page.locator("button:has-text('Run')").first.is_enabled()


def test_an_error_shows_its_line_and_column(page: Any, console_warehouse: ServedWarehouse) -> None:
    login(page, console_warehouse.tokens["admin"])
    run_sql(page, "SELECT 1\nFROM sales.orders\nWHERE nosuchcolumn = 3")
    err = page.wait_for_selector(".output .error")
    text = err.inner_text()
    assert "line 3" in text and "nosuchcolumn" in text.lower()
    assert page.locator(".sql-shade .line.bad").inner_text().startswith("WHERE")


def test_catalog_history_time_travel_and_diff(
    page: Any, console_warehouse: ServedWarehouse, artifacts: Path
) -> None:
    login(page, console_warehouse.tokens["admin"])
    page.goto("/#/catalog/main.web.pages")
    page.wait_for_selector(".tree a:has-text('pages')")
    page.click(".tabs button:has-text('History')")
    page.wait_for_selector(".tab-body table.grid tbody tr")
    assert page.locator(".tab-body tbody tr").count() == 2
    page.screenshot(path=str(artifacts / "history.png"))
    # diff of row counts between version 0 and the latest
    page.locator(".tab-body tbody tr", has_text="WRITE").last.locator(
        "button:has-text('Diff')"
    ).click()
    page.wait_for_selector(".diff:has-text('difference +2')")
    # one click: time travel to version 0 in the SQL editor
    page.locator(".tab-body tbody tr").last.locator("button:has-text('Time travel')").click()
    page.wait_for_selector(".page-info:has-text('of 1')")
    assert "VERSION AS OF 0" in page.input_value("textarea.sql-input")
    # lineage (system.lineage.events): web.page_ids was made from version 1 of web.pages
    page.goto("/#/catalog/main.web.page_ids")
    page.click(".tabs button:has-text('Lineage')")
    up = page.wait_for_selector(".tab-body h3:has-text('Upstream') + table")
    assert "main.web.pages v1" in up.inner_text() and "sql" in up.inner_text()
    page.click(".tab-body a:has-text('main.web.pages')")
    page.click(".tabs button:has-text('Lineage')")
    down = page.wait_for_selector(".tab-body h3:has-text('Downstream') + table")
    assert "main.web.page_ids" in down.inner_text()
    # details: files and size; columns
    page.goto("/#/catalog/main.web.pages")
    page.click(".tabs button:has-text('Details')")
    assert page.locator(".tab-body td:has-text('files') + td").inner_text() == "2"


def test_search_ranks_highlights_and_shows_thumbnails(
    page: Any, console_warehouse: ServedWarehouse, artifacts: Path
) -> None:
    login(page, console_warehouse.tokens["admin"])
    page.goto("/#/search")
    page.select_option("select[aria-label='table']", "main.media.pics")
    page.fill("input[aria-label='query']", "red square")
    page.select_option("select[aria-label='mode']", "text")
    page.click("button:has-text('Search')")
    page.wait_for_selector(".hit-list li")
    first = page.locator(".hit-list li").first
    assert "red" in first.locator("mark").all_inner_texts()
    assert page.locator(".hit-list .score").count() >= 1
    img = first.locator("img.thumb")
    assert img.evaluate("i => i.complete && i.naturalWidth") == 16
    page.screenshot(path=str(artifacts / "search.png"))
    # a filter narrows the hits
    page.fill("input[aria-label='filter']", "id = 2")
    page.click("button:has-text('Search')")
    page.wait_for_selector(".hit-list li:has-text('blue')")
    assert page.locator(".hit-list li").count() == 1


def test_html_in_data_is_shown_as_text(
    page: Any, console_warehouse: ServedWarehouse, artifacts: Path
) -> None:
    login(page, console_warehouse.tokens["admin"])
    quoted = XSS.replace('"', '""')
    run_sql(page, f'SELECT html AS "{quoted}", html FROM web.pages ORDER BY id')
    page.wait_for_selector("table.grid tbody tr")
    assert XSS in page.locator("table.grid tbody td").nth(1).inner_text()
    page.goto("/#/catalog/main.web.pages")
    page.wait_for_selector(".muted:has-text('onerror')")
    page.click(".tabs button:has-text('Preview')")
    page.wait_for_selector(".tab-body td:has-text('onerror')")
    run_sql(page, 'SELECT * FROM "<img src=x onerror=window.__xss=3>"')
    page.wait_for_selector(".output .error")
    page.wait_for_timeout(300)  # an injected image would have fired its onerror by now
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x], #page script").count() == 0
    page.screenshot(path=str(artifacts / "xss.png"))


def test_a_user_without_grants_sees_no_table_names(
    page: Any, console_warehouse: ServedWarehouse, artifacts: Path
) -> None:
    login(page, console_warehouse.tokens["bob"])
    # (not "audit": the admin page says only admins read the audit log)
    names = ["orders", "customers", "salaries", "nums", "docs", "pics", "pages", "sales", "access"]
    loaded = {
        "/#/catalog": ".tree p.empty",
        "/#/search": "p.empty:has-text('No Lance table')",
        "/#/sql": "textarea.sql-input",
        "/#/admin": "section:has(> h2:has-text('API tokens')) table",
        "/#/compute": "section:has(> h2:has-text('Usage')) h3",
    }
    for where, marker in loaded.items():
        page.goto(where)
        page.wait_for_selector(marker)
        page.wait_for_load_state("networkidle")
        text = page.inner_text("body")
        assert not [n for n in names if n in text], (where, text)
    page.goto("/#/sql")
    page.fill("textarea.sql-input", "SELECT * FROM sa")
    page.keyboard.press("Control+Space")
    page.wait_for_timeout(200)
    assert "sales" not in page.inner_text(".completion")
    page.screenshot(path=str(artifacts / "no-grants.png"))


def test_completion_offers_tables_and_columns(
    page: Any, console_warehouse: ServedWarehouse
) -> None:
    login(page, console_warehouse.tokens["alice"])
    page.goto("/#/sql")
    page.fill("textarea.sql-input", "")
    page.type("textarea.sql-input", "SELECT * FROM sales.or")
    page.wait_for_selector(".completion li:has-text('orders')")
    page.keyboard.press("Enter")
    assert page.input_value("textarea.sql-input") == "SELECT * FROM sales.orders"
    page.type("textarea.sql-input", " WHERE cust")
    page.wait_for_selector(".completion li:has-text('customer')")


def test_a_name_typed_before_the_names_arrived_is_completed_when_they_do(
    page: Any, console_warehouse: ServedWarehouse
) -> None:
    held: list[Any] = []  # the requests for the table tree, answered once the word is typed
    page.route("**/console/api/tree", lambda route: held.append(route))
    login(page, console_warehouse.tokens["alice"])
    page.goto("/#/sql")
    page.fill("textarea.sql-input", "")
    page.type("textarea.sql-input", "SELECT * FROM sales.or")
    page.wait_for_function("() => true")  # let the page ask for the tree
    assert held, "the SQL page did not ask for the table names"
    assert not page.is_visible(".completion li:has-text('orders')")  # no names yet
    for route in held:
        route.continue_()  # the server's real answer, only later
    page.unroute("**/console/api/tree")
    page.wait_for_selector(".completion li:has-text('orders')")


def test_admin_creates_a_token_shown_once_and_reads_the_audit(
    page: Any, console_warehouse: ServedWarehouse, console_server: MatrixOSServer, artifacts: Path
) -> None:
    import httpx

    login(page, console_warehouse.tokens["admin"])
    page.goto("/#/admin")
    page.wait_for_selector("h3:has-text('users')")
    assert "alice" in page.inner_text("section:has(> h2:has-text('Users'))")
    page.fill("input[aria-label='token account']", "alice")
    page.click("button:has-text('Create token')")
    token = page.wait_for_selector("code.token").inner_text()
    r = httpx.get(
        console_server.http_url + "/console/api/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.json()["name"] == "alice"
    page.screenshot(path=str(artifacts / "admin.png"))
    page.goto("/#/sql")
    page.goto("/#/admin")
    page.wait_for_selector("h3:has-text('users')")
    assert token not in page.content()  # shown once
    page.fill("input[aria-label='audit action']", "login")
    page.click("button:has-text('Filter')")
    page.wait_for_selector("section:has(> h2:has-text('Audit')) td:has-text('LOGIN')")
    # a new group through SQL, from the form
    page.fill("input[aria-label='account name']", "analysts")
    page.select_option("select[aria-label='kind']", "GROUP")
    page.click("button:has-text('Create')")
    page.wait_for_selector("td:has-text('analysts')")


def test_compute_page_shows_nodes_usage_and_balances(
    page: Any, console_warehouse: ServedWarehouse, console_server: MatrixOSServer, artifacts: Path
) -> None:
    import httpx

    admin = {"Authorization": f"Bearer {console_warehouse.tokens['admin']}"}
    r = httpx.post(
        console_server.http_url + "/api/2.0/billing/accounts/alice/credit",
        json={"degrees": "100", "note": "console test"},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    login(page, console_warehouse.tokens["alice"])
    run_sql(page, "SELECT count(*) FROM sales.orders")  # metered: usage for alice
    page.wait_for_selector("table.grid tbody tr")
    page.goto("/#/compute")
    page.wait_for_selector("section:has(> h2:has-text('Nodes')) td:has-text('in-process')")
    usage = page.wait_for_selector("section:has(> h2:has-text('Usage'))")
    page.wait_for_selector("section:has(> h2:has-text('Usage')) td:has-text('alice')")
    assert "100" in usage.inner_text()
    page.wait_for_selector(
        "section:has(> h2:has-text('Usage')) h4:has-text('alice') + .chart-box svg"
    )
    page.screenshot(path=str(artifacts / "compute.png"), full_page=True)


def test_password_login_and_logout(page: Any, console_warehouse: ServedWarehouse) -> None:
    page.goto("/")
    page.fill("#user", "alice")
    page.fill("#password", console_warehouse.passwords["alice"])
    page.click("#login-password button")
    page.wait_for_selector("#top:not([hidden])")
    assert page.inner_text("#who") == "alice"
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    page.goto("/#/sql")
    page.wait_for_selector("#login:not([hidden])")


def test_an_admin_grants_and_revokes_from_the_explorer(
    page: Any, console_warehouse: ServedWarehouse
) -> None:
    import matrixos as mx
    from matrixos.catalog.accounts import Accounts

    def bobs() -> list[str]:
        with mx.connect(console_warehouse.uri) as lh:
            return [f"{g.privilege} {g.securable}" for g in Accounts(lh.catalog).grants("bob")]

    login(page, console_warehouse.tokens["admin"])
    page.goto("/#/catalog/main.hr.salaries")
    page.click(".tabs button:has-text('Grants')")
    page.wait_for_selector(".tab-body p:has-text('No grants')")
    page.fill("input[aria-label='grantee']", "bob")
    page.click(".tab-body button:has-text('Grant')")
    row = page.wait_for_selector(".tab-body tbody tr:has-text('bob')")
    assert "SELECT" in row.inner_text()
    assert bobs() == ["SELECT main.hr.salaries"]
    page.click(".tab-body tbody tr:has-text('bob') button:has-text('Revoke')")
    page.wait_for_selector(".tab-body p:has-text('No grants')")
    assert bobs() == []


def test_run_selection_and_its_error_line(page: Any, console_warehouse: ServedWarehouse) -> None:
    login(page, console_warehouse.tokens["admin"])
    page.goto("/#/sql")
    area = page.locator("textarea.sql-input")
    area.fill("SELECT 1 AS first_one\n\nSELECT nosuch FROM sales.orders")
    area.evaluate("t => t.setSelectionRange(0, 21)")
    page.click("button:has-text('Run selection')")
    page.wait_for_selector("table.grid th:has-text('first_one')")
    area.evaluate("t => t.setSelectionRange(t.value.indexOf('SELECT nosuch'), t.value.length)")
    page.click("button:has-text('Run selection')")
    err = page.wait_for_selector(".output .error")
    assert "line 3" in err.inner_text()  # line 1 of the selection is line 3 of the editor
    assert page.locator(".sql-shade .line.bad").inner_text().startswith("SELECT nosuch")


def test_submit_a_sql_job_watch_it_finish_and_see_its_usage(
    page: Any, console_warehouse: ServedWarehouse, artifacts: Path
) -> None:
    login(page, console_warehouse.tokens["alice"])
    page.goto("/#/compute")
    page.fill("textarea[aria-label='job SQL']", "SELECT count(*) AS n FROM sales.orders")
    page.click("button:has-text('Submit SQL job')")
    answer = page.wait_for_selector(
        "section:has(> h2:has-text('Jobs')) :is(.notice:has-text('submitted job'), .error)",
        timeout=90_000,
    )
    assert "submitted job" in answer.inner_text(), answer.inner_text()  # else: why not
    job_id = answer.inner_text().rsplit(" ", 1)[1]
    row = page.locator(f"section:has(> h2:has-text('Jobs')) tbody tr:has-text('{job_id}')")
    # the page refreshes the queue while a job is active: it ends SUCCEEDED without a reload
    row.locator("td:has-text('SUCCEEDED')").wait_for(timeout=120_000)
    row.locator("button:has-text('Logs')").click()
    page.wait_for_selector(f"pre.logs[data-job='{job_id}']:has-text('1 rows')")
    page.screenshot(path=str(artifacts / "job.png"), full_page=True)
    # its metered use shows per job once the meter wrote it
    usage = page.locator(f"section:has(> h2:has-text('Usage')) td:has-text('{job_id}')")
    for _ in range(60):
        page.goto("/#/sql")
        page.goto("/#/compute")
        page.wait_for_selector("section:has(> h2:has-text('Usage')) h3:has-text('per job')")
        if usage.count():
            break
        page.wait_for_timeout(1000)
    assert usage.count() == 1
    # a reservation the pool cannot hold (it has no GPU) is refused, naming the field
    page.fill("input[aria-label='gpus']", "1")
    page.click("button:has-text('Reserve')")
    page.wait_for_selector("section:has(> h2:has-text('Reserve')) .error")
