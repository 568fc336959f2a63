"""The command-line programs (``nuraft-mesg <command>``, also ``python -m nuraft_mesg``).

The top layer of the package: it may import every other layer, and no library module imports
it (tests/test_layers.py).  :mod:`~nuraft_mesg.cli.main` parses the verb and hands the rest of
the arguments to the program that owns it:

* ``demo``: :mod:`~nuraft_mesg.cli.demo`, a local three-node cluster on loopback;
* ``server``: :mod:`~nuraft_mesg.cli.server`, one node with a durable store;
* ``client`` and ``status``: :mod:`~nuraft_mesg.cli.remote`, talk to running nodes;
* ``repl``: :mod:`~nuraft_mesg.cli.repl`, a console with top-level ``await``.

:mod:`~nuraft_mesg.cli.security` holds the TLS and token options they share and
:mod:`~nuraft_mesg.cli.status_format` renders the node status table.
"""
