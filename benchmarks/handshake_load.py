"""Paced, valid handshake initiations from many peers against one live responder, for e2e.py's ``hs`` test.

``python handshake_load.py --target IP:PORT --responder-public-key B64 --keys FILE --rate R --seconds S``

``FILE`` holds one base64 private key per line: the initiators, which the responder has been configured to know
(e2e.py does that with ``wg set``). The initiations are real (wgpy's ``noise.create_initiation`` with a fresh
ephemeral and the wall clock's TAI64N, mac1 from ``CookieGenerator``), so each one costs the responder the whole
``consume_initiation`` + ``create_response`` (X25519 four times in all). They go out at ``R`` per second, round
robin over the peers, so one peer sends once every ``len(keys) / R`` seconds: with e2e.py's 64 peers at 100/s that
is every 0.64 s, far from the 1/50 s per-peer flood limit of both implementations, and 100 messages/s stays under
both "under load" thresholds (wgpy: 128 handshake messages/s; wireguard-go: 128 queued), so no cookie is asked for
and what is measured is the handshake itself, not a DoS policy. Each 92-byte response whose receiver index is one
this process sent counts once. Prints one JSON line: ``{"sent": N, "responses": M, "seconds": T}``.

Handshakes per second *of CPU* (e2e.py divides the responder's CPU seconds by the responses) is the figure that
compares implementations; the rate itself is the one chosen here.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import time
from pathlib import Path

from wgpy import noise
from wgpy.cookie import CookieGenerator
from wgpy.keys import PrivateKey, PublicKey
from wgpy.noise import Handshake, StaticIdentity

RESPONSE_SIZE = 92
RESPONSE_TYPE = 2


def drain(sock: socket.socket, outstanding: set[int]) -> int:
    """Reads what has come back; returns how many responses answered an initiation of ours (each counts once)."""
    count = 0
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return count
        if len(data) == RESPONSE_SIZE and data[0] == RESPONSE_TYPE:
            (receiver,) = struct.unpack_from("<I", data, 8)  # type (4), sender index (4), receiver index (4)
            if receiver in outstanding:
                outstanding.discard(receiver)
                count += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="responder IP:PORT")
    parser.add_argument("--responder-public-key", required=True)
    parser.add_argument("--keys", type=Path, required=True, help="initiator private keys, base64, one per line")
    parser.add_argument("--rate", type=float, default=100.0, help="initiations per second (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    responder = PublicKey.from_base64(args.responder_public_key)
    peers = []
    for line in args.keys.read_text().split():
        identity = StaticIdentity(PrivateKey(base64.b64decode(line)))
        peers.append((identity, Handshake(identity, responder), CookieGenerator(responder)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    outstanding: set[int] = set()
    sent = responses = 0
    start = time.monotonic()
    deadline = start + args.seconds
    interval = 1.0 / args.rate
    next_send = start
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_send:
            identity, handshake, cookie = peers[sent % len(peers)]
            index = int.from_bytes(os.urandom(4), "little")
            handshake.clear()
            initiation = noise.create_initiation(handshake, identity, index, time.time_ns(), os.urandom)
            sock.send(cookie.add_macs(initiation.pack(), now))
            outstanding.add(index)
            sent += 1
            next_send += interval
        responses += drain(sock, outstanding)
        time.sleep(min(max(next_send - time.monotonic(), 0.0), 0.002))
    time.sleep(0.2)  # late responses to the last initiations
    responses += drain(sock, outstanding)
    print(json.dumps({"sent": sent, "responses": responses, "seconds": round(time.monotonic() - start, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
