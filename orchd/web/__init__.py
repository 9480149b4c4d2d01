"""orchd-web: the dashboard and HTTP API, a face like the CLI.

It reads and acts through the same data-layer calls as the matching ``orchd`` commands (same
guards, same errors) and holds no SQL and no scheduling logic of its own.  Its parts:
``auth`` (users, passwords, tokens, sessions), ``app`` (routes, security middleware), ``pages``
and ``api`` (the two faces of the same objects), ``live`` (server-sent events fed by
LISTEN/NOTIFY or a cheap change check), ``charts`` (server-rendered SVG) and ``server`` (the
daemon: uvicorn with systemd readiness and watchdog).
"""
