"""Tools built on the core, not part of it: ``trace`` (a handshake one Noise token at a time), ``conformance`` (the
probe's checks and hostile messages), ``probe`` (those checks against a live endpoint) and ``demo`` (two peers over
UDP on 127.0.0.1). They are part of the I/O layer (sockets, clocks, package data); their command lines are in
``wgpy.cli``. ``data/`` holds the golden handshake transcripts ``wgpy trace --golden`` reads (package data).
"""
