"""``wgpy up`` against a management server that serves TLS (``wgpy management serve --tls-cert/--tls-key``).

On a hostile network (the model's rogue access point) the management link's confidentiality and the authenticity
of everything but the signed maps and revocation notices rest on TLS: a setup key sent over plain HTTP can be read
by anyone on the path. Here the server has a self-signed certificate for 127.0.0.1. An agent that does not trust it
refuses to talk (one line, nothing enrolled); given the certificate through ``SSL_CERT_FILE`` (OpenSSL's own
variable, which Python's default TLS context reads) it enrols, connects and takes its map over ``https://`` and
``wss://``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from pathlib import Path

from support.management_fixtures import admin_request
from support.tls import self_signed_certificate

from wgpy.management.server import free_port, init_state, serve
from wgpy.tools.mesh_demo import POLICY

REPO = Path(__file__).resolve().parents[2]


async def _wgpy(*args: str, trust: Path | None) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WGPY_KEYRING": "0", "LOG_LEVEL": "info"}
    env.pop("WG_PROCESS_FOREGROUND", None)
    env.pop("SSL_CERT_FILE", None)
    env.pop("SSL_CERT_DIR", None)
    if trust is not None:
        env["SSL_CERT_FILE"] = str(trust)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wgpy", *args, env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, out.decode(), err.decode()


def test_up_over_tls_refuses_an_untrusted_certificate_and_enrols_with_a_trusted_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        cert, key = self_signed_certificate(tmp_path)
        keys, token = await init_state(tmp_path / "server")
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        port = free_port()
        task = asyncio.create_task(
            serve(tmp_path / "server", None, "127.0.0.1", port, tls_cert=cert, tls_key=key, ready=ready.set_result)
        )
        state = tmp_path / "agent"
        try:
            url = await asyncio.wait_for(ready, 10)
            assert url.startswith("https://")
            trusted = ssl.create_default_context(cafile=str(cert))
            status, _ = await admin_request(url, token, "PUT", "/api/v1/policy", yaml=POLICY, ssl=trusted)
            assert status == 200
            status, body = await admin_request(
                url, token, "POST", "/api/v1/setup-keys", json={"name": "k", "auto_groups": ["developers"]}, ssl=trusted
            )
            assert status == 201 and isinstance(body, dict)
            up = ["up", "--management", url, "--management-key", keys.info()["signing_key"], "--no-tun"]
            up += ["--setup-key", str(body["key"]), "--state-dir", str(state)]

            code, _out, err = await _wgpy(*up, trust=None)
            assert code != 0 and "Traceback" not in err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "certificate" in lines[0].lower(), err
            assert not (state / "state.json").exists()  # nothing enrolled

            code, _out, err = await _wgpy(*up, trust=cert)
            assert code == 0, err
            code, out, err = await _wgpy("status", "--json", "--state-dir", str(state), trust=cert)
            assert code == 0, err
            assert '"connected": true' in out, out
            assert '"map_serial": null' not in out, out
        finally:
            await _wgpy("down", "--state-dir", str(state), trust=cert)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 90))
