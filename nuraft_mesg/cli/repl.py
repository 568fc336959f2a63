"""``nuraft-mesg repl``: a Python console on a live local cluster, with top-level ``await``.

::

    $ nuraft-mesg repl --nodes 3
    >>> g = await new_group()
    >>> await m1.append_entries(g, [b"set x 1"])
    [b'OK']
    >>> partition(m1); await cluster.wait_leader(g, among=nodes[1:])
    >>> status()

See docs/repl.md for every helper and an example session.

How it runs (the idea of ``python -m trio``'s console, arranged differently):

* The cluster (a :class:`~nuraft_mesg.testing.local.LocalCluster` whose transports go through
  :class:`~nuraft_mesg.testing.faults.FaultyTransport`) lives in ``trio.run`` on a background
  thread, so groups keep electing, heartbeating and replicating between prompts.
* The console (:class:`code.InteractiveConsole`, compiling with
  ``ast.PyCF_ALLOW_TOP_LEVEL_AWAIT``) reads lines in the **main** thread.  Every statement runs
  in the trio thread, as a task of the session's nursery: a statement containing ``await``
  compiles to a coroutine function and is awaited there; any other statement is called there,
  so helpers and user code touch the nodes only from their own thread.
* Ctrl-C therefore behaves as in Python's REPL: SIGINT is delivered to the main thread, so at
  the prompt it discards the line being typed (``input()`` raises KeyboardInterrupt); while a
  statement runs it cancels that statement's cancel scope (a second Ctrl-C stops waiting for
  it).  ``python -m trio`` reads in a worker thread instead and, to break ``input()`` on
  Ctrl-C, injects a newline with ``TIOCSTI``, which recent Linux kernels refuse.
* Ctrl-D (EOF) or ``exit()`` stops the trio run: every node shuts down in order, exit code 0.
"""

from __future__ import annotations

import argparse
import ast
import code
import contextlib
import inspect
import logging
import queue
import signal
import sys
import threading
import traceback
import types
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import trio

from nuraft_mesg.cli.demo import status_table
from nuraft_mesg.manager import Manager
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing.faults import NetworkFaults
from nuraft_mesg.testing.local import LocalCluster, LocalNode

__all__ = ["NodeHandle", "ReplSession", "main"]

GROUP_TYPE = "repl"
PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))

HELP = """\
Names (every statement runs in the cluster's trio thread: use `await` directly)
  m1, m2, ...   node k's current Manager, kept across restarts:
                  await m1.append_entries(g, [b"set x 1"]);  m1.group(g).statistics()
  nodes         the LocalNodes;  cluster: the LocalCluster (cluster.wait_until(...), ...)
  groups        ids of the groups made by new_group(), oldest first
  faults        the NetworkFaults behind partition()/heal(): block(a, b), cut_links, ...
  trio          the trio module: await trio.sleep(1), with trio.fail_after(5): ...
Helpers (g: a group id or a unique prefix of one; m: m1, 1, "node1", a uuid)
  await new_group(on=None, members=None)
                create a group on `on` (default: the first live node) and add the other
                live nodes (or `members`); returns its id
  status(*g)    per group: leader, term, commit, applied and lag per node, members
  leader(g)     the handle of g's leader (of the highest term), or None
  await wait_leader(g, among=None)
                wait until g has a leader (one of `among`); returns its handle
  await wait_applied(g, among=None)
                wait until every live node (or `among`) applied the leader's commit index
  kv(g, m=None) the key-value data of g on node m (default: the leader)
  await get(g, key, m=None, mode="linearizable")
                read key through node m (default: the leader): linearizable, lease or
                stale (docs/reads.md); None when it is not set
  partition(*m) cut every link between the given nodes and the others (cuts add up)
  heal()        restore every link
  await kill(m) stop node m (a crash: its in-memory state is kept for restart)
  await restart(m)
                start node m again on its port; it rejoins its groups
  metrics()     Prometheus text of every live node (pip install nuraft_mesg[metrics])
  help_repl()   this text
Ctrl-C cancels the line being typed or the running statement; Ctrl-D (or exit()) quits."""


class NodeHandle:
    """``m1``, ``m2``, ...: a node's *current* Manager.

    Attribute access goes to the running Manager, so a handle stays valid across
    ``kill``/``restart`` (each start makes a new Manager); while the node is down it raises
    ``RuntimeError("nodeK is down")``.
    """

    __slots__ = ("node", "var")

    def __init__(self, node: LocalNode, var: str) -> None:
        self.node = node
        self.var = var

    @property
    def manager(self) -> Manager:
        return self.node.mgr

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def uuid(self) -> str:
        return self.node.uuid

    @property
    def up(self) -> bool:
        return self.node.up

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.node.mgr, attr)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(Manager)) | {"manager", "name", "node", "up", "uuid", "var"})

    def __repr__(self) -> str:
        n = self.node
        mgr = n.manager
        if mgr is None:
            return f"<{self.var}: {n.name} DOWN (port {n.port})>"
        gids = mgr.group_ids
        leads = sum(1 for g in gids if mgr.group(g).is_leader)
        return (f"<{self.var}: {n.name} {n.uuid[:8]} on 127.0.0.1:{n.port}, "
                f"{len(gids)} group(s), leader of {leads}>")


NodeRef = NodeHandle | LocalNode | Manager | str | int


class ClusterGone(RuntimeError):
    """The trio run holding the cluster has ended (it failed): nothing can run any more."""


class ReplSession:
    """The cluster side of the REPL: runs ``trio.run`` (call :meth:`run` in a thread) and
    executes console statements in it (:meth:`execute`, from the console's thread)."""

    def __init__(self, n_nodes: int = 3, *, metrics_port: int | None = None) -> None:
        if n_nodes < 1:
            raise ValueError("need at least one node")
        self.n_nodes = n_nodes
        self.metrics_port = metrics_port
        self.metrics_url = ""
        self.faults = NetworkFaults()
        self.groups: list[str] = []
        self.namespace: dict[str, object] = {}
        self.ready = threading.Event()
        """Set once the cluster is up (or failed to start: see :attr:`error`)."""
        self.error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._cluster: LocalCluster | None = None
        self._lock = threading.Lock()
        self._pending: set[queue.SimpleQueue[BaseException | None]] = set()
        self._finished = False

    # ==========================================================================================
    # The trio thread
    # ==========================================================================================
    def run(self) -> None:
        """The trio thread's body: the cluster lives until :meth:`stop`."""
        if hasattr(signal, "pthread_sigmask"):
            # SIGINT must interrupt the console's blocking read or wait, and the kernel hands
            # a process-directed signal to any thread that does not block it: block it here,
            # in this thread and in every thread it starts (trio's workers, metrics server).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by the console thread
            self.error = exc
        finally:
            with self._lock:
                self._finished = True
                for done in self._pending:
                    done.put(ClusterGone(f"the cluster stopped: {self.error!r}"))
                self._pending.clear()
            self.ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with LocalCluster.open(
            self.n_nodes,
            group_types={GROUP_TYPE: PARAMS},
            default_group_type=GROUP_TYPE,
            transport_wrapper=self.faults.wrap,
        ) as cluster, trio.open_nursery() as nursery:
            self._cluster = cluster
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self.namespace = self._bindings(cluster)
            stop_metrics = self._start_metrics(cluster)
            try:
                self.ready.set()
                await self._stop.wait()
            finally:
                stop_metrics()
                nursery.cancel_scope.cancel()

    def _start_metrics(self, cluster: LocalCluster) -> Callable[[], None]:
        if self.metrics_port is None:
            return lambda: None
        from nuraft_mesg.metrics import serve_metrics

        server, _thread = serve_metrics(
            lambda: [n.manager for n in cluster.nodes if n.manager is not None],
            port=self.metrics_port,
        )
        self.metrics_url = f"http://127.0.0.1:{server.server_port}/metrics"

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return stop

    def stop(self) -> None:
        """Ask the trio thread to shut the cluster down (from any thread)."""
        token, stop = self._token, self._stop
        if token is not None and stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(stop.set)

    # ==========================================================================================
    # Running console statements
    # ==========================================================================================
    def execute(self, fn: Callable[[], object], *, is_async: bool) -> BaseException | None:
        """Run ``fn()`` (awaited when ``is_async``) in the trio thread; wait for it in this
        thread.  Returns what it raised (KeyboardInterrupt when Ctrl-C cancelled it), or None.
        A SystemExit raised by ``fn`` is returned like any other exception."""
        done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        scope: list[trio.CancelScope] = []
        with self._lock:
            if self._finished or self._token is None:
                return ClusterGone(f"the cluster is not running: {self.error!r}")
            self._pending.add(done)
        try:
            try:
                self._token.run_sync_soon(self._spawn, fn, is_async, done, scope)
            except trio.RunFinishedError:
                return ClusterGone(f"the cluster stopped: {self.error!r}")
            try:
                return done.get()
            except KeyboardInterrupt:
                pass
            # Ctrl-C while the statement runs: cancel it and let it unwind.
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(lambda: scope[0].cancel())
            try:
                return done.get()
            except KeyboardInterrupt:
                sys.stderr.write("\n(still running: it is cancelled when the REPL exits)")
                return KeyboardInterrupt()
        finally:
            with self._lock:
                self._pending.discard(done)

    def _spawn(self, fn: Callable[[], object], is_async: bool,
               done: queue.SimpleQueue[BaseException | None],
               scope_box: list[trio.CancelScope]) -> None:
        # In the trio thread, outside any task (a run_sync_soon callback).  The scope exists
        # before the task runs, so a Ctrl-C that arrives first still finds it.
        scope = trio.CancelScope()
        scope_box.append(scope)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_statement, fn, is_async, done, scope)

    @staticmethod
    async def _run_statement(fn: Callable[[], object], is_async: bool,
                             done: queue.SimpleQueue[BaseException | None],
                             scope: trio.CancelScope) -> None:
        error: BaseException | None = None
        try:
            with scope:
                result = fn()
                if is_async:
                    assert inspect.isawaitable(result)
                    await result
            if scope.cancelled_caught:
                error = KeyboardInterrupt()
        except trio.Cancelled:  # the REPL is shutting down: nobody waits any more
            done.put(KeyboardInterrupt())
            raise
        except BaseException as exc:  # the statement's own error, shown by the console
            error = exc
        done.put(error)

    # ==========================================================================================
    # The bound names
    # ==========================================================================================
    def _bindings(self, cluster: LocalCluster) -> dict[str, object]:
        handles = [NodeHandle(n, f"m{k}") for k, n in enumerate(cluster.nodes, 1)]
        by_uuid = {h.node.uuid: h for h in handles}
        faults = self.faults

        def node_of(ref: NodeRef) -> LocalNode:
            if isinstance(ref, NodeHandle):
                return ref.node
            if isinstance(ref, LocalNode):
                return ref
            if isinstance(ref, Manager):
                ref = ref.server_uuid
            if isinstance(ref, int) and 1 <= ref <= len(handles):
                return handles[ref - 1].node
            for n in cluster.nodes:
                if ref in (n.uuid, n.name):
                    return n
            raise ValueError(f"unknown node {ref!r} (use m1, m2, ...)")

        def known_groups() -> list[str]:
            seen = list(self.groups)
            for n in cluster.nodes:
                if n.manager is not None:
                    seen.extend(g for g in sorted(n.manager.group_ids) if g not in seen)
            return list(dict.fromkeys(seen))

        def resolve_group(g: str) -> str:
            matches = [x for x in known_groups() if x.startswith(g)]
            if len(matches) != 1:
                raise ValueError(f"{g!r} names {len(matches)} known groups")
            return matches[0]

        def status(*gids: str) -> None:
            """Print the nodes, the cut links and one row per group."""
            up = [f"{n.name}={'up' if n.up else 'DOWN'}" for n in cluster.nodes]
            print("nodes: " + "  ".join(up))
            if faults.cut_links:
                print("cut:   " + describe_cuts())
            chosen = [resolve_group(g) for g in gids] if gids else known_groups()
            if not chosen:
                print("no groups yet: g = await new_group()")
                return
            print(status_table(cluster, chosen, lag=True))

        def describe_cuts() -> str:
            names = {n.uuid: n.name for n in cluster.nodes}
            both: list[str] = []
            cuts = faults.cut_links
            for a, b in sorted(cuts, key=lambda p: (names.get(p[0], p[0]), names.get(p[1], p[1]))):
                na, nb = names.get(a, a[:8]), names.get(b, b[:8])
                if (b, a) in cuts:
                    if na < nb:
                        both.append(f"{na}<->{nb}")
                else:
                    both.append(f"{na}->{nb}")
            return ", ".join(both)

        async def new_group(on: NodeRef | None = None,
                            members: Iterable[NodeRef] | None = None) -> str:
            """Create a group led by ``on`` and add ``members`` (default: the other live
            nodes, with the creator's priority so that any of them may take over)."""
            live = [n for n in cluster.nodes if n.up]
            if not live:
                raise RuntimeError("every node is down")
            owner = node_of(on) if on is not None else live[0]
            others = ([node_of(m) for m in members] if members is not None
                      else [n for n in live if n is not owner])
            gid = str(uuid.uuid4())
            await owner.mgr.create_group(gid, GROUP_TYPE)
            self.groups.append(gid)
            for n in others:
                if n is not owner:
                    await owner.mgr.add_member(gid, n.uuid, priority=100)
            names = ",".join([owner.name, *(n.name for n in others if n is not owner)])
            print(f"group {gid} on {names}, leader {owner.name}")
            return gid

        def leader_node(gid: str, among: list[LocalNode] | None = None) -> LocalNode | None:
            # A leader cut off by partition() still believes it leads its old term: the
            # leader is the one of the highest term.
            claims = [(n.mgr.group(gid).statistics().term, k, n)
                      for k, n in enumerate(cluster.nodes)
                      if (among is None or n in among)
                      and n.up and gid in n.mgr.group_ids and n.mgr.group(gid).is_leader]
            return max(claims, key=lambda c: c[:2])[2] if claims else None

        def leader(g: str) -> NodeHandle | None:
            """The handle of the group's leader (of the highest term; None while it has
            none)."""
            n = leader_node(resolve_group(g))
            return by_uuid[n.uuid] if n is not None else None

        async def wait_leader(g: str, among: Iterable[NodeRef] | None = None) -> NodeHandle:
            """Wait until one of ``among`` (default: any node) leads the group; its handle
            (the leader of the highest term)."""
            gid = resolve_group(g)
            nodes_ = [node_of(m) for m in among] if among is not None else None
            await cluster.wait_until(lambda: leader_node(gid, nodes_) is not None)
            n = leader_node(gid, nodes_)
            assert n is not None
            return by_uuid[n.uuid]

        async def wait_applied(g: str, among: Iterable[NodeRef] | None = None) -> None:
            """Wait until every live node hosting the group (or each of ``among``) applied
            the leader's current commit index (a node cut off never does: Ctrl-C)."""
            gid = resolve_group(g)
            lead = await wait_leader(gid)
            commit = lead.manager.group(gid).statistics().commit_index
            nodes_ = [node_of(m) for m in among] if among is not None else None
            await cluster.wait_applied(gid, commit, among=nodes_)

        def kv(g: str, m: NodeRef | None = None) -> dict[str, str]:
            """The key-value data of the group on node ``m`` (default: the leader)."""
            gid = resolve_group(g)
            n = node_of(m) if m is not None else leader_node(gid)
            if n is None:
                raise RuntimeError(f"group {gid[:8]} has no leader now: name a node")
            smgr = n.app.state_managers.get(gid)
            if smgr is None:
                raise ValueError(f"{n.name} does not host group {gid[:8]}")
            data: dict[str, str] = getattr(smgr.get_state_machine(), "data", {})
            return dict(data)

        async def get(g: str, key: str, m: NodeRef | None = None,
                      mode: str = "linearizable") -> str | None:
            """Read ``key`` of the group through node ``m`` (default: the leader) with
            ``Manager.read``: a follower reads at the leader's read index."""
            gid = resolve_group(g)
            n = node_of(m) if m is not None else leader_node(gid)
            if n is None:
                raise RuntimeError(f"group {gid[:8]} has no leader now: name a node")
            answer = await n.mgr.read(gid, KVStateMachine.get_query(key), mode=mode)
            return KVStateMachine.decode_get(answer)

        def partition(*ms: NodeRef) -> None:
            """Cut every link between the given nodes and the others (both ways)."""
            if not ms:
                raise TypeError("partition() needs at least one node, e.g. partition(m1)")
            side = [node_of(m).uuid for m in ms]
            faults.partition(side)
            print("cut:   " + describe_cuts())

        def heal() -> None:
            """Restore every link."""
            faults.heal()
            print("healed: every link restored")

        async def kill(m: NodeRef) -> None:
            """Stop the node's Manager (its groups stop; its state survives for restart)."""
            n = node_of(m)
            if not n.up:
                print(f"{n.name} is already down")
                return
            await cluster.kill(n)
            print(f"{n.name} killed")

        async def restart(m: NodeRef) -> None:
            """Start the node again on its port and rejoin the groups it held."""
            n = node_of(m)
            if n.up:
                print(f"{n.name} is already up")
                return
            await cluster.restart(n)
            print(f"{n.name} restarted on 127.0.0.1:{n.port}")

        def metrics() -> None:
            """Print the Prometheus exposition of every live node's groups."""
            try:
                from nuraft_mesg.metrics import render
            except ImportError:
                print("prometheus-client is not installed: pip install nuraft_mesg[metrics]")
                return
            live = [n.manager for n in cluster.nodes if n.manager is not None]
            print(render(live).decode(), end="")

        def help_repl() -> None:
            """List the REPL's names and helpers."""
            print(HELP)

        ns: dict[str, object] = {
            "__name__": "__console__",
            "__doc__": None,
            "trio": trio,
            "cluster": cluster,
            "nodes": cluster.nodes,
            "groups": self.groups,
            "faults": faults,
            "status": status,
            "new_group": new_group,
            "leader": leader,
            "wait_leader": wait_leader,
            "wait_applied": wait_applied,
            "kv": kv,
            "get": get,
            "partition": partition,
            "heal": heal,
            "kill": kill,
            "restart": restart,
            "metrics": metrics,
            "help_repl": help_repl,
        }
        for h in handles:
            ns[h.var] = h
        return ns


class ClusterConsole(code.InteractiveConsole):
    """An InteractiveConsole whose statements run in the session's trio thread."""

    def __init__(self, session: ReplSession) -> None:
        super().__init__(locals=session.namespace)
        self.session = session
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

    def runcode(self, code: types.CodeType) -> None:
        func = types.FunctionType(code, self.locals)
        error = self.session.execute(func, is_async=inspect.iscoroutinefunction(func))
        if error is None:
            return
        if isinstance(error, SystemExit):
            raise error
        if isinstance(error, ClusterGone):
            raise SystemExit(1)  # main() reports the cluster's error
        if isinstance(error, KeyboardInterrupt) and error.__traceback__ is None:
            self.write("\nKeyboardInterrupt\n")
            return
        self.show_exception(error)

    def show_exception(self, error: BaseException) -> None:
        tb = error.__traceback__
        # Drop the runner's own frame: the traceback starts at the statement.
        if tb is not None and tb.tb_frame.f_code is ReplSession._run_statement.__code__:
            tb = tb.tb_next
        sys.last_type, sys.last_value, sys.last_traceback = type(error), error, tb
        self.write("".join(traceback.format_exception(type(error), error, tb)))


def _displayhook(value: object) -> None:
    """sys.displayhook that answers a forgotten ``await`` instead of printing a coroutine."""
    if inspect.iscoroutine(value):
        name = getattr(value, "__name__", "it")
        value.close()  # never awaited on purpose: no RuntimeWarning later
        print(f"<coroutine {name}>: not run; write `await {name}(...)`")
        return
    sys.__displayhook__(value)


def _enable_completion(namespace: dict[str, object]) -> None:
    try:
        import readline
        import rlcompleter
    except ImportError:
        return
    completer = rlcompleter.Completer(namespace)

    def complete(text: str, state: int) -> str | None:
        # Completion evaluates attributes (in this thread): a down node's handle raises.
        try:
            return completer.complete(text, state)
        except Exception:
            return None

    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")


class _InterruptRelay:
    """Turns every Ctrl-C into a KeyboardInterrupt in the console's (main) thread, reliably.

    With plain SIGINT, a Ctrl-C that lands while readline is busy with a key (echo,
    redisplay) only marks the signal pending: readline's loop checks signals when its
    ``select`` is interrupted, so the interrupt would wait for the next key press.  Here SIGINT
    is blocked in every thread and taken by a watcher thread (``sigwait``), which then pokes
    the main thread with SIGUSR2 until the poke's handler has raised KeyboardInterrupt there
    (re-poking every 50 ms: a poke that lands in the same window is simply repeated).
    Extra pokes after that find no request and do nothing.  POSIX only; elsewhere a no-op.
    """

    POKE = getattr(signal, "SIGUSR2", None)

    def __init__(self) -> None:
        self._requested = False
        self._acked = threading.Event()
        self._main = threading.get_ident()
        self.enabled = (self.POKE is not None and hasattr(signal, "pthread_sigmask")
                        and threading.current_thread() is threading.main_thread())

    def __enter__(self) -> _InterruptRelay:
        if self.enabled:
            assert self.POKE is not None
            self._saved_handler = signal.signal(self.POKE, self._on_poke)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            threading.Thread(target=self._watch, name="nuraft-mesg-repl-sigint",
                             daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            assert self.POKE is not None
            self._requested = False
            signal.signal(self.POKE, self._saved_handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _watch(self) -> None:
        assert self.POKE is not None
        while True:
            signal.sigwait({signal.SIGINT})
            self._acked.clear()
            self._requested = True
            while self._requested:
                signal.pthread_kill(self._main, self.POKE)
                self._acked.wait(0.05)

    def _on_poke(self, signum: int, frame: types.FrameType | None) -> None:
        if self._requested:
            self._requested = False
            self._acked.set()
            raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``nuraft-mesg repl [--nodes N] [--metrics-port PORT] [--log-level LEVEL]``."""
    parser = argparse.ArgumentParser(
        prog="nuraft-mesg repl",
        description="A Python console (top-level await) on a local N-node cluster on loopback.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics of every node on 127.0.0.1:PORT "
                             "(0: any free port; needs the 'metrics' extra)")
    parser.add_argument("--log-level", default=None, metavar="LEVEL",
                        help="log level of the nodes (default: error, or the level of "
                             "nuraft-mesg -v)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    if args.log_level is not None:
        root.setLevel(args.log_level.upper())
    elif root.getEffectiveLevel() > logging.INFO:
        # Killed nodes and cut links make warnings that would only garble the prompt.
        root.setLevel(logging.ERROR)

    with _InterruptRelay():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    session = ReplSession(args.nodes, metrics_port=args.metrics_port)
    trio_thread = threading.Thread(target=session.run, name="nuraft-mesg-repl-trio", daemon=True)
    trio_thread.start()
    exit_code = 0
    try:
        session.ready.wait()
        if session.error is not None or not trio_thread.is_alive():
            print(f"error: the cluster did not start: {session.error!r}", file=sys.stderr)
            return 1
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
        _enable_completion(session.namespace)
        console = ClusterConsole(session)
        nodes = ", ".join(f"m{k}={n.name}@127.0.0.1:{n.port}"
                          for k, n in enumerate(_nodes(session), 1))
        banner = (f"nuraft_mesg REPL on trio {trio.__version__}, Python "
                  f"{sys.version.split()[0]}: {args.nodes} node(s) on loopback: {nodes}\n"
                  + (f"Prometheus metrics: {session.metrics_url}\n" if session.metrics_url else "")
                  + "Use `await` directly.  help_repl() lists the helpers; Ctrl-D quits.")
        saved_hook = sys.displayhook
        sys.displayhook = _displayhook
        try:
            console.interact(banner=banner, exitmsg="")
        except SystemExit as exc:
            exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.displayhook = saved_hook
    except KeyboardInterrupt:  # while the cluster was starting
        exit_code = 130
    finally:
        session.stop()
        while trio_thread.is_alive():
            try:
                trio_thread.join()
            except KeyboardInterrupt:
                print("\nshutting the cluster down...", file=sys.stderr)
    if session.error is not None:
        print(f"error: the cluster stopped: {session.error!r}", file=sys.stderr)
        return exit_code or 1
    print("every node shut down cleanly", file=sys.stderr)
    return exit_code


def _nodes(session: ReplSession) -> list[LocalNode]:
    nodes = session.namespace.get("nodes")
    assert isinstance(nodes, list)
    return nodes


if __name__ == "__main__":
    sys.exit(main())
