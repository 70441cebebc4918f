"""UAPI text protocol at scale (wireguard-go BenchmarkUAPIGet): ``format_get``, ``parse_set`` and ``apply_set``.

Peers have realistic fields: a preshared key, an IPv4 endpoint, a persistent keepalive, two allowed IPs (a /32 and
a /128) and non-zero byte counters and handshake time, so every line that ``wg show`` reads is formatted.

- ``test_format_get[N]``: the whole ``get=1`` answer of a device with N peers (100 and 1,000).
- ``test_parse_set``: validating a ``set=1`` body that configures 1,000 peers (what ``wg setconf`` sends).
- ``test_apply_set``: applying it to an empty device; this includes one X25519 per new peer (the precomputed
  static-static DH), so it runs a few rounds only.
"""

from __future__ import annotations

import random
from typing import Final

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wgpy.device import Device
from wgpy.keys import PresharedKey, PrivateKey
from wgpy.uapi import SetRequest, apply_set, format_get, parse_set

SET_PEERS: Final = 1_000


def _peer_lines(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [f"private_key={PrivateKey(rng.randbytes(32)).to_hex()}", "listen_port=51820", "replace_peers=true"]
    for i in range(count):
        public = PrivateKey(rng.randbytes(32)).public_key()
        lines += [
            f"public_key={public.to_hex()}",
            f"preshared_key={PresharedKey(rng.randbytes(32)).to_hex()}",
            "protocol_version=1",
            f"endpoint=198.51.{i >> 8 & 255}.{i & 255}:{50000 + i % 10000}",
            "persistent_keepalive_interval=25",
            "replace_allowed_ips=true",
            f"allowed_ip=10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32",
            f"allowed_ip=fd00::{i:x}/128",
        ]
    return lines


def _device(count: int) -> Device:
    device = Device()
    apply_set(device, parse_set(_peer_lines(count, seed=count)), now=0.0)
    for n, peer in enumerate(device.peers.values()):
        peer.rx_bytes, peer.tx_bytes = 1000 * n + 1, 2000 * n + 3
        peer.last_handshake_at = 1.0 + n
    assert len(device.peers) == count
    return device


@pytest.mark.parametrize("count", [100, 1_000])
def test_format_get(benchmark: BenchmarkFixture, count: int) -> None:
    device = _device(count)
    text = benchmark(format_get, device)
    benchmark.extra_info["peers"] = count
    benchmark.extra_info["bytes"] = len(text)
    assert text.count("public_key=") == count
    assert text.count("allowed_ip=") == 2 * count


def test_parse_set(benchmark: BenchmarkFixture) -> None:
    lines = _peer_lines(SET_PEERS, seed=1)
    request = benchmark(parse_set, lines)
    benchmark.extra_info["peers"] = SET_PEERS
    benchmark.extra_info["lines"] = len(lines)
    assert len(request.peers) == SET_PEERS
    assert all(len(change.allowed_ips) == 2 for change in request.peers)


def test_apply_set(benchmark: BenchmarkFixture) -> None:
    request = parse_set(_peer_lines(SET_PEERS, seed=2))

    def setup() -> tuple[tuple[Device, SetRequest], dict[str, object]]:
        return (Device(), request), {}

    def apply(device: Device, request: SetRequest) -> Device:
        apply_set(device, request, now=0.0)
        return device

    device = benchmark.pedantic(apply, setup=setup, rounds=3, iterations=1)  # type: ignore[no-untyped-call]
    benchmark.extra_info["peers"] = SET_PEERS
    assert len(device.peers) == SET_PEERS
    assert len(device.allowed_ips) == 2 * SET_PEERS
