"""The browser-facing HTTP surface without a browser: assets, headers, embed check, admin session."""

from __future__ import annotations

import gzip
import hashlib
import re

import httpx2
import pytest

from servers import TOKEN
from webfl.build import paths


@pytest.fixture
def http(server):
    with httpx2.Client(base_url=server.url, follow_redirects=False, timeout=30) as client:
        yield client


def test_config_names_runtime_and_wheels_that_exist(http):
    config = http.get("/api/config").json()
    assert config["version"] == "0.1.0"
    assert config["pyodide"]["index_url"] == "/pyodide/0.27.7/"
    assert config["task"]["name"] == "mnist"
    for url in (config["numpy"]["url"], config["core"]["url"], config["pyodide"]["index_url"] + "pyodide.mjs"):
        assert http.head(url).status_code == 200, url
    for wheel in ("numpy", "core"):
        served = http.get(config[wheel]["url"]).content
        assert hashlib.sha256(served).hexdigest() == config[wheel]["sha256"]


def test_pyodide_url_setting_loads_numpy_by_name(tmp_path):
    from servers import start_server

    server = start_server(tmp_path / "data", "--pyodide-url", "https://pyodide.example/v0.27.7/full")
    try:
        config = httpx2.get(server.url + "/api/config").json()
    finally:
        server.stop()
    assert config["pyodide"]["index_url"] == "https://pyodide.example/v0.27.7/full/"
    assert config["numpy"] == {"name": "numpy", "url": None, "sha256": None}


def test_wasm_is_served_gzipped_when_accepted(http):
    url = "/pyodide/0.27.7/pyodide.asm.wasm"
    plain = http.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.headers["content-type"] == "application/wasm"
    assert "content-encoding" not in plain.headers
    assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert plain.headers["vary"] == "Accept-Encoding"
    assert plain.content == (paths.PYODIDE_DIR / "pyodide.asm.wasm").read_bytes()

    raw = httpx2.Request("GET", http.base_url.join(url), headers={"Accept-Encoding": "gzip, deflate, br"})
    packed = http.send(raw, stream=True)
    body = b"".join(packed.iter_raw())
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["content-type"] == "application/wasm"
    assert int(packed.headers["content-length"]) == len(body) < len(plain.content) / 2
    assert gzip.decompress(body) == plain.content

    refused = http.get(url, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers


def test_wheel_cache_policy(http):
    config = http.get("/api/config").json()
    numpy = http.head(config["numpy"]["url"])
    assert numpy.headers["cache-control"] == "public, max-age=31536000, immutable"
    # Our wheel keeps its name across rebuilds of one version: revalidate, cheaply.
    core = http.get(config["core"]["url"])
    assert core.headers["cache-control"] == "no-cache"
    again = http.get(config["core"]["url"], headers={"If-None-Match": core.headers["etag"]})
    assert again.status_code == 304
    assert http.get("/wheels/manifest.json").status_code == 404


def test_pages_forbid_framing_except_the_widget(tmp_path):
    from servers import start_server

    server = start_server(tmp_path / "data", "--embed-origins", "https://blog.example,https://news.example")
    try:
        page = httpx2.get(server.url + "/")
        embed = httpx2.get(server.url + "/embed?task=mnist")
        wrong_task = httpx2.get(server.url + "/embed?task=cifar")
        script = httpx2.get(server.url + "/embed.js")
    finally:
        server.stop()
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'self' https://blog.example https://news.example" in embed.headers["content-security-policy"]
    assert 'data-testid="join"' in embed.text and 'data-testid="state"' in embed.text
    assert wrong_task.status_code == 404 and "no task named &#39;cifar&#39;" in wrong_task.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert "document.currentScript" in script.text


def test_embed_check_answers_any_origin(tmp_path):
    from servers import start_server

    server = start_server(tmp_path / "data", "--embed-origins", "https://blog.example")
    try:
        check = lambda origin: httpx2.get(server.url + "/api/embed/check", headers={"Origin": origin} if origin else {})
        allowed, refused, own, none = check("https://blog.example"), check("https://evil.example"), check(server.url), check(None)
    finally:
        server.stop()
    assert allowed.json()["allowed"] is True
    assert allowed.headers["access-control-allow-origin"] == "https://blog.example"
    assert refused.json() == {"allowed": False, "origin": "https://evil.example", "task": "mnist", "title": "Handwritten digits"}
    # The refusal must be readable by the refused page, or it could not show it.
    assert refused.headers["access-control-allow-origin"] == "https://evil.example"
    assert own.json()["allowed"] is True and none.json()["allowed"] is True


def _login(http) -> str:
    form = http.get("/admin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    response = http.post("/admin/login", data={"token": TOKEN, "csrf": csrf})
    assert response.status_code == 303, response.text
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=" in cookie
    page = http.get("/admin")
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text).group(1)


def test_admin_page_needs_a_login(http):
    page = http.get("/admin")
    assert page.status_code == 200
    assert 'data-testid="login-token"' in page.text
    assert 'data-testid="launch"' not in page.text and "csrf-token" not in page.text
    assert http.get("/api/status").status_code == 401
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_admin_login_rejects_a_wrong_token_and_a_forged_form(http):
    form = http.get("/admin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    wrong = http.post("/admin/login", data={"token": "guess", "csrf": csrf})
    assert wrong.status_code == 401 and "not right" in wrong.text
    assert "webfl_admin" not in wrong.headers.get("set-cookie", "")
    # A cross-site form carries no login cookie (SameSite=Strict): the double submit fails.
    forged = httpx2.post(str(http.base_url.join("/admin/login")), data={"token": TOKEN, "csrf": csrf})
    assert forged.status_code == 403


def test_admin_session_and_csrf(http, server):
    csrf = _login(http)
    page = http.get("/admin").text
    assert TOKEN not in page and TOKEN not in http.get("/").text
    assert http.get("/api/status").status_code == 200
    assert http.get("/api/model").status_code == 200

    body = {"rounds": 1, "clients_per_round": 1, "deadline_s": 5}
    no_csrf = http.post("/api/rounds", json=body)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
    bad_csrf = http.post("/api/rounds", json=body, headers={"X-CSRF-Token": csrf[:-2] + "xx"})
    assert bad_csrf.status_code == 403
    ok = http.post("/api/rounds", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 202, ok.text
    assert http.post("/api/rounds/stop", headers={"X-CSRF-Token": csrf}).json() == {"stopped": True}

    # A tampered cookie is no session at all.
    value = http.cookies["webfl_admin"]
    with httpx2.Client(base_url=server.url, cookies={"webfl_admin": value[:-3] + "AAA"}) as other:
        assert other.get("/api/status").status_code == 401

    # Logging out needs the CSRF token too, then the cookie is gone.
    assert http.post("/admin/logout", data={"csrf": "nope"}).status_code == 403
    out = http.post("/admin/logout", data={"csrf": csrf})
    assert out.status_code == 303
    assert http.get("/api/status").status_code == 401
    # The bearer token keeps working for scripts.
    assert server.api("GET", "/api/status")[0] == 200


def test_sessions_end_when_the_token_changes(tmp_path):
    from servers import start_server

    data = tmp_path / "data"
    server = start_server(data)
    with httpx2.Client(base_url=server.url, follow_redirects=False) as http:
        _login(http)
        cookie = http.cookies["webfl_admin"]
        server.stop()
        server = start_server(data, env={"WEBFL_ADMIN_TOKEN": "a-new-token"})
        try:
            with httpx2.Client(base_url=server.url, cookies={"webfl_admin": cookie}) as again:
                assert again.get("/api/status").status_code == 401
        finally:
            server.stop()


def test_session_cookie_is_httponly_strict_and_expires(http):
    """The threat model's claims about the cookie, as the browser receives it."""
    form = http.get("/admin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    answer = http.post("/admin/login", data={"token": TOKEN, "csrf": csrf})
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith("webfl_admin="))
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "max-age", "path"} <= attributes.keys(), cookie
    assert attributes["samesite"].lower() == "samesite=strict" and attributes["max-age"] == "Max-Age=28800"
    assert "secure" not in attributes  # plain http here; over https: test_hardening.py::test_over_tls_the_cookie_is_secure_and_origins_are_https
