"""Transport only: gRPC servicers, HTTP routes, error mapping, auth, health, reflection, metrics, and
the checks run before a server binds a port (``preflight.py``).

May import: everything below it (``engine/``, ``index/``, ``models/``, ``config``, ``errors``, ``wire``,
``codecs``) and grpc with the generated code; nothing imports it but ``cli/``. Doors only convert:
wire types to plain values and back, errors to status codes; they never reach into engine internals.
"""
