"""NAT traversal's I/O shells: ``handler`` (the tunnel's socket hook and timers), ``relay`` (a TURN allocation
through aioice) and ``server`` (the management stream's candidate and TURN frames)."""
