"""The management plane: the server that enrols devices and hands each one its signed network map.

Pure decisions (``policy``, ``tokens``, ``proof``, ``enrolment``) are functions of their inputs and ``now``; the
server's I/O (database, HTTP, WebSocket) is a thin shell around them. ``docs/management-api.md`` is the contract.
"""

from __future__ import annotations
