"""Debian trixie's wireguard-go (0.0.20231211, the first Debian build with TUN GSO/GRO offloads), for e2e.py.

Usage (root, for apt's download): ``python benchmarks/fetch_wireguard_go.py`` prints the binary's path and version.

Nothing is installed and the machine's apt sources are not touched: apt reads a temporary sources list naming only
trixie, keeps its package lists in a temporary folder, and checks the download as usual (the InRelease signature
against Debian's archive keyring, the .deb's SHA-256 against the signed Packages index). ``dpkg-deb -x`` unpacks the
.deb into that folder and the static ``usr/bin/wireguard-go`` is copied to ``benchmarks/.cache/`` (git-ignored),
where later runs find it. The binary is run once with ``--version`` before it is used.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

CACHE: Final = Path(__file__).resolve().parent / ".cache"
PACKAGE: Final = "wireguard-go"
VERSION: Final = "0.0.20231211"  # trixie's upstream version; the Debian revision (-1+bN) may move
MIRROR: Final = "http://deb.debian.org/debian"
KEYRING: Final = "/usr/share/keyrings/debian-archive-keyring.gpg"


class FetchError(RuntimeError):
    pass


def binary_path(cache: Path = CACHE) -> Path:
    return cache / f"wireguard-go-{VERSION}-trixie" / "wireguard-go"


def version_of(binary: Path) -> str:
    """The first line ``binary --version`` prints; it also shows that the binary runs here."""
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)
    first = (result.stdout.strip().splitlines() or [""])[0]
    if result.returncode != 0 or not first.startswith("wireguard-go"):
        raise FetchError(f"{binary} --version failed ({result.returncode}): {result.stderr.strip() or first}")
    return first


def _apt(options: list[str], *args: str, cwd: Path | None = None) -> None:
    result = subprocess.run(
        ["apt-get", *options, *args], capture_output=True, text=True, timeout=600, check=False, cwd=cwd
    )
    if result.returncode != 0:
        raise FetchError(f"apt-get {' '.join(args)} failed: {result.stderr.strip()[-500:]}")


def fetch(cache: Path = CACHE) -> Path:
    """The cached binary, downloaded and unpacked first if it is not there yet."""
    target = binary_path(cache)
    if target.exists():
        version_of(target)
        return target
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} not found: trixie's wireguard-go is fetched with Debian's apt")
    with tempfile.TemporaryDirectory(prefix="wgpy-trixie-apt-") as scratch:
        root = Path(scratch)
        sources = root / "sources.list"
        sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} trixie main\n")
        (root / "lists" / "partial").mkdir(parents=True)
        (root / "cache" / "archives" / "partial").mkdir(parents=True)
        options = [
            "-q",
            "-o",
            f"Dir::Etc::sourcelist={sources}",
            "-o",
            "Dir::Etc::sourceparts=-",
            "-o",
            f"Dir::State::Lists={root / 'lists'}",
            "-o",
            f"Dir::Cache={root / 'cache'}",  # apt's binary caches too stay out of /var/cache/apt
            "-o",
            "APT::Get::List-Cleanup=0",
            "-o",
            "APT::Sandbox::User=root",  # the scratch folder is root's; apt's _apt user could not write there
        ]
        _apt(options, "update")
        download = root / "download"
        download.mkdir()
        _apt(options, "download", PACKAGE, cwd=download)
        debs = sorted(download.glob(f"{PACKAGE}_{VERSION}-*_*.deb"))
        if len(debs) != 1:
            found = ", ".join(p.name for p in download.iterdir()) or "nothing"
            raise FetchError(f"expected one {PACKAGE}_{VERSION} .deb from trixie, got {found}")
        unpacked = root / "unpacked"
        result = subprocess.run(
            ["dpkg-deb", "-x", str(debs[0]), str(unpacked)], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise FetchError(f"dpkg-deb -x {debs[0].name} failed: {result.stderr.strip()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_suffix(".new")
        shutil.copy2(unpacked / "usr" / "bin" / PACKAGE, staged)
        (target.parent / "SOURCE").write_text(f"{debs[0].name} from {MIRROR} trixie main, unpacked with dpkg-deb -x\n")
        version_of(staged)
        staged.replace(target)
    return target


def main() -> int:
    try:
        binary = fetch()
        print(f"{binary}: {version_of(binary)}")
    except (FetchError, OSError, subprocess.SubprocessError) as exc:
        print(f"fetch_wireguard_go: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
