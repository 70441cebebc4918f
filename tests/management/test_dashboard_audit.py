"""Dashboard logins and logouts are in the audit trail (rows and ``wgpy.audit`` lines), with no secret in them."""

from __future__ import annotations

import json
import logging
import pathlib

import pytest
import yarl
from management_helpers import Harness, with_harness
from support.management_fixtures import Browser

from wgpy.management.audit import AUDIT_LOGGER_NAME


def test_dashboard_login_and_logout_are_audited_without_secrets(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER_NAME)

    async def body(h: Harness) -> None:
        browser = Browser(h.running)
        try:
            assert (await browser.login("wgat_not-a-token")).status == 401
            assert (await browser.login()).status == 303
            cookie = browser.http.cookie_jar.filter_cookies(yarl.URL(browser.url))["wgpy_session"].value
            status, _text, _headers = await browser.post("/logout")
            assert status == 303
            status, page = await browser.get("/audit")  # logged out: the page asks for a login
            assert status == 303
            assert (await browser.login()).status == 303
            status, page = await browser.get("/audit")
            assert status == 200
            # the dashboard's audit filter offers the new kinds
            assert 'value="dashboard_login"' in page and 'value="dashboard_logout"' in page
        finally:
            await browser.close()
        events = (await h.admin("GET", "/api/v1/audit")).body
        kinds = [e["kind"] for e in reversed(events) if e["kind"].startswith("dashboard_")]
        assert kinds == ["dashboard_login", "dashboard_logout", "dashboard_login"]  # the refused login is no event
        tokens = (await h.admin("GET", "/api/v1/audit?kind=admin_token_created")).body
        token_id = tokens[0]["detail"]["id"]
        for event in events:
            if event["kind"].startswith("dashboard_"):
                assert event["actor"] == f"admin:{token_id[:8]}"
                assert event["detail"] == {"token_id": token_id, "source": "127.0.0.1"}
        lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER_NAME]
        logged = [json.loads(line)["kind"] for line in lines if '"dashboard_' in line]
        assert logged == kinds
        text = json.dumps(events) + "\n".join(lines)
        for secret in (h.running.admin_token, cookie, browser.csrf):
            assert secret and secret not in text

    with_harness(tmp_path, body)
