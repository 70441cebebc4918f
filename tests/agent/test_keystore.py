"""The agent's state directory: the private key (keyring or a 0600 file), the refresh token, the enrolment."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wgpy.agent import keystore
from wgpy.agent.keystore import Enrolment, KeyStore, StateDir, default_state_dir, usable_keyring
from wgpy.errors import ConfigError


class MemoryKeyring:
    """A keyring backend that keeps passwords in a dict (what a working OS keyring does, for the test)."""

    priority = 5.0

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[service, username] = password

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)


class BrokenKeyring(MemoryKeyring):
    def set_password(self, service: str, username: str, password: str) -> None:
        raise RuntimeError("locked")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def enrolment(**changes: object) -> Enrolment:
    values: dict[str, object] = {
        "management_url": "http://127.0.0.1:1",
        "management_key": "A" * 43 + "=",
        "proof_key": "B" * 43 + "=",
        "peer_id": "p1",
        "address": "100.64.0.1",
        "network": "100.64.0.0/16",
        "name": "laptop",
        "interface": None,
        "listen_port": 0,
        "key_storage": "file",
    }
    values.update(changes)
    return Enrolment(**values)  # type: ignore[arg-type]


def test_file_fallback_is_0600_and_loads_back(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    store = KeyStore(state, keyring_backend=None)
    key, storage = store.create()
    assert storage == "file"
    assert mode(state.path) == 0o700
    assert mode(store.key_file) == 0o600
    assert store.load("file") == key
    assert "file" in store.describe("file") and str(store.key_file) in store.describe("file")
    assert key.to_base64() not in repr(store)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    store = KeyStore(state, keyring_backend=None)
    store.create()
    os.chmod(store.key_file, 0o644)
    with pytest.raises(ConfigError, match="readable by others") as info:
        store.load("file")
    assert "\n" not in str(info.value)


def test_keyring_is_used_when_it_works(tmp_path: Path) -> None:
    backend = MemoryKeyring()
    store = KeyStore(StateDir(tmp_path), keyring_backend=backend)
    key, storage = store.create()
    assert storage == "keyring"
    assert not store.key_file.exists()  # nothing on disk
    assert list(backend.entries.values()) == [key.to_base64()]
    assert store.load("keyring") == key
    store.delete("keyring")
    assert backend.entries == {}


def test_a_failing_keyring_falls_back_to_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = KeyStore(StateDir(tmp_path), keyring_backend=BrokenKeyring())
    key, storage = store.create()
    assert storage == "file"
    assert store.load("file") == key
    assert key.to_base64() not in caplog.text


def test_fail_and_null_backends_do_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import keyring
    from keyring.backends import fail, null

    for backend in (fail.Keyring(), null.Keyring()):  # type: ignore[no-untyped-call]
        monkeypatch.setattr(keyring, "get_keyring", lambda backend=backend: backend)
        assert usable_keyring() is None
    monkeypatch.setenv("WGPY_KEYRING", "0")
    monkeypatch.setattr(keyring, "get_keyring", lambda: MemoryKeyring())
    assert usable_keyring() is None
    monkeypatch.delenv("WGPY_KEYRING")
    assert isinstance(usable_keyring(), MemoryKeyring)


def test_refresh_token_is_0600_and_replaced_atomically(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.write_refresh_token("first.token.x")
    state.write_refresh_token("second.token.y")
    assert state.read_refresh_token() == "second.token.y"
    assert mode(state.file(keystore.REFRESH_FILE)) == 0o600
    assert sorted(p.name for p in state.path.iterdir()) == [keystore.REFRESH_FILE]  # no temporary left


def test_enrolment_round_trip_and_corruption(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert state.read_enrolment() is None
    record = enrolment()
    state.write_enrolment(record)
    assert state.read_enrolment() == record
    assert record.interface_prefix == "100.64.0.1/16"
    state.file(keystore.STATE_FILE).write_text('{"version": 1, "peer_id": 3}')
    with pytest.raises(ConfigError, match="not a wgpy state file"):
        state.read_enrolment()


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        assert default_state_dir() == Path("/var/lib/wgpy")
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "wgpy"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_state_dir() == Path.home() / ".local" / "state" / "wgpy"


def test_remove_all(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.write_enrolment(enrolment())
    state.write_refresh_token("t")
    KeyStore(state, keyring_backend=None).create()
    state.remove_all()
    assert not state.path.exists()
