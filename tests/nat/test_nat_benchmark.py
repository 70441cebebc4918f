"""Direct against relayed, in the same run and the same lab: latency (round trips one at a time) and throughput
(a window of 64 packets of 1,200 bytes in flight, echoed back; when nothing is echoed for 20 ms the packets in
flight count as lost and the window reopens: a ``stall``, whose 20 ms count in the elapsed time when more echoes
follow) between two pairs of peers, one pair behind endpoint-independent NATs (direct), one behind symmetric NATs
(through coturn). The two pairs are measured in alternating rounds, so that both see the same machine load, and
the medians and their ratio are reported with the machine. Marked ``slow`` (it is a measurement, not a check): run
with ``python -m pytest -m slow tests/nat/test_nat_benchmark.py -s``; the numbers are printed and, when
``WGPY_NAT_BENCH_OUT`` names a file, written there with the machine (the committed results are in
``benchmarks/results/nat-direct-vs-relayed-*.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from nat_lab import TURN_PORT, PeerProcess, lab

from wgpy.nat.credentials import turn_credentials

pytestmark = pytest.mark.slow

SECRET = b"nat-bench-secret"
ROUNDS = 5  # alternating rounds per path (ours)


def udp_drops(nstat: str) -> dict[str, int]:
    """The UDP buffer-drop counters of one ``nstat -az`` listing (the namespace's totals since it was made)."""
    counters = {}
    for line in nstat.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in ("UdpRcvbufErrors", "UdpSndbufErrors", "UdpInErrors"):
            counters[fields[0]] = int(fields[1])
    return counters


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the brief's list: CPU, cores, kernel, Python, cryptography, OpenSSL)."""
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    turnserver = subprocess.run(["turnserver", "--version"], capture_output=True, text=True, check=False, timeout=10)
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "coturn": (turnserver.stdout or turnserver.stderr).strip().splitlines()[-1:],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def test_direct_versus_relayed_throughput_and_latency(tmp_path: Path) -> None:
    with lab(tmp_path) as built:
        for name, nat in (("a", "eim"), ("b", "eim"), ("c", "symmetric"), ("d", "symmetric")):
            built.add_peer(name, nat=nat)
        built.start_coturn(SECRET.decode())
        stun = (built.server_ip, TURN_PORT)
        peers = {name: PeerProcess(built, name, seed, stun) for seed, name in enumerate("abcd", start=1)}
        addresses = {name: f"10.77.0.{i}" for i, name in enumerate("abcd", start=1)}
        pairs: dict[str, tuple[str, str]] = {}
        for (x, y), label in ((("a", "b"), "direct"), (("c", "d"), "relayed")):
            px, py = peers[x], peers[y]
            px.send(cmd="peer", public_key=py.public_key, allowed_ip=f"{addresses[y]}/32")
            py.send(cmd="peer", public_key=px.public_key, allowed_ip=f"{addresses[x]}/32")
            px.wait("reflexive")
            py.wait("reflexive")
            if label == "relayed":
                for peer, name in ((px, x), (py, y)):
                    creds = turn_credentials(SECRET, f"peer-{name}", time.time(), 600)
                    peer.send(
                        cmd="relay",
                        host=built.server_ip,
                        port=TURN_PORT,
                        username=creds.username,
                        password=creds.password,
                    )
                    peer.wait("relayed")
            announced = [built.server_ip, *built.wan.values(), *built.lan.values()]
            cx, cy = px.local(), py.local()
            px.send(cmd="candidates", public_key=py.public_key, candidates=cy, announced=announced)
            py.send(cmd="candidates", public_key=px.public_key, candidates=cx, announced=announced)
            py.send(cmd="echo")
            py.wait("echoing")
            deadline = time.monotonic() + 30.0
            state: dict[str, object] = {}
            while time.monotonic() < deadline:  # bounded: the relayed pair needs the direct checks to fail first
                px.send(cmd="send", src=addresses[x], dst=addresses[y], payload="warm-up")
                time.sleep(0.5)
                state = px.status()["peers"][py.public_key]  # type: ignore[index]
                if state["state"] == label and state["handshakes"]:
                    break
            assert state["state"] == label, state
            pairs[label] = (x, y)
        rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "relayed": []}
        for _ in range(ROUNDS):  # alternating: direct, relayed, direct, relayed ...
            for label, (x, y) in pairs.items():
                peers[x].send(cmd="bench", src=addresses[x], dst=addresses[y], count=200, size=1200, window=64)
                result = peers[x].wait("bench", timeout=60)
                result.pop("event", None)
                rounds[label].append(result)
        results: dict[str, Any] = {"machine": machine(), "rounds": rounds, "median": {}}
        # Where losses happen: UDP datagrams each namespace's kernel dropped for a full socket buffer.
        results["udp_buffer_drops"] = {ns: udp_drops(built.exec(ns, "nstat", "-az")) for ns in built.namespaces}
        for label, runs in rounds.items():
            results["median"][label] = {
                key: statistics.median(float(r[key]) for r in runs)
                for key in ("rtt_median_ms", "rtt_p90_ms", "mbit_per_second_echoed")
            }
        direct, relayed = results["median"]["direct"], results["median"]["relayed"]
        results["relayed_over_direct"] = {
            "rtt_median": relayed["rtt_median_ms"] / direct["rtt_median_ms"],
            "throughput": relayed["mbit_per_second_echoed"] / direct["mbit_per_second_echoed"],
        }
        print(json.dumps(results, indent=2))
        out = os.environ.get("WGPY_NAT_BENCH_OUT")
        if out:
            Path(out).write_text(json.dumps(results, indent=2) + "\n")
        assert all(r["echoed"] > 0 for runs in rounds.values() for r in runs)
