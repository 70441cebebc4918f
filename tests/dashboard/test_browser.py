"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright), against a real server.

The walk of issue #16: log in, create a setup key, enrol a peer with ``wgpy up -f`` (the command itself, with a
TUN device, in a network namespace of this test that reaches the management server over a veth pair; the server,
a production peer and the browser are on the host side) and watch it appear on the peers page without a reload,
see its path turn direct once it has talked to production, approve it, change its groups and see its map change,
revoke it and see it go offline, and find each action on the audit page. Each page is screenshotted into
``$WGPY_SCREENSHOTS`` (``docs/screenshots`` refreshes the committed ones), or a temporary folder. Skipped, with the
reason, when Chromium or Playwright is missing, or without root for the namespace (CI installs them, runs as root
and fails on any skip).
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from dashboard_helpers import (
    POLICY,
    Agent,
    Browser,
    VethNamespace,
    agent_peers,
    enrol_agent,
    run,
    run_in,
    spawn_up,
    stop_process,
    veth_namespace,
    wait_for,
)

from wgpy.management.server import running_server

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = os.environ.get("WGPY_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # pragma: no cover - the dev extras install it
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(async_playwright is None, reason="playwright is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    ),
]


# A TCP connection attempt from the namespace to production's tunnel address: the SYN goes through the TUN device
# and the tunnel to production (nobody answers the SYN: the attempt times out, as expected).
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 22), timeout=2).close()
except OSError:
    pass
"""


@pytest.fixture
def namespace() -> Iterator[VethNamespace]:
    yield from veth_namespace("wgpyd")


def _screenshots(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = pathlib.Path(os.environ.get("WGPY_SCREENSHOTS", str(tmp_path / "screenshots")))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _row(page: Page, name: str) -> object:
    return page.locator(f'#peers-table tr[data-name="{name}"]')


def test_the_admin_walk(tmp_path: pathlib.Path, namespace: VethNamespace) -> None:
    shots = _screenshots(tmp_path)
    interface = "wgd" + secrets.token_hex(3)  # unique: /var/run/wireguard is not per namespace

    async def scenario() -> None:
        async with (
            running_server(tmp_path / "server", host=namespace.host) as server,
            async_playwright() as playwright,
        ):
            http = Browser(server)
            agents: list[Agent] = []
            processes = []
            context = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"),  # a fresh --user-data-dir
                executable_path=CHROMIUM,
                headless=True,
                args=ARGS,
                viewport={"width": 1280, "height": 800},
            )
            try:
                status, _ = await http.api("PUT", "/api/v1/policy", yaml=POLICY)
                assert status == 200
                # A server the laptop may reach, enrolled and online before the admin logs in.
                status, prod_key = await http.api(
                    "POST", "/api/v1/setup-keys", json={"name": "prod-key", "auto_groups": ["production"]}
                )
                assert status == 201 and isinstance(prod_key, dict)
                # On the host side of the veth: the laptop in the namespace reaches its endpoint.
                agents.append(await enrol_agent(server, tmp_path, "prod", str(prod_key["key"]), namespace.host))

                page = context.pages[0] if context.pages else await context.new_page()
                page.set_default_timeout(10_000)
                errors: list[str] = []
                # Script errors and CSP violations (a refused login, say, logs its 401 too: those are expected).
                page.on(
                    "console",
                    lambda message: (
                        errors.append(message.text)
                        if message.type == "error" and not message.text.startswith("Failed to load resource")
                        else None
                    ),
                )
                page.on("pageerror", lambda error: errors.append(str(error)))

                # -- log in ---------------------------------------------------------------------------------------
                await page.goto(server.url + "/")
                await expect(page).to_have_url(server.url + "/login?next=%2Fpeers")
                await page.screenshot(path=str(shots / "login.png"))
                await page.get_by_label("Admin token").fill("wgat_wrong")
                await page.keyboard.press("Enter")
                await expect(page.get_by_role("alert")).to_contain_text("not a valid admin token")
                await page.get_by_label("Admin token").fill(server.admin_token)
                await page.get_by_role("button", name="Log in").click()
                await expect(page).to_have_url(server.url + "/peers")
                await expect(page.get_by_role("heading", name="Peers")).to_be_visible()
                cookies = await context.cookies()
                assert next(c for c in cookies if c["name"] == "wgpy_session")["httpOnly"]
                assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it

                # -- create a setup key (keyboard only) -----------------------------------------------------------
                await page.get_by_role("link", name="Setup keys").click()
                await page.get_by_label("Name", exact=True).fill("laptop-key")
                await page.get_by_label("Groups given to its peers").fill("developers")
                await page.get_by_label("Peers need approval").focus()
                await page.keyboard.press("Space")
                await page.get_by_label("Expires in").select_option(label="7 days")
                await page.get_by_role("button", name="Create setup key").focus()
                await page.keyboard.press("Enter")
                key = await page.get_by_label("Setup key", exact=True).input_value()
                assert key.startswith("wgsk_")
                row = page.locator("table.keys tr", has_text="laptop-key")
                await expect(row).to_contain_text("one-off")
                await expect(row).to_contain_text("required")
                await page.screenshot(path=str(shots / "setup-keys.png"), full_page=True)
                await page.reload()  # a reload shows the key no more, and creates no second one
                assert key not in await page.content()
                await expect(page.locator("table.keys tr", has_text="laptop-key")).to_have_count(1)

                # -- enrol with wgpy up in the namespace and watch the peer appear live ------------------------------
                await page.get_by_role("link", name="Peers").click()
                await expect(page.locator("#live-status")).to_contain_text("on")
                await page.evaluate("window.notReloaded = true")
                laptop_state = tmp_path / "laptop"
                processes.append(
                    await spawn_up(server, laptop_state, key, "laptop", namespace=namespace.name, interface=interface)
                )
                row = page.locator('#peers-table tr[data-name="laptop"]')
                await expect(row).to_be_visible()
                await expect(row.locator(".approval")).to_have_text("pending")
                await expect(row.locator(".status")).to_have_text("online")  # a pending peer keeps its stream open
                assert await page.evaluate("window.notReloaded === true")
                laptop_id = str(await row.get_attribute("data-peer"))
                prod_public = agents[0].runner.device.public_key
                assert prod_public is not None
                prod_key = prod_public.to_base64()

                # Search and sort.
                await page.get_by_label("Search peers").fill("prod")
                await page.keyboard.press("Enter")
                await expect(page.locator("#peers-table tbody tr")).to_have_count(1)
                await page.get_by_label("Search peers").fill("")
                await page.keyboard.press("Enter")
                await page.get_by_role("link", name="Name").click()
                await expect(page.locator("th[aria-sort='descending']")).to_contain_text("Name")
                names = await page.locator("#peers-table tbody tr").evaluate_all(
                    "rows => rows.map(r => r.dataset.name)"
                )
                assert names == ["prod", "laptop"]

                # -- approve ----------------------------------------------------------------------------------------
                await page.get_by_role("button", name="Approve laptop").click()
                await expect(page.locator("#peer-approval")).to_have_text("approved")
                await expect(page.locator("#peer-map")).to_contain_text("prod")  # developers -> production
                await wait_for(lambda: agent_peers(laptop_state) == [prod_key])  # wgpy up got its first map
                await page.goto(server.url + "/peers")
                await page.evaluate("window.notReloaded = true")
                row = page.locator('#peers-table tr[data-name="laptop"]')
                await expect(row.locator(".approval")).to_have_text("approved")
                # The two agents exchange candidates through the server and punch (a handshake initiation to each
                # candidate), and traffic from the namespace through the TUN device needs the session too: the
                # handshake happens on the veth (no relay exists here), both agents report the path, and the page
                # shows it without a reload.
                prod_address = agents[0].runner.enrolment.address
                assert await run_in(namespace.name, sys.executable, "-c", CONNECT, prod_address) == 0
                await expect(row.locator(".path")).to_have_text("direct")
                await expect(row.locator(".path span")).to_have_attribute("title", "direct to prod")
                await expect(page.locator('#peers-table tr[data-name="prod"] .path')).to_have_text("direct")
                assert await page.evaluate("window.notReloaded === true")
                await page.screenshot(path=str(shots / "peers.png"), full_page=True)

                # -- change its groups and see its map change ------------------------------------------------------
                await page.get_by_role("link", name="Manage laptop").click()
                await page.get_by_label("Groups", exact=True).fill("guests")
                await page.get_by_role("button", name="Save").click()
                await expect(page.locator("#peer-groups")).to_have_text("guests")
                await expect(page.locator("#peer-map")).to_contain_text("none")
                await expect(page.locator("#peer-map")).not_to_contain_text("prod")
                await wait_for(lambda: agent_peers(laptop_state) == [])  # and wgpy up got the new map
                await page.screenshot(path=str(shots / "peer.png"), full_page=True)
                await page.get_by_role("link", name="Network").click()
                await expect(page.locator('table.groups tr[data-group="guests"] .members')).to_have_text("laptop")
                await expect(page.locator('table.groups tr[data-group="developers"] .reach')).to_have_text("production")
                await expect(page.locator('svg line[data-src="developers"][data-dst="production"]')).to_have_count(1)
                await page.screenshot(path=str(shots / "network.png"), full_page=True)
                await page.go_back()
                await page.get_by_label("Groups", exact=True).fill("developers, production")
                await page.get_by_label("Name", exact=True).fill("laptop-2")
                await page.get_by_role("button", name="Save").click()
                await expect(page.locator("h1")).to_contain_text("laptop-2")
                await expect(page.locator("#peer-map")).to_contain_text("prod")
                await wait_for(lambda: agent_peers(laptop_state) == [prod_key])

                # -- a change made elsewhere (the API, not this page) is pushed to the open page -------------------
                await page.goto(server.url + "/peers")
                await page.evaluate("window.notReloaded = true")
                await expect(page.locator("#live-status")).to_contain_text("on")
                status, _renamed = await http.api(
                    "PATCH", f"/api/v1/peers/{agents[0].peer_id}", json={"name": "prod-1"}
                )
                assert status == 200
                await expect(page.locator('#peers-table tr[data-name="prod-1"]')).to_be_visible()
                assert await page.evaluate("window.notReloaded === true")

                # -- revoke with a confirmation and see it go offline live -----------------------------------------
                other = await context.new_page()
                await other.goto(server.url + "/peers/" + laptop_id)
                await other.get_by_role("link", name="Revoke this peer").click()
                await expect(other.get_by_role("heading")).to_contain_text("Revoke peer laptop-2?")
                await other.get_by_role("link", name="Cancel").click()
                await expect(other.locator("#peer-approval")).to_have_text("approved")
                await other.get_by_role("link", name="Revoke this peer").click()
                await other.get_by_role("button", name="Yes, revoke laptop-2").click()
                await expect(other.locator("#peer-approval")).to_have_text("revoked")
                await other.close()
                row = page.locator('#peers-table tr[data-name="laptop-2"]')
                await expect(row.locator(".approval")).to_have_text("revoked")  # on the first page, live
                await expect(row.locator(".status")).to_have_text("offline")
                assert await page.evaluate("window.notReloaded === true")
                await wait_for(lambda: agent_peers(laptop_state) == [])  # wgpy up dropped every peer

                # -- the policy page: an error at its line, then the rules in force --------------------------------
                await page.get_by_role("link", name="Policy").click()
                await expect(page.locator("table.rules")).to_contain_text("dev-to-prod")
                text = await page.get_by_label("Policy (YAML)").input_value()
                await page.get_by_label("Policy (YAML)").fill(text.replace("proto: tcp", "proto: sctp"))
                await page.get_by_role("button", name="Validate and save").click()
                await expect(page.get_by_role("alert")).to_contain_text("line 6")
                await expect(page.locator(".listing li.bad")).to_contain_text("proto: sctp")
                await page.screenshot(path=str(shots / "policy.png"), full_page=True)
                await page.get_by_label("Policy (YAML)").fill(
                    text.replace('["22", "443"]', '["22", "443", "8000-8100"]')
                )
                await page.get_by_role("button", name="Validate and save").click()
                await expect(page.locator("table.rules")).to_contain_text("8000-8100")

                # -- every action is in the audit log ---------------------------------------------------------------
                await page.get_by_role("link", name="Audit log").click()
                kinds = await page.locator("table.audit tbody tr").evaluate_all("rows => rows.map(r => r.dataset.kind)")
                for kind in (
                    "setup_key_created",
                    "enrol",
                    "peer_approved",
                    "peer_updated",
                    "peer_revoked",
                    "policy_set",
                ):
                    assert kind in kinds, kind
                await page.screenshot(path=str(shots / "audit.png"), full_page=True)
                await page.get_by_label("Kind").select_option("peer_updated")
                await page.get_by_label("Peer (name or id)").fill("laptop-2")
                await page.get_by_role("button", name="Filter").click()
                rows = page.locator("table.audit tbody tr")
                await expect(rows).to_have_count(2)
                await expect(rows.first).to_contain_text("laptop-2")  # newest first: the rename
                await expect(rows.last).to_contain_text("guests")

                # -- a phone-sized window: the peers page still reads -----------------------------------------------
                await page.set_viewport_size({"width": 390, "height": 844})
                await page.goto(server.url + "/peers")
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, width
                await page.screenshot(path=str(shots / "peers-phone.png"), full_page=True)

                # -- log out -------------------------------------------------------------------------------------
                await page.get_by_role("button", name="Log out").click()
                await expect(page).to_have_url(server.url + "/login")
                await page.goto(server.url + "/audit")
                await expect(page).to_have_url(server.url + "/login?next=%2Faudit")
                assert not errors, errors  # no CSP violation, no script error
            finally:
                await context.close()
                for agent in agents:
                    agent.runner.stop()
                    await agent.runner.close()
                for process, log in processes:
                    output = await stop_process(process, log)
                    assert "Traceback" not in output, output
                await http.close()

    run(scenario, timeout=150)
