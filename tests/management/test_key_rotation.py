"""Rotating the signing key (``wgpy/management/keys.py``): announced in the signed maps, then switched, with the
agent's controller accepting maps from the old and the new key in the window, and tokens issued under the old key
still good after the switch. Keys from the environment win over the files."""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib

import pytest
from management_helpers import Agent, Clock, Harness, next_message

from wgpy import crypto
from wgpy.device import Device
from wgpy.management.keys import RotationError, parse_rotation
from wgpy.management.server import SIGNING_KEY_FILE, StateError, load_keys, running_replica, running_server
from wgpy.mesh import MeshController

ALL = b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _write(path: pathlib.Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def test_rotation_settings_are_validated() -> None:
    key = _b64(crypto.Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    rotation = parse_rotation(json.dumps({"next_key": key, "until": 1_900_000_000}))
    assert rotation.next_key_b64 == key and rotation.previous_key is None
    for bad in ("", "[]", '{"next_key": "AAAA", "until": 1}', json.dumps({"next_key": key}), json.dumps({"x": 1})):
        with pytest.raises(RotationError):
            parse_rotation(bad)


def test_keys_from_the_environment_win_over_the_files(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def init() -> None:
        async with running_server(tmp_path / "state"):
            pass

    asyncio.run(init())
    other = crypto.Ed25519PrivateKey.generate()
    monkeypatch.setenv("WGPY_SIGNING_KEY", _b64(other.private_bytes_raw()))
    assert (
        load_keys(tmp_path / "state").signing.public_key().public_bytes_raw() == other.public_key().public_bytes_raw()
    )
    monkeypatch.setenv("WGPY_SIGNING_KEY", "not base64!")
    with pytest.raises(StateError):
        load_keys(tmp_path / "state")
    monkeypatch.delenv("WGPY_SIGNING_KEY")
    monkeypatch.setenv("WGPY_SIGNING_ROTATION", "{}")
    with pytest.raises(StateError):
        load_keys(tmp_path / "state")


def test_announce_switch_finish(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    clock = Clock()

    async def main() -> None:
        import aiohttp

        async with running_server(state, clock=clock) as first, aiohttp.ClientSession() as http:
            h = Harness(first, http, clock)
            await h.admin("PUT", "/api/v1/policy", raw=ALL)
            key = await h.setup_key(reusable=True, usage_limit=5)
            agent, other = h.agent(), h.agent()
            assert (await agent.enrol(key)).status == 201
            assert (await other.enrol(key)).status == 201
            token, url, old_pub = first.admin_token, first.db_url, first.keys.signing.public_key()
        device = Device(agent.private)
        ctl = MeshController(old_pub)

        def apply(message: dict[str, object]) -> None:
            ctl.apply_network_map(device, message["document"], clock(), 0.0)  # type: ignore[arg-type]

        new = crypto.Ed25519PrivateKey.generate()
        until = int(clock()) + 7 * 86400
        new_b64 = _b64(new.public_key().public_bytes_raw())

        # 1. announce: still signed with the old key, every map names the next one.
        _write(state / "rotation.json", json.dumps({"next_key": new_b64, "until": until}))
        async with running_replica(state, db_url=url, admin_token=token, clock=clock) as replica:
            async with aiohttp.ClientSession() as http:
                h = Harness(replica, http, clock)
                moved = Agent(h, agent.private, agent.access_token, agent.refresh_token, agent.peer_id)
                async with moved.stream() as ws:
                    message = await next_message(ws)
                    assert message["document"]["map"]["key_rotation"] == {"next_key": new_b64, "until": until}
                    apply(message)
                    assert ctl.rotation is not None and ctl.rotation.until == until

        # 2. switch: the new key signs; tokens issued under the old one still work, and so do its maps.
        (state / SIGNING_KEY_FILE).unlink()
        _write(state / SIGNING_KEY_FILE, _b64(new.private_bytes_raw()) + "\n")
        _write(
            state / "rotation.json",
            json.dumps({"next_key": new_b64, "until": until, "previous_key": _b64(old_pub.public_bytes_raw())}),
        )
        async with running_replica(state, db_url=url, admin_token=token, clock=clock) as replica:
            async with aiohttp.ClientSession() as http:
                h = Harness(replica, http, clock)
                moved = Agent(h, agent.private, agent.access_token, agent.refresh_token, agent.peer_id)
                async with moved.stream() as ws:  # an access token signed by the old key
                    message = await next_message(ws)
                    assert message["type"] == "map"
                    apply(message)  # signed by the new key: accepted in the window
                assert (await moved.refresh()).status == 200  # a refresh token signed by the old key
                info = (await h.admin("GET", "/api/v1/info")).body
                assert info["signing_key"] == new_b64

        # 3. finish: after the window, the controller pins the new key; maps of the old key are refused.
        clock.now = until + 1
        (state / "rotation.json").unlink()
        assert ctl.accepted_keys(clock()) == (ctl.management_public_key,)
        assert ctl.management_public_key.public_bytes_raw() == new.public_key().public_bytes_raw()
        assert load_keys(state).rotation is None

    asyncio.run(main())


def test_an_agent_follows_a_rotation_across_restarts(tmp_path: pathlib.Path) -> None:
    """The real agent: it keeps the announcement in state.json, resumes with it, accepts the new key's maps in the
    window and pins the new key once the window is over."""
    import time

    import aiohttp

    from wgpy.agent.client import Backoff
    from wgpy.agent.enrol import enrol_device, resume_device
    from wgpy.agent.keystore import KeyStore, StateDir
    from wgpy.agent.runner import AgentRunner
    from wgpy.management.server import free_port

    state = tmp_path / "server"
    device_state = StateDir(tmp_path / "device")
    port = free_port()
    new = crypto.Ed25519PrivateKey.generate()
    new_b64 = _b64(new.public_key().public_bytes_raw())

    async def wait(condition: object, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.02)

    def runner_for(enrolled: object) -> AgentRunner:
        return AgentRunner(
            enrolled.enrolment,  # type: ignore[attr-defined]
            enrolled.private_key,  # type: ignore[attr-defined]
            enrolled.client,  # type: ignore[attr-defined]
            state=device_state,
            bind_address="127.0.0.1",
            on_packet=lambda _packet: None,
            initial_map=getattr(enrolled, "initial_map", None),
            backoff=Backoff(base=0.05, cap=0.3),
        )

    async def admin(url: str, token: str, method: str, path: str, data: bytes) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, url + path, data=data, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status < 300, await r.text()

    async def main() -> None:
        async with running_server(state, port=port) as first:
            token, url = first.admin_token, first.db_url
            await admin(first.url, token, "PUT", "/api/v1/policy", ALL)
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    first.url + "/api/v1/setup-keys",
                    json={"name": "k"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    key = (await r.json())["key"]
            enrolled = await enrol_device(
                device_state,
                KeyStore(device_state, keyring_backend=False),
                url=first.url,
                setup_key=key,
                management_key=first.signing_key_b64,
            )
            old_b64 = first.signing_key_b64
        until = int(time.time()) + 5  # the window must outlast steps 1 and 2 (under a second on a 2-vCPU EPYC)
        _write(state / "rotation.json", json.dumps({"next_key": new_b64, "until": until}))
        runner = runner_for(enrolled)
        await runner.start()
        try:
            async with running_replica(state, db_url=url, admin_token=token, port=port):  # 1. announce
                await wait(lambda: runner.enrolment.management_key_next == new_b64)
                assert device_state.read_enrolment().management_key_next == new_b64  # type: ignore[union-attr]
        finally:
            await runner.close()
        # 2. switch, and the agent restarts from its state directory meanwhile
        (state / SIGNING_KEY_FILE).unlink()
        _write(state / SIGNING_KEY_FILE, _b64(new.private_bytes_raw()) + "\n")
        _write(state / "rotation.json", json.dumps({"next_key": new_b64, "until": until, "previous_key": old_b64}))
        runner = runner_for(resume_device(device_state, KeyStore(device_state, keyring_backend=False)))
        await runner.start()
        try:
            async with running_replica(state, db_url=url, admin_token=token, port=port) as replica:
                applied = runner.maps_applied
                await wait(lambda: runner.connected and runner.maps_applied > applied)  # a map of the new key
                assert runner.enrolment.management_key == old_b64  # still in the window
                # 3. the window ends: the next map pins the new key, in memory and in state.json
                await asyncio.sleep(max(0.0, until - time.time()) + 0.5)
                await admin(replica.url, token, "PUT", "/api/v1/policy", b"acls: []\n")
                await wait(lambda: runner.enrolment.management_key == new_b64)
                saved = device_state.read_enrolment()
                assert saved is not None and saved.management_key == new_b64 and saved.management_key_next is None
        finally:
            await runner.close()

    asyncio.run(asyncio.wait_for(main(), 60))
