"""Wire transport: nuraft_mesg's protobuf schema, the codec between it and the sans-IO core
types, and (later) the purerpc client and server that carry ``Messaging/RaftStep``.

The generated code lives in :mod:`nuraft_mesg.transport._proto` (regenerate it with
``python3 tools/dev.py proto``); nothing outside this package should import it directly.
"""
