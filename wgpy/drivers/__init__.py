"""Drivers: the thin I/O layers that join the sans-I/O ``Device`` to sockets, a TUN device and a clock."""
