"""The agent's path report (``{"type": "paths"}`` on the map stream, docs/management-api.md "Path report"): kept
only about peers in the reporter's own map, bounded, unknown fields ignored and every drop counted, listed by the
API while the peer is connected, and a bad report never closes the stream."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from typing import Any

import aiohttp
import pytest
from management_helpers import Harness, next_message, with_harness

from wgpy.management.api import PATH_REPORT_INTERVAL
from wgpy.management.pathreport import MAX_PATH_PEERS, PathReportError, parse_path_report, summary

POLICY = b"""\
groups: [developers, production, guests]
acls:
  - {name: dev-to-prod, src: [developers], dst: [production], action: accept}
"""
KEY_A = "A" * 43 + "="
KEY_B = "B" * 43 + "="


def test_a_report_keeps_only_peers_of_the_map_and_known_states() -> None:
    report = parse_path_report(
        {
            "type": "paths",
            "paths": {KEY_A: "relayed", KEY_B: "direct", "short": "direct", "C" * 43 + "=": "teleported"},
            "note": "x",
        },
        allowed={KEY_A, "C" * 43 + "="},
    )
    assert dict(report.paths) == {KEY_A: "relayed"}
    assert report.dropped == 3  # KEY_B is not in the map, "short" is no key, "teleported" is no state
    assert report.ignored_fields == 1


def test_a_report_about_the_reporter_itself_is_dropped() -> None:
    # A map lists its own peer too: the reporter's own key is in the map's keys, but it has no path to itself.
    report = parse_path_report({"type": "paths", "paths": {KEY_A: "direct", KEY_B: "direct"}}, {KEY_A, KEY_B}, KEY_A)
    assert dict(report.paths) == {KEY_B: "direct"}
    assert report.dropped == 1


@pytest.mark.parametrize("paths", [None, [], "direct", {f"{n:043d}=": "direct" for n in range(MAX_PATH_PEERS + 1)}])
def test_what_is_not_a_report_is_refused_whole(paths: object) -> None:
    with pytest.raises(PathReportError):
        parse_path_report({"type": "paths", "paths": paths}, allowed=())


def test_the_summary_word() -> None:
    assert summary(None) is None and summary({}) is None
    assert summary({KEY_A: "direct", KEY_B: "direct"}) == "direct"
    assert summary({KEY_A: "relayed"}) == "relayed"
    assert summary({KEY_A: "direct", KEY_B: "relayed"}) == "mixed"
    assert summary({KEY_A: "checking"}) == "checking"
    assert summary({KEY_A: "checking", KEY_B: "relayed"}) == "relayed"  # a settled path says more than a check


async def _pong(ws: aiohttp.ClientWebSocketResponse) -> None:
    """A ping answered means every frame sent before it was handled (the server reads a stream in order)."""
    await ws.send_json({"type": "ping"})
    while (message := await next_message(ws))["type"] != "pong":
        assert message["type"] == "map", message


async def _listed(h: Harness) -> dict[str, Any]:
    answer = await h.admin("GET", "/api/v1/peers")
    assert answer.status == 200
    return {peer["name"]: peer for peer in answer.body}


def test_the_api_lists_what_the_agent_reported_about_its_own_map(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=POLICY, content_type="application/yaml")
        dev, prod, guest = h.agent(), h.agent(), h.agent()
        for agent, name, group in (
            (dev, "dev", "developers"),
            (prod, "prod", "production"),
            (guest, "guest", "guests"),
        ):
            assert (await agent.enrol(await h.setup_key(auto_groups=[group]), name=name)).status == 201
        counts = h.running.server.path_reports
        async with dev.stream() as ws:
            assert (await next_message(ws))["type"] == "map"
            listed = await _listed(h)
            assert listed["dev"]["online"] and listed["dev"]["path"] is None and listed["dev"]["paths"] == {}
            # prod is in dev's map; guest is not (no rule between them); the made-up key and the state are dropped.
            await ws.send_json(
                {
                    "type": "paths",
                    "paths": {prod.public_key: "relayed", guest.public_key: "direct", KEY_A: "direct"},
                    "agent_version": "9",
                }
            )
            await _pong(ws)
            listed = await _listed(h)
            assert listed["dev"]["path"] == "relayed"
            assert listed["dev"]["paths"] == {prod.public_key: "relayed"}
            assert listed["prod"]["path"] is None  # prod is not connected: nothing reported
            assert (counts["accepted"], counts["dropped_entries"], counts["ignored_fields"]) == (1, 2, 1)

            # A second report at once is dropped (one per PATH_REPORT_INTERVAL), the listing keeps the first.
            await ws.send_json({"type": "paths", "paths": {prod.public_key: "direct"}})
            await _pong(ws)
            assert counts["too_frequent"] == 1
            assert (await _listed(h))["dev"]["path"] == "relayed"
            h.clock.now += PATH_REPORT_INTERVAL
            for bad in ([prod.public_key], {f"{n:043d}=": "direct" for n in range(MAX_PATH_PEERS + 1)}):
                await ws.send_json({"type": "paths", "paths": bad})
                await _pong(ws)  # the stream stays open: a bad report is a counted drop
            assert counts["refused"] == 2
            await ws.send_json({"type": "paths", "paths": {prod.public_key: "direct"}})
            await _pong(ws)
            listed = await _listed(h)
            assert listed["dev"]["path"] == "direct" and listed["dev"]["paths"] == {prod.public_key: "direct"}
            # A policy that takes prod out of dev's map: the entry about prod goes with the map that drops it.
            await h.admin("PUT", "/api/v1/policy", raw=b"acls: []\n", content_type="application/yaml")
            pushed = await next_message(ws)
            assert pushed["type"] == "map" and len(pushed["document"]["map"]["peers"]) == 1  # itself only
            listed = await _listed(h)
            assert listed["dev"]["path"] is None and listed["dev"]["paths"] == {}
        # A frame nested thousands deep (it fits the 64 KiB frame limit) is not a message: the stream closes with
        # 1008 like any frame that is not JSON, and the server carries on (no internal error).
        async with dev.stream() as ws:
            assert (await next_message(ws))["type"] == "map"
            await ws.send_str('{"type": "paths", "paths": ' + "[" * 20000 + "]" * 20000 + "}")
            assert (await next_message(ws))["code"] == 1008
        await h.running.server.hub.settle()
        for _ in range(100):  # the stream's end is handled by the server's task: bounded wait for it
            if not (await _listed(h))["dev"]["online"]:
                break
            await asyncio.sleep(0.02)
        listed = await _listed(h)
        assert not listed["dev"]["online"] and listed["dev"]["path"] is None  # offline: no path shown
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text  # no internal error

    with_harness(tmp_path, body)
