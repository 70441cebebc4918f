"""Direct against relayed, in the same run and the same lab: latency (round trips one at a time) and throughput
(a window of packets in flight, echoed back) between two pairs of peers, one pair behind endpoint-independent NATs
(direct), one behind symmetric NATs (through coturn). Marked ``slow`` (it is a measurement, not a check): run with
``python -m pytest -m slow tests/nat/test_nat_benchmark.py -s``; the numbers are printed and written to
``benchmarks/results/nat_direct_vs_relayed.json`` when ``WGPY_NAT_BENCH_OUT`` names a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from nat_lab import TURN_PORT, PeerProcess, lab

from wgpy.nat.credentials import turn_credentials

pytestmark = pytest.mark.slow

SECRET = b"nat-bench-secret"


def test_direct_versus_relayed_throughput_and_latency(tmp_path: Path) -> None:
    with lab(tmp_path) as built:
        for name, nat in (("a", "eim"), ("b", "eim"), ("c", "symmetric"), ("d", "symmetric")):
            built.add_peer(name, nat=nat)
        built.start_coturn(SECRET.decode())
        stun = (built.server_ip, TURN_PORT)
        peers = {name: PeerProcess(built, name, seed, stun) for seed, name in enumerate("abcd", start=1)}
        addresses = {name: f"10.77.0.{i}" for i, name in enumerate("abcd", start=1)}
        results: dict[str, dict[str, Any]] = {}
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
            px.send(cmd="bench", src=addresses[x], dst=addresses[y], count=200, size=1200, window=64)
            results[label] = px.wait("bench", timeout=60)
            results[label].pop("event", None)
        print(json.dumps(results, indent=2))
        out = os.environ.get("WGPY_NAT_BENCH_OUT")
        if out:
            Path(out).write_text(json.dumps(results, indent=2) + "\n")
        assert results["relayed"]["echoed"] > 0 and results["direct"]["echoed"] > 0
