"""``python -m wgpy demo --mesh``: run it as a user would and check the facts its output states."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_mesh_demo_shows_the_model_and_revocation() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "wgpy", "demo", "--mesh"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
        check=False,
    )
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Traceback" not in result.stderr
    assert took < 25, f"the demo took {took:.1f} s"
    for name, address, group in (
        ("developer-laptop", "100.64.0.", "developers"),
        ("production-server", "100.64.0.", "production"),
        ("other", "100.64.0.", "other"),
    ):
        assert re.search(rf"enrolled {name}\s+{re.escape(address)}\d+\s+group {group}", out), out
    for port in (22, 443):
        assert re.search(
            rf"ALLOWED\s+developer-laptop -> production-server tcp/{port}: SYN arrived, SYN-ACK came back", out
        )
    assert re.search(r"DENIED\s+developer-laptop -> production-server tcp/80: dropped .*deny-all-other", out)
    assert re.search(r"DENIED\s+other -> production-server tcp/22: nothing arrives", out)
    assert re.search(
        r"DENIED\s+other, compromised .*: handshake refused by production-server \(unknown peer: \d+\)", out
    )
    assert re.search(r"DENIED\s+production-server -> developer-laptop tcp/22 \(new connection\): dropped", out)
    assert "counters developer-laptop: accepted [allow-dev-to-prod=2] denied [deny-all-other=1]" in out
    revoked = re.search(r"production-server: map serial \d+ no longer lists developer-laptop, ([0-9.]+) s after", out)
    assert revoked is not None and float(revoked.group(1)) < 1.0, out
    assert re.search(r"CUT\s+developer-laptop -> production-server tcp/22: nothing arrives any more", out)
    checks = re.search(r"done: (\d+)/(\d+) checks passed", out)
    assert checks is not None and checks.group(1) == checks.group(2)
    # everything is cleaned up: the temporary folder with the database and the peers' state is gone
    folder = re.search(r"SQLite in (\S+)/server", out)
    assert folder is not None and not Path(folder.group(1)).exists()
