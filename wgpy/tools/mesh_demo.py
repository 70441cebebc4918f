"""``wgpy demo --mesh``: the security model's mesh, live, in one process and without root.

It starts a management server on 127.0.0.1 (SQLite in a temporary folder), sets the security model's policy
(developers may reach production on tcp/22 and tcp/443, everything else is denied), creates one setup key per
group and enrols three peers over the HTTP API with the agent's own code (``enrol_device``): developer-laptop
(developers), production-server (production) and other. Each peer is an ``AgentRunner`` with a real UDP tunnel on
127.0.0.1 and no TUN device; its maps arrive over the WebSocket stream and are applied by its ``MeshController``.

Then it injects TCP SYNs as IP packets into the senders' tunnels and shows what arrives where: the laptop reaches
production on tcp/22 and tcp/443 and the SYN-ACKs come back through connection tracking; tcp/80, other ->
production and production -> laptop new connections are denied (with the filter's rule and default-deny
counters). Last, the admin API revokes the laptop: production's next map no longer lists it, the laptop drops
all peers, and its packets stop, all within a second. Exit status 0 when every check held.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json as _json
import pathlib
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from ..agent.client import Backoff
from ..agent.enrol import enrol_device
from ..agent.keystore import KeyStore, StateDir
from ..agent.runner import AgentRunner, RunnerExit
from ..errors import DropReason

__all__ = ["POLICY", "run_mesh_demo", "tcp_packet", "tcp_summary"]

POLICY = """\
groups: [developers, production, other]
acls:
  - name: allow-dev-to-prod
    src: ["developers"]
    dst: ["production"]
    proto: tcp
    ports: ["22", "443"]
    action: accept
  - name: deny-all-other
    src: ["*"]
    dst: ["*"]
    action: deny
"""
PEERS = (("developer-laptop", "developers"), ("production-server", "production"), ("other", "other"))
SYN, ACK = 0x02, 0x10
REVOKE_DEADLINE = 1.0  # seconds in which revocation must take effect (the brief's bound)


def tcp_packet(src: str, dst: str, sport: int, dport: int, flags: int = SYN) -> bytes:
    """An IPv4 TCP segment without payload (checksums zero: only the peers' filters parse it)."""
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(segment),
        0,
        0,
        64,
        6,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + segment


def tcp_summary(packet: bytes) -> tuple[str, str, int, int, int] | None:
    """``(src, dst, sport, dport, flags)`` of an IPv4 TCP packet, else ``None``."""
    if len(packet) < 40 or packet[0] >> 4 != 4 or packet[9] != 6:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 14:
        return None
    sport, dport = struct.unpack_from("!HH", packet, ihl)
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return src, dst, sport, dport, packet[ihl + 13]


@dataclass
class _Peer:
    name: str
    group: str
    runner: AgentRunner
    received: list[tuple[str, str, int, int, int]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.runner.enrolment.address

    def counters(self) -> str:
        mesh = self.runner.mesh
        if mesh is None:
            return "-"
        stats = mesh.controller.filter.stats
        accepted = ", ".join(f"{k}={v}" for k, v in sorted(stats.accepted.items())) or "none"
        denied = ", ".join(f"{k}={v}" for k, v in sorted(stats.denied.items())) or "none"
        return f"accepted [{accepted}] denied [{denied}]"


class _Out:
    """The demo's lines, stamped with the seconds since it started, handed to the caller's ``say``."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.start = time.monotonic()

    def __call__(self, text: str = "", *, stamp: bool = True) -> None:
        prefix = f"[{time.monotonic() - self.start:5.2f}s] " if stamp and text else ""
        self.say(prefix + text)


async def _wait(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``condition()`` held, or ``None`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            return None
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def run_mesh_demo(say: Callable[[str], None]) -> int:
    """Run the demo, reporting each line through ``say``; returns the exit status (0: every check held)."""
    from ..management.server import running_server

    out = _Out(say)
    checks: list[tuple[str, bool]] = []

    def check(label: str, ok: bool) -> bool:
        checks.append((label, ok))
        return ok

    out(
        "wgpy mesh demo: a management server and three peers in one process, WireGuard over UDP on 127.0.0.1",
        stamp=False,
    )
    with tempfile.TemporaryDirectory(prefix="wgpy-mesh-demo-") as folder:
        root = pathlib.Path(folder)
        async with running_server(root / "server") as server, aiohttp.ClientSession() as http:
            admin = {"Authorization": f"Bearer {server.admin_token}"}
            out(f"management server on {server.url}, SQLite in {root / 'server'}")
            out(f"management key (pinned by every peer): {server.signing_key_b64}")

            async def admin_call(
                method: str, path: str, *, json: object = None, yaml: str | None = None
            ) -> tuple[int, object]:
                headers = dict(admin)
                data = None
                if yaml is not None:
                    headers["Content-Type"] = "application/yaml"
                    data = yaml.encode("utf-8")
                async with http.request(method, server.url + path, headers=headers, data=data, json=json) as answer:
                    raw = await answer.read()
                    try:
                        body: object = _json.loads(raw) if raw else None
                    except ValueError:
                        body = None
                    return answer.status, body

            status, _ = await admin_call("PUT", "/api/v1/policy", yaml=POLICY)
            if not check("policy accepted", status == 200):
                out(f"the server refused the policy ({status})")
                return 1
            out(
                "policy: allow-dev-to-prod (developers -> production, tcp/22 and tcp/443), deny-all-other; default deny"
            )

            peers: dict[str, _Peer] = {}
            try:
                for name, group in PEERS:
                    status, body = await admin_call(
                        "POST", "/api/v1/setup-keys", json={"name": f"{name}-key", "auto_groups": [group]}
                    )
                    if status != 201 or not isinstance(body, dict):
                        check(f"setup key for {group}", False)
                        out(f"cannot create a setup key ({status})")
                        return 1
                    state = StateDir(root / name)
                    enrolled = await enrol_device(
                        state,
                        KeyStore(state, keyring_backend=False),  # a demo never touches the user's keyring
                        url=server.url,
                        setup_key=str(body["key"]),
                        management_key=server.signing_key_b64,
                        name=name,
                    )
                    holder: list[_Peer] = []

                    def deliver(packet: bytes, holder: list[_Peer] = holder) -> None:
                        peer = holder[0]
                        summary = tcp_summary(packet)
                        if summary is None:
                            return
                        peer.received.append(summary)
                        src, dst, sport, dport, flags = summary
                        if flags == SYN:  # answer as a listening TCP would: SYN-ACK
                            peer.runner.tunnel.send_packet(tcp_packet(dst, src, dport, sport, SYN | ACK))

                    runner = AgentRunner(
                        enrolled.enrolment,
                        enrolled.private_key,
                        enrolled.client,
                        state=state,
                        on_packet=deliver,
                        bind_address="127.0.0.1",
                        initial_map=enrolled.initial_map,
                        backoff=Backoff(base=0.1, cap=1.0),
                    )
                    peer = _Peer(name, group, runner)
                    holder.append(peer)
                    await runner.start()
                    peers[name] = peer
                    out(
                        f"enrolled {name:<17} {peer.address:<11} group {group:<11} over POST /api/v1/enrol"
                        f" (setup key, public key only); tunnel on 127.0.0.1:{runner.tunnel.local_port}"
                    )
                laptop, prod, other = peers["developer-laptop"], peers["production-server"], peers["other"]
                ready = await _wait(
                    lambda: (
                        laptop.runner.connected
                        and prod.runner.connected
                        and other.runner.connected
                        and prod.runner.device.public_key is not None
                        and laptop.runner.device.peer(prod.runner.device.public_key) is not None
                        and all(p.endpoint is not None for p in laptop.runner.device.peers.values())
                        and all(p.endpoint is not None for p in prod.runner.device.peers.values())
                    ),
                    5.0,
                )
                if not check("maps arrived over the stream", ready is not None):
                    out("the peers did not receive their maps in time")
                    return 1
                for peer in peers.values():
                    mesh = peer.runner.mesh
                    netmap = mesh.controller.network_map if mesh is not None else None
                    names = [
                        p.name
                        for p in peers.values()
                        if p is not peer and p.runner.device.public_key in peer.runner.device.peers
                    ]
                    out(
                        f"{peer.name}: map serial {netmap.serial if netmap else '-'} (signature checked against the"
                        f" pinned key), peers: {', '.join(names) or 'none'}"
                    )

                out()
                out("traffic: TCP SYNs injected as IP packets into the sender's tunnel", stamp=False)

                async def attempt(src: _Peer, dst: _Peer, dport: int, sport: int) -> tuple[bool, bool]:
                    before_dst, before_src = len(dst.received), len(src.received)
                    src.runner.tunnel.send_packet(tcp_packet(src.address, dst.address, sport, dport))

                    def arrived() -> bool:
                        return any(r[3] == dport and r[2] == sport for r in dst.received[before_dst:])

                    def replied() -> bool:
                        return any(
                            r[2] == dport and r[3] == sport and r[4] == SYN | ACK for r in src.received[before_src:]
                        )

                    await _wait(lambda: arrived() and replied(), 0.5)
                    return arrived(), replied()

                for dport, sport in ((22, 40022), (443, 40443)):
                    arrived, replied = await attempt(laptop, prod, dport, sport)
                    ok = check(f"laptop -> production tcp/{dport} allowed", arrived and replied)
                    out(
                        f"  {'ALLOWED' if ok else 'FAILED '}  developer-laptop -> production-server tcp/{dport}:"
                        f" SYN {'arrived' if arrived else 'did not arrive'}, SYN-ACK"
                        f" {'came back through conntrack' if replied else 'did not come back'}"
                        f" (rule allow-dev-to-prod)"
                    )
                arrived, _ = await attempt(laptop, prod, 80, 40080)
                denied = laptop.runner.mesh.controller.filter.stats.denied if laptop.runner.mesh else {}
                ok = check("laptop -> production tcp/80 denied", not arrived and denied.get("deny-all-other", 0) >= 1)
                out(
                    f"  {'DENIED ' if ok else 'FAILED '}  developer-laptop -> production-server tcp/80:"
                    f" {'arrived!' if arrived else 'dropped by the laptop filter (rule deny-all-other)'}"
                )
                before_routes = other.runner.device.stats.drops[DropReason.NO_ROUTE]
                arrived, _ = await attempt(other, prod, 22, 40122)
                routed = prod.runner.device.public_key in other.runner.device.peers
                ok = check("other -> production denied", not arrived and not routed)
                out(
                    f"  {'DENIED ' if ok else 'FAILED '}  other -> production-server tcp/22:"
                    f" {'arrived!' if arrived else 'nothing arrives'}; production-server is not in other's map"
                    f" (no rule lets other reach it), so other has no peer to send it to"
                    f" (other's device drops: no-route={other.runner.device.stats.drops[DropReason.NO_ROUTE] - before_routes})"
                )
                # A compromised "other" configures production by hand and drops its own filter: production does
                # not know its key (no rule lets other reach it, so production's map does not list other), so
                # the handshake itself is refused and nothing can arrive.
                prod_key = prod.runner.device.public_key
                if prod_key is not None and prod.runner.endpoint is not None:
                    before_unknown = prod.runner.device.stats.drops[DropReason.UNKNOWN_PEER]
                    own_filter = other.runner.device.packet_filter
                    other.runner.device.packet_filter = None
                    other.runner.device.add_peer(
                        prod_key, endpoint=prod.runner.endpoint, allowed_ips=[f"{prod.address}/32"]
                    )
                    arrived, _ = await attempt(other, prod, 22, 40222)
                    refused = prod.runner.device.stats.drops[DropReason.UNKNOWN_PEER] - before_unknown
                    ok = check("a compromised other cannot reach production", not arrived and refused >= 1)
                    out(
                        f"  {'DENIED ' if ok else 'FAILED '}  other, compromised (adds production-server by hand,"
                        f" no filter) -> production-server tcp/22: "
                        + (
                            "arrived!"
                            if arrived
                            else f"handshake refused by production-server (unknown peer: {refused})"
                        )
                    )
                    other.runner.device.remove_peer(prod_key)
                    other.runner.device.packet_filter = own_filter
                arrived, _ = await attempt(prod, laptop, 22, 50022)
                denied = prod.runner.mesh.controller.filter.stats.denied if prod.runner.mesh else {}
                ok = check(
                    "production -> laptop new connection denied", not arrived and denied.get("deny-all-other", 0) >= 1
                )
                out(
                    f"  {'DENIED ' if ok else 'FAILED '}  production-server -> developer-laptop tcp/22 (new connection):"
                    f" {'arrived!' if arrived else 'dropped by the production filter (rule deny-all-other)'}"
                )
                for peer in peers.values():
                    out(f"  counters {peer.name}: {peer.counters()}", stamp=False)

                out()
                laptop_key = laptop.runner.device.public_key
                out(f"revocation: admin peer revoke {laptop.runner.enrolment.peer_id} (developer-laptop)")
                started = time.monotonic()
                status, _ = await admin_call("POST", f"/api/v1/peers/{laptop.runner.enrolment.peer_id}/revoke")
                check("revoke accepted", status == 200)
                gone = await _wait(lambda: laptop_key not in prod.runner.device.peers, REVOKE_DEADLINE)
                prod_map = prod.runner.mesh.controller.network_map if prod.runner.mesh else None
                ok = check("production's map drops the laptop within 1 s", gone is not None)
                out(
                    f"  production-server: map serial {prod_map.serial if prod_map else '-'} no longer lists"
                    f" developer-laptop, {time.monotonic() - started:.3f} s after the revoke"
                    if ok
                    else "  production-server still lists developer-laptop after 1 s"
                )
                cut = await _wait(lambda: laptop.runner.exit_reason is RunnerExit.REVOKED, REVOKE_DEADLINE)
                ok = check("the laptop is told it is revoked", cut is not None and not laptop.runner.device.peers)
                out(
                    f"  developer-laptop: revoked by the management server, all peers dropped, traffic stopped"
                    f" ({time.monotonic() - started:.3f} s after the revoke)"
                    if ok
                    else "  developer-laptop was not told it is revoked"
                )
                arrived, _ = await attempt(laptop, prod, 22, 40222)
                ok = check("laptop packets stop after revocation", not arrived)
                out(
                    f"  {'CUT    ' if ok else 'FAILED '}  developer-laptop -> production-server tcp/22:"
                    f" {'arrived!' if arrived else 'nothing arrives any more'}"
                )
            finally:
                for peer in peers.values():
                    await peer.runner.close()
    passed = sum(1 for _, ok in checks if ok)
    out()
    out(f"done: {passed}/{len(checks)} checks passed", stamp=False)
    for label, ok in checks:
        if not ok:
            out(f"  FAILED: {label}", stamp=False)
    return 0 if passed == len(checks) else 1
