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
