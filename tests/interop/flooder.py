"""A handshake flood for the interop tests: initiations with a valid mac1 from one address, many source ports.

``python flooder.py --target IP:PORT --public-key B64 --seconds S [--ports 64] [--rate R]`` sends initiations that
pass the responder's mac1 check (mac1 needs only the responder's public key) but carry random ephemeral, static and
timestamp fields, so each one costs the responder a mac1 check and, under load, a cookie reply (or the X25519 of
``consume_initiation`` without load). The mac1 is computed here with ``hashlib`` from the whitepaper (§5.4.4:
``mac1 = MAC(HASH(LABEL_MAC1 || S_pub), msg_alpha)``), independently of wgpy. At the end (``--seconds`` passed, or
SIGTERM) it prints one JSON line: ``{"sent": N, "seconds": T, "rate": N/T}``. It only sends; it never reads what
comes back.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import socket
import time

LABEL_MAC1 = b"mac1----"
INITIATION_SIZE = 148
MAC1_OFFSET = 116
DISTINCT_MESSAGES = 1024


def initiations(public_key: bytes, count: int) -> list[bytes]:
    mac1_key = hashlib.blake2s(LABEL_MAC1 + public_key).digest()
    messages = []
    for _ in range(count):
        body = (1).to_bytes(4, "little") + os.urandom(MAC1_OFFSET - 4)  # type 1, reserved zero, random fields
        mac1 = hashlib.blake2s(body, digest_size=16, key=mac1_key).digest()
        messages.append(body + mac1 + bytes(16))  # no mac2: the responder has given us no cookie
    return messages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--ports", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="initiations per second (0: as fast as possible)")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    messages = initiations(base64.b64decode(args.public_key), DISTINCT_MESSAGES)
    sockets = []
    for _ in range(args.ports):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - a test tool inside its own network namespace
        sockets.append(sock)
    senders = [sock.sendto for sock in sockets]
    stopped = []  # SIGTERM: the measurement is over, report what was sent
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    start = time.monotonic()
    deadline = start + args.seconds
    sent = 0
    chunk = 256
    while True:
        now = time.monotonic()
        if now >= deadline or stopped:
            break
        if args.rate and sent > (now - start) * args.rate:
            time.sleep(0.001)
            continue
        for i in range(sent, sent + chunk):
            try:
                senders[i % len(senders)](messages[i % DISTINCT_MESSAGES], target)
            except OSError:
                pass  # ENOBUFS and the like: a flood does not care
        sent += chunk
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": round(elapsed, 3), "rate": round(sent / elapsed)}), flush=True)


if __name__ == "__main__":
    main()
