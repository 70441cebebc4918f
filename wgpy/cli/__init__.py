"""Command line: every ``wgpy`` command's argument parsing and output; this package is the only place that prints.

``main`` dispatches on the first argument to one module per command:

- ``wgpy [-f|--foreground] IFNAME``: the interface daemon (``daemon``), wireguard-go's invocation;
- ``wgpy genkey | pubkey | genpsk``: keys printed the way ``wg`` does (``keys``);
- ``wgpy mesh keygen | pubkey | sign | apply``: signed network maps for mesh mode (``mesh``);
- ``wgpy trace``: a handshake replayed one Noise token at a time (``trace``, over ``wgpy.tools.trace``);
- ``wgpy probe``: protocol checks against a live endpoint (``probe``, over ``wgpy.tools.probe``);
- ``wgpy demo``: two wgpy peers in one process over UDP on 127.0.0.1 (``demo``, over ``wgpy.tools.demo``), and
  ``wgpy demo --mesh``: the management server, policy and three enrolled peers (over ``wgpy.tools.mesh_demo``);
- ``wgpy up | status | down | logout``: the mesh agent on a device (``up``, over ``wgpy.agent``);
- ``wgpy management init | serve`` and ``wgpy admin ...``: the management server and its admin client
  (``management``, ``admin``, over ``wgpy.management``).

Bad input gives one line on stderr and a non-zero exit status, never a traceback. That includes the standard streams:
a closed stdin, a closed or full stdout (``wgpy genkey > /dev/full``) is reported by ``main`` in one line (see
``_streams``), and the output is flushed before the status is returned, so that the failure cannot surface at exit.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import __version__
from ._streams import StreamError, discard_stdout, write_stdout

__all__ = ["main"]

USAGE = (
    "usage: wgpy [-f|--foreground] [--worker] [--keylog FILE] INTERFACE\n"
    "       wgpy [-f] --mesh-key KEY [--mesh-map FILE] [--mesh-state FILE] [--fail-closed]"
    " [--audit-log FILE|-] INTERFACE\n"
    "       wgpy mesh keygen | pubkey | sign --key FILE MAP.json | apply INTERFACE FILE\n"
    "       wgpy genkey | pubkey | genpsk\n"
    "       wgpy demo [--mesh] [--seconds N]\n"
    "       wgpy up --management URL --setup-key KEY --management-key B64 [--name NAME] ... (--help)\n"
    "       wgpy status | down | logout\n"
    "       wgpy management init | serve ... (--help)\n"
    "       wgpy admin setup-key | peer | policy | audit ... (--help)\n"
    "       wgpy trace [--golden no_psk|psk | --random] [--json]\n"
    "       wgpy probe --endpoint HOST:PORT --peer-public-key B64 --private-key-file FILE ... (--help)\n"
    "       wgpy --version"
)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``wgpy`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _dispatch(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # a buffered stdout that cannot be written fails here, not in the exit handler
    except StreamError as exc:
        discard_stdout()
        print(f"wgpy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A command that prints directly (probe, demo) and hit a closed pipe or a full disk: still one line.
        discard_stdout()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"wgpy: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return status


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        write_stdout(USAGE + "\n")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("--version", "-v", "version"):
        write_stdout(f"wgpy {__version__}\n")
        return 0
    if command in ("genkey", "genpsk", "pubkey"):
        from . import keys

        return {"genkey": keys.genkey, "genpsk": keys.genpsk, "pubkey": keys.pubkey}[command]()
    if command == "trace":
        from .trace import main as trace_main

        return trace_main(rest)
    if command == "probe":
        from .probe import main as probe_main

        return probe_main(rest)
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if command == "mesh":
        from .mesh import main as mesh_main

        return mesh_main(rest)
    if command == "management":
        from .management import main as management_main

        return management_main(rest)
    if command == "admin":
        from .admin import main as admin_main

        return admin_main(rest)
    if command in ("up", "status", "down", "logout"):  # the agent (wgpy/cli/up.py)
        from . import up

        return {"up": up.main_up, "status": up.main_status, "down": up.main_down, "logout": up.main_logout}[command](
            rest
        )
    from .daemon import main as daemon_main

    return daemon_main(args)
