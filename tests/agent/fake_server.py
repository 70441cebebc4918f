"""A small stand-in for the management server's peer endpoints, for the agent's tests.

It speaks the peer half of ``docs/management-api.md`` on 127.0.0.1: ``/api/v1/info``, ``enrol``,
``token/refresh``, ``peer/map``, ``peer/endpoint``, ``peer/logout`` and the ``peer/stream`` WebSocket. Every
request's proof is checked with the real verifier (``wgpy.management.proof.verify_proof`` and ``NonceCache``), so
the agent's signing is tested against the code the server uses. Maps are signed with ``sign_network_map``. Tokens
are JWT-shaped (``header.payload.sig``; nothing verifies the signature part) so that the agent can read ``exp``.

Test hooks: ``revoke(peer_id)`` (with the signed notice of ``wgpy.mesh.revocation``), ``say_revoked(peer_id,
notice)`` (what someone on the path could send: the frame and the 4001 close, with any notice or none, the peer
not revoked), ``push_all()``, ``sign_with`` (another key), ``fail_status`` (answer every request with this status),
``forged_403`` (answer every peer request 403 ``revoked`` with this notice; ``None``: no notice), ``cut_off(peer_id)``
and ``away`` (a peer that cannot reach the server),
``access_lifetime`` and ``map_lifetime``, and ``requests`` (every request as received).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from wgpy.crypto import Ed25519PrivateKey
from wgpy.keys import PrivateKey, PublicKey
from wgpy.management.proof import NonceCache, ProofError, verify_proof
from wgpy.mesh import sign_network_map
from wgpy.mesh.revocation import sign_revocation

SEED_ACL: list[dict[str, object]] = [
    {"name": "allow-dev-to-prod", "src_groups": ["developers"], "dst_groups": ["production"], "protocol": "tcp", "ports": [22, 443], "action": "accept"},
    {"name": "deny-all-other", "src_groups": ["*"], "dst_groups": ["*"], "protocol": "all", "action": "deny"},
]  # fmt: skip


@dataclass
class FakePeer:
    id: str
    public_key: str
    name: str
    address: str
    groups: list[str]
    endpoint: dict[str, object] | None = None
    revoked: bool = False


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeServer:
    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    proof_private: PrivateKey = field(default_factory=PrivateKey.generate)
    network: str = "100.64.0.0/16"
    access_lifetime: int = 3600
    map_lifetime: int = 900
    acl: list[dict[str, object]] = field(default_factory=lambda: list(SEED_ACL))
    setup_keys: dict[str, list[str]] = field(default_factory=dict)
    peers: dict[str, FakePeer] = field(default_factory=dict)
    sign_with: Ed25519PrivateKey | None = None
    fail_status: int | None = None
    forged_403: object = False  # False: off; None or a notice: every peer request is refused 403 "revoked" with it
    away: set[str] = field(default_factory=set)  # peer ids cut off from the server: their requests fail with 503
    requests: list[Recorded] = field(default_factory=list)
    acks: list[tuple[str, int]] = field(default_factory=list)
    refreshes: int = 0
    stream_connects: int = 0  # streams opened, all peers
    port: int = 0

    def __post_init__(self) -> None:
        self._nonces = NonceCache()
        self._refresh: dict[str, tuple[str, bool]] = {}  # token -> (peer id, used)
        self._access: dict[str, tuple[str, float]] = {}
        self._serial = 0
        self._streams: dict[str, set[web.WebSocketResponse]] = {}
        self._runner: web.AppRunner | None = None

    # --- helpers --------------------------------------------------------------------------------------------------

    @property
    def management_key_b64(self) -> str:
        return base64.b64encode(self.signing_key.public_key().public_bytes_raw()).decode()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_setup_key(self, groups: list[str]) -> str:
        key = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self.setup_keys[key] = groups
        return key

    def _token(self, peer_id: str, typ: str, lifetime: int) -> str:
        now = int(time.time())
        payload = {"sub": peer_id, "typ": typ, "iat": now, "exp": now + lifetime, "jti": os.urandom(8).hex()}
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJFZERTQSJ9.{body}.c2ln"

    def _issue(self, peer_id: str) -> dict[str, str]:
        access = self._token(peer_id, "access", self.access_lifetime)
        refresh = self._token(peer_id, "refresh", 7 * 86400)
        self._access[access] = (peer_id, time.time() + self.access_lifetime)
        self._refresh[refresh] = (peer_id, False)
        return {"access_token": access, "refresh_token": refresh}

    def build_map(self, peer: FakePeer) -> dict[str, object]:
        self._serial += 1
        now = int(time.time())
        peers = [
            {
                "public_key": p.public_key,
                "allowed_ips": [f"{p.address}/32"],
                "endpoint": p.endpoint,
                "groups": p.groups,
                "relay": False,
            }
            for p in self.peers.values()
            if not p.revoked
        ]
        body = {
            "version": 1,
            "serial": self._serial,
            "issued_at": now,
            "expires_at": now + self.map_lifetime,
            "peers": peers,
            "acl": self.acl,
        }
        return sign_network_map(body, self.sign_with or self.signing_key)

    @staticmethod
    def error(status: int, code: str, detail: str) -> web.Response:
        return web.json_response({"error": code, "detail": detail}, status=status)

    async def _check(self, request: web.Request, body: bytes, *, token: bool) -> FakePeer | web.Response:
        self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers), body))
        if self.forged_403 is not False and request.path != "/api/v1/info":
            extra = {} if self.forged_403 is None else {"notice": self.forged_403}
            return web.json_response({**extra, "error": "revoked", "detail": "the peer is revoked"}, status=403)
        if self.fail_status is not None:
            return self.error(self.fail_status, "injected", "a failure the test asked for")
        peer: FakePeer | None = None
        if token:
            auth = request.headers.get("Authorization", "")
            entry = self._access.get(auth.removeprefix("Bearer "))
            if entry is None or entry[1] < time.time():
                return self.error(401, "bad_token", "no valid access token")
            peer = self.peers.get(entry[0])
            if peer is None:
                return self.error(401, "bad_token", "unknown peer")
            if peer.id in self.away:
                return self.error(503, "unavailable", "cut off")
            if peer.revoked:
                return self.revoked_error(peer)
        try:
            proof = verify_proof(
                request.headers,
                self.proof_private,
                request.method,
                request.raw_path,
                body,
                now=time.time(),
                expected_key=PublicKey.from_base64(peer.public_key) if peer is not None else None,
            )
            self._nonces.remember(proof, time.time())
        except ProofError as exc:
            return self.error(401, exc.code, exc.detail)
        if peer is None:
            return FakePeer("", proof.public_key.to_base64(), "", "", [])
        return peer

    # --- routes ---------------------------------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        proof_public = self.proof_private.public_key().raw
        return web.json_response(
            {
                "signing_key": self.management_key_b64,
                "proof_key": base64.b64encode(proof_public).decode(),
                "proof_key_signature": base64.b64encode(self.signing_key.sign(proof_public)).decode(),
                "network": self.network,
            }
        )

    async def enrol(self, request: web.Request) -> web.Response:
        body = await request.read()
        checked = await self._check(request, body, token=False)
        if isinstance(checked, web.Response):
            return checked
        value = json.loads(body)
        groups = self.setup_keys.pop(value.get("setup_key"), None)
        if groups is None:
            return self.error(401, "bad_setup_key", "the setup key is unknown, used or expired")
        if value.get("public_key") != checked.public_key:
            return self.error(401, "bad_proof", "the proof is not made with the enrolled key")
        network = ipaddress.ip_network(self.network)
        used = {p.address for p in self.peers.values()}
        address = next(str(a) for a in network.hosts() if str(a) not in used)
        peer_id = f"p{len(self.peers) + 1}"
        endpoint = value.get("endpoint")
        peer = FakePeer(peer_id, checked.public_key, value.get("name") or peer_id, address, groups, endpoint)
        self.peers[peer_id] = peer
        tokens = self._issue(peer_id)
        await self.push_all(exclude=peer_id)
        return web.json_response(
            {"peer": {"id": peer_id, "name": peer.name, "address": address}, **tokens, "map": self.build_map(peer)},
            status=201,
        )

    async def refresh(self, request: web.Request) -> web.Response:
        body = await request.read()
        checked = await self._check(request, body, token=False)
        if isinstance(checked, web.Response):
            return checked
        token = json.loads(body).get("refresh_token")
        entry = self._refresh.get(token)
        if entry is None:
            return self.error(401, "bad_token", "unknown refresh token")
        peer_id, used = entry
        if used:
            return self.error(401, "token_reuse", "refresh token used twice: family revoked")
        if peer_id in self.away:
            return self.error(503, "unavailable", "cut off")
        peer = self.peers.get(peer_id)
        if peer is None or peer.public_key != checked.public_key:
            return self.error(401, "bad_token", "the token is not this peer's")
        if peer.revoked:
            return self.revoked_error(peer)
        self._refresh[token] = (peer_id, True)
        self.refreshes += 1
        return web.json_response(self._issue(peer_id))

    async def get_map(self, request: web.Request) -> web.Response:
        checked = await self._check(request, b"", token=True)
        if isinstance(checked, web.Response):
            return checked
        return web.json_response(self.build_map(checked))

    async def endpoint(self, request: web.Request) -> web.Response:
        body = await request.read()
        checked = await self._check(request, body, token=True)
        if isinstance(checked, web.Response):
            return checked
        value = json.loads(body)
        checked.endpoint = {"host": value["host"], "port": value["port"]}
        await self.push_all(exclude=checked.id)
        return web.Response(status=204)

    async def logout(self, request: web.Request) -> web.Response:
        checked = await self._check(request, b"", token=True)
        if isinstance(checked, web.Response):
            return checked
        del self.peers[checked.id]
        await self.push_all()
        return web.Response(status=204)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        checked = await self._check(request, b"", token=True)
        if isinstance(checked, web.Response):
            return checked
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._streams.setdefault(checked.id, set()).add(ws)
        self.stream_connects += 1
        try:
            document = self.build_map(checked)
            await ws.send_str(json.dumps({"type": "map", "serial": document["map"]["serial"], "document": document}))  # type: ignore[index]
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                value = json.loads(message.data)
                if value.get("type") == "ack":
                    self.acks.append((checked.id, int(value["serial"])))
                elif value.get("type") == "ping":
                    await ws.send_str('{"type":"pong"}')
        finally:
            self._streams.get(checked.id, set()).discard(ws)
        return ws

    # --- control --------------------------------------------------------------------------------------------------

    async def push_all(self, exclude: str | None = None) -> None:
        for peer_id, sockets in list(self._streams.items()):
            peer = self.peers.get(peer_id)
            if peer is None or peer_id == exclude or peer.revoked:
                continue
            for ws in list(sockets):
                document = self.build_map(peer)
                serial: Any = document["map"]["serial"]  # type: ignore[index]
                await ws.send_str(json.dumps({"type": "map", "serial": serial, "document": document}))

    def notice(self, peer: FakePeer, key: Ed25519PrivateKey | None = None) -> dict[str, object]:
        return sign_revocation(
            key or self.signing_key, peer_id=peer.id, public_key=peer.public_key, reason="revoked",
            issued_at=int(time.time()),
        )  # fmt: skip

    def revoked_error(self, peer: FakePeer) -> web.Response:
        return web.json_response(
            {"error": "revoked", "detail": "the peer is revoked", "notice": self.notice(peer)}, status=403
        )

    async def revoke(self, peer_id: str) -> None:
        peer = self.peers[peer_id]
        peer.revoked = True
        for ws in list(self._streams.get(peer_id, ())):
            await ws.send_str(json.dumps({"type": "revoked", "notice": self.notice(peer)}))
            await ws.close(code=4001)
        await self.push_all()

    async def cut_off(self, peer_id: str) -> None:
        """The peer loses the server (its streams close, its requests fail with 503) until ``away`` forgets it."""
        self.away.add(peer_id)
        for ws in list(self._streams.get(peer_id, ())):
            await ws.close(code=1001)

    async def say_revoked(self, peer_id: str, notice: object = None) -> None:
        """The revocation frame and close code on the peer's streams, the peer left as it is."""
        frame: dict[str, object] = {"type": "revoked"} if notice is None else {"type": "revoked", "notice": notice}
        for ws in list(self._streams.get(peer_id, ())):
            await ws.send_str(json.dumps(frame))
            await ws.close(code=4001)

    def connected(self, peer_id: str) -> bool:
        return bool(self._streams.get(peer_id))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/info", self.info)
        app.router.add_post("/api/v1/enrol", self.enrol)
        app.router.add_post("/api/v1/token/refresh", self.refresh)
        app.router.add_get("/api/v1/peer/map", self.get_map)
        app.router.add_post("/api/v1/peer/endpoint", self.endpoint)
        app.router.add_post("/api/v1/peer/logout", self.logout)
        app.router.add_get("/api/v1/peer/stream", self.stream)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for sockets in list(self._streams.values()):
            for ws in list(sockets):
                await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
