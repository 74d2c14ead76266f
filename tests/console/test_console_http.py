"""The console's server side over plain HTTP against a real ``matrixos serve``: the session
cookie's flags, CSRF double submit, the CSP header, bearer clients unaffected, logout, the
result download (CSV and Parquet, streamed) and the assets shipped in the package."""

from __future__ import annotations

import io
import time
import tomllib
from importlib.resources import files
from pathlib import Path

import httpx
import pyarrow.parquet as pq

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from server._serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]

STATEMENTS = "/api/2.0/sql/statements"


def _login(server: MatrixOSServer, token: str) -> httpx.Client:
    c = httpx.Client(base_url=server.http_url, timeout=60)
    r = c.post("/console/login", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return c


def test_session_cookie_flags_csrf_and_csp(
    console_server: MatrixOSServer, console_warehouse: ServedWarehouse
) -> None:
    c = _login(console_server, console_warehouse.tokens["alice"])
    cookies = c.cookies
    r = c.get("/console/api/me")
    assert r.json()["name"] == "alice"
    # the login answer's cookies: the session HttpOnly and SameSite=Strict, the CSRF readable
    login = httpx.post(
        console_server.http_url + "/console/login",
        headers={"Authorization": f"Bearer {console_warehouse.tokens['alice']}"},
    )
    set_cookies = login.headers.get_list("set-cookie")
    session = next(h for h in set_cookies if h.startswith("mxs_session="))
    csrf = next(h for h in set_cookies if h.startswith("mxs_csrf="))
    assert "HttpOnly" in session and "SameSite=strict" in session.replace("Strict", "strict")
    assert "HttpOnly" not in csrf
    assert console_warehouse.tokens["alice"] not in login.text  # the token never comes back
    body = {"statement": "SELECT 1", "wait_timeout": "10s"}
    # a state-changing call with the cookie but without the CSRF header is refused
    assert c.post(STATEMENTS, json=body).status_code == 403
    wrong = c.post(STATEMENTS, json=body, headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    ok = c.post(STATEMENTS, json=body, headers={"X-CSRF-Token": cookies["mxs_csrf"]})
    assert ok.status_code == 200 and ok.json()["status"]["state"] == "SUCCEEDED"
    # bearer clients are unaffected (no cookie, no CSRF)
    bearer = {"Authorization": f"Bearer {console_warehouse.tokens['bob']}"}
    plain = httpx.post(console_server.http_url + STATEMENTS, json=body, headers=bearer)
    assert plain.status_code == 200
    # the pages carry a CSP allowing scripts of this origin only
    page = c.get("/")
    assert page.status_code == 200 and 'type="module"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert c.get("/console/app.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/console/../pyproject.toml").status_code == 404
    assert c.get("/console/nope.js").status_code == 404
    # logout ends the session on the server: the old cookie no longer works
    old = dict(c.cookies)
    assert c.post("/console/logout", headers={"X-CSRF-Token": old["mxs_csrf"]}).status_code == 200
    again = httpx.get(console_server.http_url + "/console/api/me", cookies=old)
    assert again.status_code == 401


def test_password_login_makes_a_session_token_revoked_at_logout(
    console_server: MatrixOSServer, console_warehouse: ServedWarehouse
) -> None:
    c = httpx.Client(base_url=console_server.http_url, timeout=60)
    bad = c.post("/console/login/password", json={"user": "alice", "password": "wrong"})
    assert bad.status_code in (401, 403) and "mxs_session" not in c.cookies
    r = c.post(
        "/console/login/password",
        json={"user": "alice", "password": console_warehouse.passwords["alice"]},
    )
    assert r.status_code == 200 and r.json()["name"] == "alice"
    live = [t for t in c.get("/console/api/tokens").json()["tokens"] if not t["revoked_at"]]
    c.post("/console/logout", headers={"X-CSRF-Token": c.cookies["mxs_csrf"]})
    admin = {"Authorization": f"Bearer {console_warehouse.tokens['admin']}"}
    after = httpx.get(console_server.http_url + "/console/api/tokens", headers=admin).json()
    revoked = {t["id"] for t in after["tokens"] if t["revoked_at"]}
    assert revoked & {t["id"] for t in live}


def test_download_streams_csv_and_parquet(
    console_server: MatrixOSServer, console_warehouse: ServedWarehouse
) -> None:
    c = _login(console_server, console_warehouse.tokens["admin"])
    headers = {"X-CSRF-Token": c.cookies["mxs_csrf"]}
    body = {"statement": "SELECT n FROM big.nums ORDER BY n", "wait_timeout": "30s"}
    st = c.post(STATEMENTS, json=body, headers=headers).json()
    assert st["manifest"]["total_chunk_count"] == 20  # the server cuts 1,000-row chunks
    sid = st["statement_id"]
    csv = c.get(f"/console/api/statements/{sid}/download?format=csv")
    assert csv.headers["content-disposition"].startswith("attachment")
    lines = csv.text.splitlines()
    assert lines[0] == '"n"' and lines[1] == "0" and len(lines) == 20_001
    pqt = c.get(f"/console/api/statements/{sid}/download?format=parquet")
    table = pq.read_table(io.BytesIO(pqt.content))
    assert table.num_rows == 20_000 and table.column("n")[19_999].as_py() == 19_999
    # another principal may not read this statement's result
    bob = _login(console_server, console_warehouse.tokens["bob"])
    assert bob.get(f"/console/api/statements/{sid}/download").status_code == 404


def test_tree_lists_only_what_the_principal_may_read(
    console_server: MatrixOSServer, console_warehouse: ServedWarehouse
) -> None:
    def names(token: str) -> set[str]:
        tree = _login(console_server, token).get("/console/api/tree").json()
        return {t["full_name"] for c in tree["catalogs"] for s in c["schemas"] for t in s["tables"]}

    assert names(console_warehouse.tokens["bob"]) == set()
    assert names(console_warehouse.tokens["alice"]) == {"main.sales.orders", "main.sales.customers"}
    assert {"main.kb.docs", "main.media.pics"} <= names(console_warehouse.tokens["admin"])


def test_assets_ship_in_the_package() -> None:
    static = files("matrixos.server.console") / "static"
    names = {p.name for p in static.iterdir()}
    assert {"index.html", "app.js", "app.css", "api.js", "editor.js", "grid.js"} <= names
    # every module the page imports is there (no CDN, no build step)
    for p in static.iterdir():
        if p.name.endswith(".js"):
            for line in p.read_text().splitlines():
                if line.startswith("import ") and " from " in line:
                    target = line.split(" from ")[1].strip(" ;\"'").removeprefix("./")
                    assert target in names, (p.name, target)
    text = Path(__file__).parents[2].joinpath("pyproject.toml").read_text()
    config = tomllib.loads(text)["tool"]["setuptools"]
    assert "matrixos.server.console" in config["packages"]
    assert config["package-data"]["matrixos.server.console"] == ["static/*"]
    # every package folder of matrixos/ is in the wheel (serve imports iot, jobs, the console)
    root = Path(__file__).parents[2] / "matrixos"
    folders = {
        "matrixos" + ".".join(["", *p.parent.relative_to(root).parts])
        for p in root.rglob("__init__.py")
    }
    assert folders <= set(config["packages"]), folders - set(config["packages"])


def test_sessions_expire_and_the_oldest_go_first() -> None:
    from matrixos.server.console.sessions import ConsoleSessions

    short = ConsoleSessions(ttl_s=0.05)
    s = short.create("mxt_a_b", "alice")
    assert short.get(s.id) == s and s.csrf != s.id
    time.sleep(0.1)
    assert short.get(s.id) is None  # expired: gone
    few = ConsoleSessions(max_sessions=2)
    a, b, c = (few.create(f"mxt_{i}_x", "u") for i in range(3))
    assert few.get(a.id) is None and few.get(b.id) == b and few.get(c.id) == c
    assert few.drop(b.id) == b and few.get(b.id) is None
