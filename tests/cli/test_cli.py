"""The command line, run as a subprocess (``python -m wgpy ...``), without root.

Key tools must agree with wg(8) (checked against the real ``wg`` when it is installed). Bad input gives one line on
stderr and a non-zero status, never a traceback. Nothing here creates an interface: the bad-name test fails before
any system call, and the no-permission test runs without CAP_NET_ADMIN (as ``nobody``, or as root with the
capability dropped) inside a throwaway network namespace when it can make one.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wgpy.keys import PrivateKey

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0


def wgpy(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgpy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def _is_key(text: str) -> bool:
    return len(text) == 44 and len(base64.b64decode(text, validate=True)) == 32


# -- key tools ------------------------------------------------------------------------------------------------------


def test_genkey_genpsk_pubkey_formats() -> None:
    private = wgpy("genkey")
    psk = wgpy("genpsk")
    assert private.returncode == psk.returncode == 0
    assert private.stdout.endswith("\n") and _is_key(private.stdout.strip())
    assert _is_key(psk.stdout.strip())
    assert private.stdout != wgpy("genkey").stdout
    public = wgpy("pubkey", stdin=private.stdout)
    assert public.returncode == 0 and _is_key(public.stdout.strip())
    assert public.stdout.strip() == PrivateKey.from_base64(private.stdout).public_key().to_base64()
    # A generated private key is stored clamped, as `wg genkey` prints it.
    raw = base64.b64decode(private.stdout.strip())
    assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40


def test_keys_agree_with_wg() -> None:
    if shutil.which("wg") is None:
        pytest.skip("wg(8) is not installed (apt-get install wireguard-tools): cannot compare with it")

    def wg(*args: str, stdin: str = "") -> str:
        return subprocess.run(
            ["wg", *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=True
        ).stdout

    ours = wgpy("genkey").stdout
    assert wgpy("pubkey", stdin=ours).stdout == wg("pubkey", stdin=ours)
    theirs = wg("genkey")
    assert wgpy("pubkey", stdin=theirs).stdout == wg("pubkey", stdin=theirs)
    # An unclamped key: both clamp before deriving the public key.
    unclamped = base64.b64encode(bytes(range(224, 256))).decode() + "\n"
    assert wgpy("pubkey", stdin=unclamped).stdout == wg("pubkey", stdin=unclamped)
    assert wg("pubkey", stdin=wgpy("genpsk").stdout)  # a psk is 32 bytes of base64 as wg reads it


@pytest.mark.parametrize(
    "stdin",
    ["", "not a key\n", "AAAA\n", base64.b64encode(bytes(31)).decode() + "\n", base64.b64encode(bytes(33)).decode()],
)
def test_pubkey_with_a_bad_key(stdin: str) -> None:
    line = _one_line_error(wgpy("pubkey", stdin=stdin))
    assert line.startswith("wgpy: ")
    assert wgpy("pubkey", stdin=stdin).returncode == 1


# -- the interface command ------------------------------------------------------------------------------------------


def _isolated() -> list[str]:
    """``unshare --net`` when we are root and it works: should a name check ever fail to stop the command, the
    interface would appear in a throwaway namespace, not on the host."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        return []
    if subprocess.run([unshare, "--net", "true"], capture_output=True, check=False).returncode != 0:
        return []
    return [unshare, "--net"]


@pytest.mark.parametrize("name", ["bad/name", "a" * 16, "has space", "colon:0", ".", ""])
def test_bad_interface_name(name: str) -> None:
    result = subprocess.run(
        [*_isolated(), sys.executable, "-m", "wgpy", "-f", name],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO_ROOT,
        check=False,
    )
    line = _one_line_error(result)
    assert "interface name" in line, line


def test_usage_and_version() -> None:
    assert wgpy("--version").stdout.startswith("wgpy ")
    usage = wgpy()
    assert usage.returncode == 2 and "usage: wgpy" in usage.stdout
    assert wgpy("--help").returncode == 0


def _drop_privileges_prefix() -> tuple[list[str], str] | str:
    """A command prefix that runs a program without CAP_NET_ADMIN (and the way it does), or why there is none."""
    if os.geteuid() != 0:
        return [], f"running as uid {os.geteuid()} already"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return "setpriv(1) is not installed (util-linux): cannot drop root for this test"
    prefix = _isolated()
    as_nobody = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]
    probe = subprocess.run([*prefix, *as_nobody, sys.executable, "-c", "import wgpy"], capture_output=True, cwd="/")
    if probe.returncode == 0:
        return [*prefix, *as_nobody], "as nobody"
    # This interpreter is not readable by nobody (e.g. under /root): stay root but without CAP_NET_ADMIN.
    no_cap = [setpriv, "--inh-caps=-net_admin", "--bounding-set=-net_admin"]
    return [*prefix, *no_cap], "as root without CAP_NET_ADMIN (nobody cannot run this interpreter)"


def test_creating_a_tun_without_privilege_is_a_one_line_error() -> None:
    how = _drop_privileges_prefix()
    if isinstance(how, str):
        pytest.skip(how)
    prefix, description = how
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "wgpy", "-f", "wgpynoperm0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )
    line = _one_line_error(result)
    print(f"{description}: {line}")
    assert re.search(r"root|CAP_NET_ADMIN|permi", line, re.IGNORECASE), line
    assert not Path("/var/run/wireguard/wgpynoperm0.sock").exists()


# -- demo -----------------------------------------------------------------------------------------------------------


def test_demo_runs_and_reports() -> None:
    result = wgpy("demo", "--seconds", "1")
    assert result.returncode == 0, result.stderr
    done = [line for line in result.stdout.splitlines() if line.startswith("done:")]
    assert len(done) == 1, result.stdout
    match = re.match(r"done: (\d+) packets A->B and (\d+) back, (\d+) handshake", done[0])
    assert match is not None, done[0]
    a_to_b, back, handshakes = (int(g) for g in match.groups())
    assert a_to_b > 0 and back > 0 and handshakes >= 1


def test_demo_rejects_bad_arguments() -> None:
    line = _one_line_error(wgpy("demo", "--seconds", "0"))
    assert "--seconds" in line


# -- every command keeps the error contract -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("trace", "--vectors", "/nonexistent/handshake_transcripts.json"), "wgpy trace: cannot read"),
        (("trace", "--golden", "nope"), "wgpy trace: "),
        (
            (
                "probe",
                "--endpoint",
                "bad",
                "--peer-public-key",
                "x",
                "--private-key-file",
                "/nonexistent",
                "--tunnel-address",
                "10.0.0.1",
                "--target",
                "10.0.0.2",
            ),
            "wgpy probe: error: --endpoint",
        ),
        (("mesh", "pubkey"), "wgpy: Key is not the correct length or format"),
        (("mesh", "sign", "--key", "/nonexistent", "map.json"), "wgpy: cannot read the key /nonexistent"),
        (("mesh", "apply", "bad/name", "/dev/null"), "wgpy: invalid interface name"),
        (("-f", "--mesh-map", "map.json", "wgpybad0"), "wgpy: --mesh-map need --mesh-key"),
    ],
    ids=["trace-file", "trace-case", "probe", "mesh-pubkey", "mesh-sign", "mesh-apply", "daemon-mesh"],
)
def test_each_command_reports_bad_input_in_one_line(argv: tuple[str, ...], expected: str) -> None:
    line = _one_line_error(wgpy(*argv, stdin="garbage\n"))
    assert line.startswith(expected), line


# -- the standard streams: closed, full, unreadable (issue #11 item 5) -----------------------------------------------


def _run_shell(command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` under sh, with ``$WGPY`` standing for this interpreter running ``-m wgpy``."""
    full_env = dict(os.environ if env is None else env, PYTHONPATH=str(REPO_ROOT))
    full_env["WGPY"] = f"{sys.executable} -m wgpy"
    return subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO_ROOT, env=full_env, check=False
    )


def _one_line_on_stderr(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["pubkey", "mesh pubkey"])
def test_a_closed_stdin_is_a_one_line_error(command: str) -> None:
    line = _one_line_on_stderr(_run_shell(f"exec $WGPY {command} <&-"))
    assert line == "wgpy: cannot read standard input: it is closed", line


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize(
    "command", ["genkey", "genpsk", "pubkey", "mesh keygen", "trace", "trace --json", "--version", "--help"]
)
def test_a_full_stdout_is_a_one_line_error(command: str, buffered: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    key = PrivateKey.generate().to_base64()
    line = _one_line_on_stderr(_run_shell(f"echo {key} | exec $WGPY {command} > /dev/full", env=env))
    assert line == "wgpy: cannot write standard output: No space left on device", line


@pytest.mark.parametrize("command", ["genkey", "genpsk", "pubkey"])
def test_a_closed_stdout_is_a_one_line_error(command: str) -> None:
    key = PrivateKey.generate().to_base64()
    line = _one_line_on_stderr(_run_shell(f"echo {key} | exec $WGPY {command} >&-"))
    assert line == "wgpy: cannot write standard output: it is closed", line


def test_pubkey_rejects_non_ascii_and_oversized_input() -> None:
    assert _one_line_on_stderr(_run_shell("printf '\\377\\376' | exec $WGPY pubkey")).startswith("wgpy: Key is not")
    key = PrivateKey.generate().to_base64()
    huge = _run_shell(f"{{ echo {key}; head -c 100000 /dev/zero | tr '\\0' ' '; }} | exec $WGPY pubkey")
    assert _one_line_on_stderr(huge).startswith("wgpy: Key is not")


# -- the daemon's environment and --keylog: checked before anything exists (issue #11 items 5 and 6) -----------------


def _unique_ifname() -> str:
    return f"wgpyh{os.getpid() % 100000:05d}"[:15]


def _daemon(
    *args: str, env_extra: dict[str, str] | None = None, ifname: str | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """``wgpy -f [args] IFNAME`` in a throwaway network namespace when possible; returns the result and IFNAME."""
    name = ifname or _unique_ifname()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env_extra or {}))
    result = subprocess.run(
        [*_isolated(), sys.executable, "-m", "wgpy", "-f", *args, name],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )
    return result, name


@pytest.mark.parametrize(
    ("variable", "value"),
    [("WG_UAPI_FD", "abc"), ("WG_UAPI_FD", "-1"), ("WG_UAPI_FD", ""), ("WG_TUN_FD", "abc"), ("WG_TUN_FD", "3x")],
)
def test_a_bad_descriptor_variable_is_a_one_line_error(variable: str, value: str) -> None:
    result, name = _daemon(env_extra={variable: value})
    line = _one_line_on_stderr(result)
    assert line == f"wgpy: {variable}={value!r} is not a file descriptor number", line
    assert not Path(f"/var/run/wireguard/{name}.sock").exists()


def _needs_an_interface() -> None:
    if os.geteuid() != 0 or not _isolated():
        pytest.skip("needs root and `unshare --net`: the daemon gets as far as creating its TUN device")


def test_a_key_log_that_cannot_be_opened_leaves_nothing_behind(tmp_path: Path) -> None:
    _needs_an_interface()
    result, name = _daemon("--keylog", str(tmp_path / "missing" / "k"))
    line = _one_line_on_stderr(result)
    assert line.startswith(f"wgpy: cannot open key log {tmp_path}/missing/k: No such file"), line
    assert not Path(f"/var/run/wireguard/{name}.sock").exists()


def test_a_key_log_created_for_a_daemon_that_fails_is_removed(tmp_path: Path) -> None:
    result, _ = _daemon("--keylog", str(tmp_path / "k"), ifname="bad/name")
    assert "interface name" in _one_line_on_stderr(result)
    assert not (tmp_path / "k").exists()


def _refused_targets(tmp_path: Path) -> dict[str, Path]:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (tmp_path / "symlink").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.link(victim, tmp_path / "hardlink")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    return {
        "symlink": tmp_path / "symlink",
        "dangling": tmp_path / "dangling",
        "hardlink": tmp_path / "hardlink",
        "fifo": tmp_path / "fifo",
        "dir": tmp_path / "dir",
    }


@pytest.mark.parametrize("kind", ["symlink", "dangling", "hardlink", "fifo", "dir"])
def test_the_daemon_refuses_a_key_log_that_is_not_its_own_regular_file(tmp_path: Path, kind: str) -> None:
    _needs_an_interface()
    target = _refused_targets(tmp_path)[kind]
    result, name = _daemon("--keylog", str(target))
    line = _one_line_on_stderr(result)
    assert line.startswith(f"wgpy: cannot open key log {target}: "), line
    assert not Path(f"/var/run/wireguard/{name}.sock").exists()
    victim = tmp_path / "victim"
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_mode & 0o777 == 0o644  # no fchmod through the link
    assert not (tmp_path / "nowhere").exists()


def test_open_keylog_checks_the_file_it_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wgpy.cli.daemon import _open_keylog

    for kind, target in _refused_targets(tmp_path).items():
        with pytest.raises(OSError, match=r"refused|Is a directory"):
            _open_keylog(str(target))
        assert (tmp_path / "victim").read_text() == "precious\n", kind
    assert (tmp_path / "victim").stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "nowhere").exists()

    # A new file is created 0600; an existing one of ours is narrowed to 0600 and appended to.
    fresh = _open_keylog(str(tmp_path / "fresh"))
    assert fresh.created and (tmp_path / "fresh").stat().st_mode & 0o777 == 0o600
    fresh.close(remove=False)
    mine = tmp_path / "mine"
    mine.write_text("old\n")
    mine.chmod(0o644)
    opened = _open_keylog(str(mine))
    os.write(opened.fd, b"new\n")
    opened.close(remove=True)  # not created by this run: stays
    assert mine.read_text() == "old\nnew\n" and mine.stat().st_mode & 0o777 == 0o600

    # Owned by someone else (simulated: the daemon's user is another uid).
    real = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    with pytest.raises(OSError, match=r"owned by uid \d+, not by this daemon's user .*refused"):
        _open_keylog(str(mine))
