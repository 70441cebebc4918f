"""Where the agent keeps what it must remember: the private key, the refresh token and the enrolment.

Theory of operation: everything lives in one *state directory* (``--state-dir``; by default ``/var/lib/wgpy`` for
root, else ``$XDG_STATE_HOME/wgpy``, i.e. ``~/.local/state/wgpy``), created with mode 0700:

* ``state.json``: the enrolment (management URL, the pinned management key, the proof key verified against it,
  peer id, address, network, name, interface, listen port, where the private key is). No secret is in it.
* ``refresh_token``: the current refresh token (single use; each refresh replaces it atomically), mode 0600.
* ``private.key``: the WireGuard private key (base64, mode 0600), only when no usable keyring exists.
* ``map.json``: the last accepted network map and its serial (``mesh_daemon.write_state``), so that a restart
  resumes the last known good map and refuses older ones.
* ``agent.pid``, ``status.json`` and ``agent.log``: the running daemon's pid, what ``wgpy status`` shows, and
  the background agent's log.

The private key is generated here (``PrivateKey.generate()``) and never leaves the device: the keyring where a
working backend exists (``keyring.get_keyring()`` is often the *fail* or *null* backend on a headless machine, and
those do not count), else the 0600 file. ``WGPY_KEYRING=0`` forces the file. A key file that others can read is
refused, as is a state file that is not ours. Every error is a ``ConfigError`` with one line that names the file and
never the secret; no ``repr`` here shows a key or a token.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Final

from ..errors import ConfigError
from ..keys import PrivateKey
from ..mesh.agent import write_private_file

__all__ = [
    "KEYRING_SERVICE",
    "Enrolment",
    "KeyStore",
    "StateDir",
    "default_state_dir",
    "usable_keyring",
]

logger = logging.getLogger("wgpy.agent")

STATE_FORMAT: Final = 1  # the "version" of state.json (ours)
KEYRING_SERVICE: Final = "wgpy"  # the keyring service name of the WireGuard private key
STORAGE_KEYRING: Final = "keyring"
STORAGE_FILE: Final = "file"
STATE_FILE: Final = "state.json"
REFRESH_FILE: Final = "refresh_token"
KEY_FILE: Final = "private.key"
MAP_FILE: Final = "map.json"
PID_FILE: Final = "agent.pid"
STATUS_FILE: Final = "status.json"
LOG_FILE: Final = "agent.log"  # the background agent's log (mode 0600)
_MAX_FILE: Final = 1 << 20  # bytes of a state file read at most


def default_state_dir() -> Path:
    """``/var/lib/wgpy`` as root, else ``$XDG_STATE_HOME/wgpy`` (``~/.local/state/wgpy``)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/wgpy")
    base = os.environ.get("XDG_STATE_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "wgpy"


def _read_private(path: Path, what: str, *, secret: bool) -> bytes | None:
    """Read a small state file; ``None`` if it does not exist. A secret file must not be readable by others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the {what} {path} is not a regular file")
        if secret and info.st_mode & 0o077:
            raise ConfigError(
                f"the {what} {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it"
            )
        chunks = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_FILE:
                raise ConfigError(f"the {what} {path} is too large")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What ``wgpy up`` learnt at enrolment (``state.json``). Nothing here is secret."""

    management_url: str
    management_key: str  # base64 Ed25519 public key, pinned with --management-key
    proof_key: str  # base64 X25519 key from /api/v1/info, its signature checked against management_key
    peer_id: str
    address: str  # the peer's mesh address, e.g. 100.64.0.7
    network: str  # the mesh prefix, e.g. 100.64.0.0/16
    name: str | None
    interface: str | None  # None: no TUN (embedded or --no-tun)
    listen_port: int
    key_storage: str  # "keyring" or "file"
    fail_closed: bool = False
    # A signing-key rotation announced in a signed map (base64 key, Unix seconds): accepted beside management_key
    # until then, pinned in its place from then on.
    management_key_next: str | None = None
    management_key_until: int | None = None

    @property
    def interface_prefix(self) -> str:
        """The address with the mesh's prefix length, as ``ip address add`` takes it (``100.64.0.7/16``)."""
        length = ipaddress.ip_network(self.network, strict=False).prefixlen
        return f"{self.address}/{length}"

    def to_json(self) -> bytes:
        record: dict[str, object] = {"version": STATE_FORMAT, **asdict(self)}
        return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, path: Path) -> Enrolment:
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or record.get("version") != STATE_FORMAT:
                raise ValueError("unknown format")
            names = {f.name for f in fields(cls)}
            values = {key: value for key, value in record.items() if key in names}
            enrolment = cls(**values)
            checks = (
                isinstance(enrolment.management_url, str),
                isinstance(enrolment.management_key, str),
                isinstance(enrolment.proof_key, str),
                isinstance(enrolment.peer_id, str),
                isinstance(enrolment.address, str),
                isinstance(enrolment.network, str),
                enrolment.name is None or isinstance(enrolment.name, str),
                enrolment.interface is None or isinstance(enrolment.interface, str),
                isinstance(enrolment.listen_port, int) and not isinstance(enrolment.listen_port, bool),
                enrolment.key_storage in (STORAGE_KEYRING, STORAGE_FILE),
                isinstance(enrolment.fail_closed, bool),
                enrolment.management_key_next is None or isinstance(enrolment.management_key_next, str),
                enrolment.management_key_until is None
                or (
                    isinstance(enrolment.management_key_until, int)
                    and not isinstance(enrolment.management_key_until, bool)
                ),
            )
            if not all(checks):
                raise ValueError("bad field")
            ipaddress.ip_address(enrolment.address)
            ipaddress.ip_network(enrolment.network, strict=False)
        except (ValueError, TypeError):
            raise ConfigError(
                f"the agent state {path} is not a wgpy state file (run wgpy logout --force to start afresh)"
            ) from None
        return enrolment


class StateDir:
    """The agent's state directory and the files in it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def ensure(self) -> None:
        """Create the directory (mode 0700) if needed.

        Raises:
            ConfigError: It cannot be created, or it is not a directory.
        """
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the state directory {self.path}: {exc.strerror or exc}") from None
        if not self.path.is_dir():
            raise ConfigError(f"the state directory {self.path} is not a directory")
        with contextlib.suppress(OSError):
            if stat.S_IMODE(self.path.stat().st_mode) & 0o077:
                os.chmod(self.path, 0o700)

    # --- enrolment ----------------------------------------------------------------------------------------------

    def read_enrolment(self) -> Enrolment | None:
        path = self.file(STATE_FILE)
        raw = _read_private(path, "agent state", secret=False)
        return None if raw is None else Enrolment.from_json(raw, path)

    def write_enrolment(self, enrolment: Enrolment) -> None:
        self.ensure()
        try:
            write_private_file(self.file(STATE_FILE), enrolment.to_json())
        except OSError as exc:
            raise ConfigError(f"cannot write the agent state {self.file(STATE_FILE)}: {exc.strerror or exc}") from None

    # --- refresh token ------------------------------------------------------------------------------------------

    def read_refresh_token(self) -> str | None:
        raw = _read_private(self.file(REFRESH_FILE), "refresh token file", secret=True)
        if raw is None:
            return None
        token = raw.decode("ascii", errors="replace").strip()
        return token or None

    def write_refresh_token(self, token: str) -> None:
        """Replace the refresh token (atomically: a crash leaves the old or the new one, never half of either)."""
        self.ensure()
        try:
            write_private_file(self.file(REFRESH_FILE), token.encode("ascii") + b"\n")
        except (OSError, UnicodeEncodeError) as exc:
            raise ConfigError(
                f"cannot write the refresh token file {self.file(REFRESH_FILE)}: {getattr(exc, 'strerror', None) or 'not ASCII'}"
            ) from None

    # --- pid ----------------------------------------------------------------------------------------------------

    def read_pid(self) -> int | None:
        """The pid of the running agent, or ``None`` if none runs (a stale pid file is ignored)."""
        try:
            text = self.file(PID_FILE).read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        if not text.isdigit():
            return None
        pid = int(text)
        if pid <= 1 or not _is_agent_process(pid):
            return None
        return pid

    def write_pid(self) -> None:
        self.ensure()
        write_private_file(self.file(PID_FILE), f"{os.getpid()}\n".encode("ascii"))

    def remove_pid(self) -> None:
        with contextlib.suppress(OSError):
            text = self.file(PID_FILE).read_text(encoding="ascii").strip()
            if text == str(os.getpid()):
                self.file(PID_FILE).unlink()

    # --- status -------------------------------------------------------------------------------------------------

    def write_status(self, status: dict[str, object]) -> None:
        with contextlib.suppress(OSError):
            write_private_file(self.file(STATUS_FILE), (json.dumps(status, sort_keys=True) + "\n").encode("utf-8"))

    def read_status(self) -> dict[str, object] | None:
        try:
            raw = _read_private(self.file(STATUS_FILE), "status file", secret=False)
            value = json.loads(raw) if raw is not None else None
        except (ConfigError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    # --- removal ------------------------------------------------------------------------------------------------

    def remove_all(self) -> None:
        """Delete every file the agent keeps here (the keyring entry is the ``KeyStore``'s business)."""
        for name in (STATE_FILE, REFRESH_FILE, KEY_FILE, MAP_FILE, PID_FILE, STATUS_FILE, LOG_FILE):
            with contextlib.suppress(FileNotFoundError):
                self.file(name).unlink()
        with contextlib.suppress(OSError):
            self.path.rmdir()  # only if nothing else is in it


def _is_agent_process(pid: int) -> bool:
    """Whether ``pid`` is alive and looks like a wgpy process (so a recycled pid is never signalled)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file
    return b"wgpy" in cmdline


# ----------------------------------------------------------------------------------------------------------------
# The private key
# ----------------------------------------------------------------------------------------------------------------


def usable_keyring() -> object | None:
    """The keyring backend if a real one is available, else ``None`` (fail/null backends, errors, WGPY_KEYRING=0)."""
    if os.environ.get("WGPY_KEYRING", "").strip().lower() in ("0", "no", "off", "false"):
        return None
    try:
        import keyring
        from keyring.backends import fail, null

        backend = keyring.get_keyring()
    except Exception:  # any import or discovery problem means: no keyring
        return None
    if isinstance(backend, (fail.Keyring, null.Keyring)):
        return None
    try:
        priority = float(backend.priority)
    except Exception:
        return None
    if priority <= 0:
        return None
    return backend


class KeyStore:
    """The device's WireGuard private key: generated here, kept in the keyring or a 0600 file, never sent."""

    def __init__(self, state: StateDir, *, keyring_backend: object | bool | None = True) -> None:
        """
        Args:
            state: The state directory (its path names the keyring entry, so several agents can share a keyring).
            keyring_backend: ``True`` to detect one (``usable_keyring``), ``None``/``False`` for none, or a backend.
        """
        self.state = state
        if keyring_backend is True:
            self._backend = usable_keyring()
        elif keyring_backend is False:
            self._backend = None
        else:
            self._backend = keyring_backend

    def __repr__(self) -> str:
        return f"KeyStore({self.state!r}, keyring={type(self._backend).__name__ if self._backend else None})"

    @property
    def _username(self) -> str:
        return f"private-key:{self.state.path.resolve()}"

    @property
    def key_file(self) -> Path:
        return self.state.file(KEY_FILE)

    def describe(self, storage: str) -> str:
        """Where the key of ``storage`` lives, for ``wgpy status`` (never the key itself)."""
        if storage == STORAGE_KEYRING:
            return f"keyring (service {KEYRING_SERVICE!r}, entry {self._username!r})"
        return f"file {self.key_file} (mode 0600)"

    def create(self) -> tuple[PrivateKey, str]:
        """Generate a new private key and store it: in the keyring if one works, else in the 0600 file.

        Returns:
            The key and where it went (``"keyring"`` or ``"file"``).
        """
        key = PrivateKey.generate()
        if self._backend is not None:
            try:
                self._backend.set_password(KEYRING_SERVICE, self._username, key.to_base64())  # type: ignore[attr-defined]
                if self._backend.get_password(KEYRING_SERVICE, self._username) == key.to_base64():  # type: ignore[attr-defined]
                    return key, STORAGE_KEYRING
                logger.warning("the keyring did not keep the private key: using a 0600 file instead")
            except Exception as exc:  # a keyring backend may raise anything; the message never holds the key
                logger.warning(
                    "the keyring refused the private key (%s): using a 0600 file instead", type(exc).__name__
                )
        self.state.ensure()
        try:
            write_private_file(self.key_file, key.to_base64().encode("ascii") + b"\n")
        except OSError as exc:
            raise ConfigError(f"cannot write the private key file {self.key_file}: {exc.strerror or exc}") from None
        return key, STORAGE_FILE

    def load(self, storage: str) -> PrivateKey:
        """Load the key from where enrolment put it.

        Raises:
            ConfigError: It is missing or unreadable (one line, no key material).
        """
        if storage == STORAGE_KEYRING:
            if self._backend is None:
                raise ConfigError("the private key is in the keyring, but no usable keyring backend is available")
            try:
                text = self._backend.get_password(KEYRING_SERVICE, self._username)  # type: ignore[attr-defined]
            except Exception as exc:
                raise ConfigError(f"cannot read the private key from the keyring ({type(exc).__name__})") from None
            if not isinstance(text, str):
                raise ConfigError("the private key is missing from the keyring (run wgpy logout --force, then up)")
        else:
            raw = _read_private(self.key_file, "private key file", secret=True)
            if raw is None:
                raise ConfigError(f"the private key file {self.key_file} is missing (run wgpy logout --force, then up)")
            text = raw.decode("ascii", errors="replace")
        try:
            return PrivateKey.from_base64(text.strip())
        except (ConfigError, ValueError):
            raise ConfigError("the stored private key is not a valid WireGuard key") from None

    def delete(self, storage: str) -> None:
        """Remove the key (logout)."""
        if storage == STORAGE_KEYRING and self._backend is not None:
            with contextlib.suppress(Exception):
                self._backend.delete_password(KEYRING_SERVICE, self._username)  # type: ignore[attr-defined]
        with contextlib.suppress(FileNotFoundError):
            self.key_file.unlink()
