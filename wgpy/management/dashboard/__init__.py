"""The admin dashboard (issue #16): server-rendered pages at ``/`` over the management API's own handlers.

``app.py`` holds the routes (the I/O shell, mounted by ``ManagementServer.app``); ``session.py`` (session cookies,
CSRF tokens) and ``views.py`` (search, sorting, the network drawing) are pure.
"""
