"""Short-lived TURN credentials, the "TURN REST API" scheme coturn checks with ``use-auth-secret``.

``username = "<expiry unix time>:<peer id>"`` and ``password = base64(HMAC-SHA1(secret, username))``
(draft-uberti-behave-turn-rest-00 §2.2, coturn's ``static-auth-secret``). The management server computes them per
peer from the secret it shares with coturn; no static password ever goes into a map, and a leaked pair is useless
after ``expires_at``. Pure: ``now`` is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

__all__ = ["TURN_CREDENTIAL_LIFETIME", "TurnCredentials", "turn_credentials"]

TURN_CREDENTIAL_LIFETIME: Final = 3600  # seconds (ours: the access token's lifetime)


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    username: str
    password: str
    expires_at: int

    def __repr__(self) -> str:
        return f"TurnCredentials(username={self.username!r}, password=<hidden>, expires_at={self.expires_at})"


def turn_credentials(
    secret: bytes, peer_id: str, now: float, lifetime: int = TURN_CREDENTIAL_LIFETIME
) -> TurnCredentials:
    if not secret:
        raise ValueError("the TURN secret is empty")
    if ":" in peer_id:
        raise ValueError("a peer id with ':' would be ambiguous in the username")
    expires_at = int(now) + lifetime
    username = f"{expires_at}:{peer_id}"
    password = base64.b64encode(hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()).decode("ascii")
    return TurnCredentials(username, password, expires_at)
