"""Receive-path edges that the mutation audit of ``wgpy/receive.py`` found unpinned.

Sources of the expected values (never the code under test):

- wireguard-go ``device/receive.go`` (``RoutineReceiveIncoming``): a datagram shorter than 4 bytes is skipped, any
  other is read as a le32 message type and an unknown type is dropped as such ("Received message with unknown
  type"), whatever its length; this module's docstring says the same ("reads the first four bytes as one le32 ...
  checks the exact size of the type").
- the kernel's ``drivers/net/wireguard/receive.c`` ``decrypt_packet``: a keypair whose
  ``wg_birthdate_has_expired(keypair->receiving.birthdate, REJECT_AFTER_TIME)`` holds is refused, and
  ``wg_birthdate_has_expired`` (``noise.h``) is ``birthday + expiration <= now``: a keypair exactly
  REJECT_AFTER_TIME (180 s, whitepaper §6.1) old is expired. ``wg_packet_consume_data`` looks the receiver index up
  with ``INDEX_HASHTABLE_KEYPAIR``, and wireguard-go drops a transport message whose index has no keypair
  (``if keypair == nil``): an index that names a handshake in progress is unknown to transport messages.
- the kernel's ``counter_validate`` (``receive.c``): with ``their_counter`` incremented, a counter is too old
  ("out of the window") only when ``COUNTER_WINDOW_SIZE + their_counter < counter->counter``; one exactly
  COUNTER_WINDOW_SIZE (8128) below the greatest is still inside the window, where a second copy is a replay.
- whitepaper §6.1 and wireguard-go ``replay.ValidateCounter`` (``counter >= limit`` is refused): the last usable
  counter is REJECT_AFTER_MESSAGES - 1, so a GRO read that ends on it is within the limit; ``_receive_rows``'s
  docstring promises the run path for counters "``first + rows - 1`` below the limit", and
  ``test_receive_gro.py`` pins that the run path is taken whenever it may be.
"""

from __future__ import annotations

import struct

import pytest
from support.helpers import ENDPOINT_A, ENDPOINT_B, Pair, ipv4_packet, make_pair

from wgpy.constants import REJECT_AFTER_TIME, REPLAY_WINDOW_SIZE
from wgpy.errors import DropReason
from wgpy.keypair import Keypair
from wgpy.noise import HandshakeState
from wgpy.send import pad

_TRANSPORT = struct.Struct("<IIQ")


def _session() -> tuple[Pair, Keypair, Keypair]:
    """A confirmed session (A initiated): A's sending keypair and B's receiving one, nothing pending."""
    pair = make_pair()
    pair.handshake()
    a_keypair, b_keypair = pair.peer_b.keypairs.current, pair.peer_a.keypairs.current
    assert a_keypair is not None and b_keypair is not None
    assert a_keypair.remote_index == b_keypair.local_index
    pair.a.datagrams_to_send()
    pair.b.datagrams_to_send()
    pair.b.stats.drops.clear()
    return pair, a_keypair, b_keypair


def _sealed(pair: Pair, keypair: Keypair, counter: int, payload: bytes = b"edge") -> bytes:
    keypair.send_counter = counter
    message = keypair.seal(pad(ipv4_packet("10.0.0.1", "10.0.0.2", payload), 1420))
    assert message is not None
    return message


def test_a_four_byte_datagram_is_read_as_its_type() -> None:
    """Four bytes are enough to read the type (wireguard-go skips only ``len(packet) < 4``): an unknown type is
    BAD_TYPE and a known one too short for it BAD_LENGTH. Kills ``length <= 4`` and ``length < 5``."""
    pair = make_pair()
    now = pair.net.now
    pair.b.receive_datagram(struct.pack("<I", 5), ENDPOINT_A, now)
    assert pair.b.stats.drops == {DropReason.BAD_TYPE: 1}
    pair.b.receive_datagram(struct.pack("<I", 4), ENDPOINT_A, now)
    assert pair.b.stats.drops == {DropReason.BAD_TYPE: 1, DropReason.BAD_LENGTH: 1}
    assert pair.b.datagrams_to_send() == [] and pair.b.packets_to_tun() == []


def test_a_keypair_exactly_reject_after_time_old_is_refused() -> None:
    """Kernel ``wg_birthdate_has_expired``: ``birth + REJECT_AFTER_TIME <= now`` is expired, so a message at exactly
    180 s is dropped (KEYPAIR_EXPIRED) and one just before is delivered. Kills ``>`` for ``>=`` in
    ``_receive_transport_run``."""
    pair, a_keypair, b_keypair = _session()
    born = b_keypair.created_at
    late = _sealed(pair, a_keypair, 5, b"late")
    pair.b.receive_datagram(late, ENDPOINT_A, born + REJECT_AFTER_TIME)
    assert pair.b.stats.drops == {DropReason.KEYPAIR_EXPIRED: 1}
    assert pair.b.packets_to_tun() == []
    just_in_time = _sealed(pair, a_keypair, 6, b"in time")
    pair.b.receive_datagram(just_in_time, ENDPOINT_A, born + REJECT_AFTER_TIME - 0.001)
    assert pair.b.stats.drops == {DropReason.KEYPAIR_EXPIRED: 1}
    assert len(pair.b.packets_to_tun()) == 1


def test_a_gro_read_of_a_keypair_exactly_reject_after_time_old_is_refused() -> None:
    """The same boundary on the run path (``_receive_rows``): every row of the read is KEYPAIR_EXPIRED."""
    pair, a_keypair, b_keypair = _session()
    rows = [_sealed(pair, a_keypair, 10 + i, b"row%02d" % i) for i in range(4)]
    pair.b.receive_gro(b"".join(rows), len(rows[0]), ENDPOINT_A, b_keypair.created_at + REJECT_AFTER_TIME)
    assert pair.b.stats.drops == {DropReason.KEYPAIR_EXPIRED: 4}
    assert pair.b.packets_to_tun() == []


def test_a_gro_read_to_an_index_of_a_handshake_is_unknown_index() -> None:
    """A GRO read whose receiver index names a handshake in progress (not a keypair: the kernel looks transport
    indices up as ``INDEX_HASHTABLE_KEYPAIR``, wireguard-go checks ``keypair == nil``) is one UNKNOWN_INDEX drop
    per datagram, and ``receive_gro`` never raises. Kills ``not isinstance(keypair, Keypair) and not
    keypair.valid`` in ``_receive_rows`` (a ``Handshake`` has no ``valid``)."""
    pair = make_pair()
    now = pair.net.now
    pair.a.send_packet(pair.a_to_b(b"first"), now)  # A initiates: its handshake holds an index
    pair.a.datagrams_to_send()
    handshake = pair.peer_b.handshake
    assert handshake.state is HandshakeState.CREATED_INITIATION
    index = handshake.local_index
    entry = pair.a.index_table.lookup(index)
    assert entry is not None and entry[1] is handshake
    rows = [_TRANSPORT.pack(4, index, counter) + bytes(48) for counter in range(3)]
    pair.a.receive_gro(b"".join(rows), 64, ENDPOINT_B, now)
    assert pair.a.stats.drops == {DropReason.UNKNOWN_INDEX: 3}
    assert pair.a.packets_to_tun() == []


def test_a_replay_exactly_a_window_below_the_greatest_is_a_replay() -> None:
    """Kernel ``counter_validate``: a counter is out of the window only when ``WINDOW + counter + 1 < greatest + 1``.
    One exactly REPLAY_WINDOW_SIZE below the greatest is in it (REPLAYED_COUNTER when seen); one more is
    COUNTER_OUT_OF_WINDOW. Kills ``<=`` for ``<`` in ``_open_each``'s ``too_old``."""
    pair, a_keypair, _ = _session()
    now = pair.net.now
    edge = _sealed(pair, a_keypair, 100, b"edge")
    older = _sealed(pair, a_keypair, 99, b"older")
    pair.b.receive_datagram(older, ENDPOINT_A, now)
    pair.b.receive_datagram(edge, ENDPOINT_A, now)
    pair.b.receive_datagram(_sealed(pair, a_keypair, 100 + REPLAY_WINDOW_SIZE), ENDPOINT_A, now)
    assert pair.b.stats.drops == {}
    assert len(pair.b.packets_to_tun()) == 3
    pair.b.receive_datagram(edge, ENDPOINT_A, now)
    assert pair.b.stats.drops == {DropReason.REPLAYED_COUNTER: 1}
    pair.b.receive_datagram(older, ENDPOINT_A, now)
    assert pair.b.stats.drops == {DropReason.REPLAYED_COUNTER: 1, DropReason.COUNTER_OUT_OF_WINDOW: 1}
    assert pair.b.packets_to_tun() == []


def test_a_gro_read_ending_on_the_last_usable_counter_is_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counters ``limit - 4 .. limit - 1`` are all below the limit: the read is delivered whole, by the run path (no
    ``Keypair.open`` of any row), and the counter ``limit`` after it is KEYPAIR_EXPIRED. Kills ``first + rows >=
    limit`` in ``_receive_rows``."""
    pair, a_keypair, _ = _session()
    now = pair.net.now
    limit = 1000
    pair.b.reject_after_messages = limit
    rows = [_sealed(pair, a_keypair, limit - 4 + i, b"row%02d" % i) for i in range(4)]
    opened: list[int] = []
    original = Keypair.open

    def counting(self: Keypair, counter: int, message: bytes | memoryview) -> bytes:
        opened.append(counter)
        return original(self, counter, message)

    monkeypatch.setattr(Keypair, "open", counting)
    pair.b.receive_gro(b"".join(rows), len(rows[0]), ENDPOINT_A, now)
    assert pair.b.stats.drops == {}
    assert len(pair.b.packets_to_tun()) == 4
    assert opened == []
    pair.b.receive_datagram(_sealed(pair, a_keypair, limit, b"over"), ENDPOINT_A, now)
    assert pair.b.stats.drops == {DropReason.KEYPAIR_EXPIRED: 1}
