"""A throwaway PostgreSQL cluster for the management tests: ``postgres_url`` (a module-scoped fixture: initdb in a
temporary folder, a private Unix socket, as the ``postgres`` user when run as root, torn down afterwards) and
``reset`` (an empty schema). Skipped, with the reason, unless ``initdb``/``pg_ctl`` are installed; ``.ci/run``
installs Debian's ``postgresql`` and fails on any skip."""

from __future__ import annotations

import asyncio
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from wgpy.management import store

__all__ = ["postgres_url", "reset"]

PORT = 54329


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser")
    return [runuser, "-u", "postgres", "--", *args]


def _pg_tool(name: str) -> str | None:
    """``name`` on the PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin`` (not on the PATH there)."""
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(
        (path for path in pathlib.Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if path.parts[-3].isdigit()),
        key=lambda path: int(path.parts[-3]),
    )
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user")
    base = pathlib.Path(tempfile.mkdtemp(prefix="wgpy-pg-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (base, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", str(data), "-U", "postgres", "-A", "trust"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-k {sockets} -p {PORT} -c listen_addresses='' -c fsync=off"
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(base / "log"), "start"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL cluster: {exc}")
    try:
        yield f"postgresql+asyncpg://postgres@/postgres?host={sockets}&port={PORT}"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def reset(url: str) -> None:
    async def run() -> None:
        engine = store.create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("DROP SCHEMA public CASCADE")
                await connection.exec_driver_sql("CREATE SCHEMA public")
        finally:
            await engine.dispose()

    asyncio.run(run())
