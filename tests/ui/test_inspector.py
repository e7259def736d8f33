"""The inspector page in a real browser (headless Chromium): it loads, lists a session a client creates, draws that
session's memory as its steps arrive (the very numbers GetSession returns), runs a copy task from the try-it panel
to zero bit errors, refuses a wrong token, and loads nothing from anywhere but itself. Plus its HTTP API by hand."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import chromium, missing
from helpers import bits, service_config

from ntm_serve.client.sdk import NTMClient
from ntm_serve.server.server import ServerThread

# `make test` installs the browser (setup-browser): in CI a missing one is a failure, never a skip.
if missing() and os.environ.get("CI"):
    raise RuntimeError(f"the inspector's browser tests cannot run in CI: {missing()}")
pytestmark = pytest.mark.skipif(bool(missing()), reason=missing() or "browser present")


@pytest.fixture(scope="module")
def inspected(copy_dir: Path) -> Iterator[ServerThread]:
    config = service_config(copy_dir, ui_port=0, auth_tokens=("alice", "bob"), admin_tokens=("root",))
    with ServerThread(config) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as context:
        yield context


def _url(server: ServerThread, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.server.ui_port}{path}"


def _get(server: ServerThread, path: str, token: str | None) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(_url(server, path), headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            data = json.loads(body) if response.headers.get_content_type() == "application/json" else body
            return response.status, data, dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _open(browser: Any, server: ServerThread, token: str) -> Any:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.errors = errors
    page.goto(_url(server))
    page.fill("#token", token)
    page.click("#token-save")
    return page


def test_the_page_draws_a_sessions_memory_as_its_steps_arrive(inspected: ServerThread, browser: Any,
                                                              rng: np.random.Generator) -> None:
    with NTMClient(inspected.target, token="alice", timeout=30) as alice:
        sid = alice.create_session("copy").session_id
        page = _open(browser, inspected, "alice")
        page.click(f"#sessions li[data-session-id='{sid}']")
        page.wait_for_function("window.inspector.steps === 0 && window.inspector.memory !== null")
        before = page.evaluate("window.inspector.memory")
        pixels = page.evaluate("document.getElementById('c-memory').toDataURL()")
        x = bits(rng, 4)
        for t in range(4):
            alice.step(sid, x[t:t + 1])
            page.wait_for_function(f"document.getElementById('c-memory').dataset.steps === '{t + 1}'")
        drawn = np.array(page.evaluate("window.inspector.memory"))
        rows = page.evaluate("window.inspector.rows")
        truth = alice.get_session(sid, include_state=True).state.tensors["memory"]  # type: ignore[union-attr]
        np.testing.assert_allclose(drawn, truth[rows], atol=1e-4)  # the page's numbers: the session's own
        assert len(before) == len(truth)  # before a step no row is in use: every row is drawn
        assert not np.allclose(drawn, np.array(before)[rows], atol=1e-3)  # and the picture has changed since
        assert page.evaluate("document.getElementById('c-memory').toDataURL()") != pixels
        assert page.evaluate("window.inspector.frames") == 5 and page.evaluate("window.inspector.dropped") == 0
        assert page.inner_text("#watch-info").startswith("step 4")
        alice.delete_session(sid)
        page.wait_for_function("window.inspector.ended !== null")
        assert page.evaluate("window.inspector.ended.code") == "NOT_FOUND"
        assert "deleted" in page.inner_text("#watch-end")
        assert page.errors == []
        page.close()


def test_try_it_runs_a_copy_task_to_zero_bit_errors(inspected: ServerThread, browser: Any) -> None:
    page = _open(browser, inspected, "alice")
    page.wait_for_selector("#try-model option[value='copy']", state="attached")
    page.select_option("#try-model", "copy")
    page.fill("#try-delay", "0")
    page.click("#try-run")
    page.wait_for_function("document.getElementById('try-status').dataset.status === 'done'", timeout=60_000)
    assert page.get_attribute("#try-status", "data-bit-errors") == "0", page.inner_text("#try-status")
    assert "0 bit errors" in page.inner_text("#try-status")
    sid = page.get_attribute("#watch", "data-session-id")
    total = 2 * 12 + 1  # the try-it copy example: length 12
    page.wait_for_function(f"window.inspector.steps === {total}")
    assert page.evaluate("window.inspector.frames + window.inspector.dropped") == total + 1  # and the snapshot
    with NTMClient(inspected.target, token="alice", timeout=30) as alice:
        assert alice.get_session(sid).steps == total  # a real session of alice's, stepped as a client would
        alice.delete_session(sid)
    assert page.errors == []
    page.close()


def test_a_wrong_token_is_refused(inspected: ServerThread, browser: Any) -> None:
    page = _open(browser, inspected, "mallory")
    page.wait_for_function("document.body.dataset.auth === 'refused'")
    assert "token refused" in page.inner_text("#whoami")
    assert page.locator("#sessions li").count() == 0 and page.locator("#models tbody tr").count() == 0
    page.close()
    for token in (None, "mallory"):
        for path in ("/api/whoami", "/api/models", "/api/sessions", "/api/sessions/x/watch"):
            status, body, _ = _get(inspected, path, token)
            assert status == 401 and body["code"] == "UNAUTHENTICATED", (path, token, body)


def test_the_api_shows_each_caller_its_own_sessions_and_an_admin_all(inspected: ServerThread, browser: Any) -> None:
    with NTMClient(inspected.target, token="alice", timeout=30) as alice, \
            NTMClient(inspected.target, token="bob", timeout=30) as bob:
        mine, theirs = alice.create_session("copy").session_id, bob.create_session("copy").session_id
        listed = {name: {s["session_id"] for s in _get(inspected, "/api/sessions", name)[1]}
                  for name in ("alice", "bob", "root")}
        assert mine in listed["alice"] and theirs not in listed["alice"]
        assert theirs in listed["bob"] and mine not in listed["bob"]
        assert {mine, theirs} <= listed["root"]
        status, body, _ = _get(inspected, f"/api/sessions/{theirs}/watch", "alice")
        assert status == 403 and body["code"] == "PERMISSION_DENIED"
        models = _get(inspected, "/api/models", "alice")[1]
        assert [(m["name"], m["task"], m["version"]) for m in models] == [("copy", "copy", 1)]
        big = alice.create_session("copy", memory_rows=512).session_id  # each session's own memory size N
        sizes = {s["session_id"]: s["memory_rows"] for s in _get(inspected, "/api/sessions", "alice")[1]}
        assert sizes[mine] == models[0]["memory_rows"] == 128 and sizes[big] == 512
        page = _open(browser, inspected, "alice")
        page.wait_for_selector(f"#sessions li[data-session-id='{big}']")
        assert "N=512" in page.inner_text(f"#sessions li[data-session-id='{big}']")
        page.close()
        alice.delete_session(big)
        alice.delete_session(mine)
        bob.delete_session(theirs)


def test_every_asset_comes_from_the_server_itself(inspected: ServerThread, browser: Any) -> None:
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(_url(inspected))
    page.wait_for_load_state("networkidle")
    assert requested and all(url.startswith(_url(inspected, "/")) for url in requested), requested
    status, body, headers = _get(inspected, "/", None)
    assert status == 200 and b"inspector.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    page.close()
