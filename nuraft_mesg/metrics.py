"""Prometheus export of every group's counters (optional: ``pip install nuraft_mesg[metrics]``).

nuraft_mesg keeps a sisl ``RAFTGroup`` metrics group per Raft group; here the same counters
live in :class:`~nuraft_mesg.group.GroupStatistics` (``Manager.group(gid).statistics()``) and a
custom :mod:`prometheus_client` collector reads them **at scrape time**: nothing is
instrumented per message beyond the plain integer counters the group keeps anyway.

::

    from nuraft_mesg.metrics import serve_metrics
    server, thread = serve_metrics(mgr, port=9100)     # inside trio.run, after Manager start
    ...
    server.shutdown()

or render the text yourself (``render(mgr)`` returns the exposition bytes), or register
:class:`ManagerCollector` in a registry of your own.

Metric names (labels ``server`` = this node's uuid, ``group`` = the group id):

::

    this module                                 type     nuraft_mesg (sisl "RAFTGroup")
    nuraft_mesg_group_steps_total               counter  raft_group_cnt{op="step_count"}
    nuraft_mesg_group_sends_total               counter  raft_group_cnt{op="send_count"}
    nuraft_mesg_group_append_latency_seconds    summary  raft_group_latency{op="append_latency"}
    nuraft_mesg_group_dropped_total             counter  -  (outbound messages dropped)
    nuraft_mesg_group_leader_changes_total      counter  -
    nuraft_mesg_group_term                      gauge    -  (NuRaft get_term())
    nuraft_mesg_group_commit_index              gauge    -  (get_committed_log_idx())
    nuraft_mesg_group_last_log_index            gauge    -  (get_last_log_idx())
    nuraft_mesg_group_applied_index             gauge    -  (state machine's commit index)
    nuraft_mesg_group_is_leader                 gauge    -  (is_leader(): 0 or 1)

nuraft_mesg's ``append_latency`` is a histogram in microseconds; the group keeps only the sum
and the count, so it is exported as a summary (``_sum`` in seconds, ``_count``) without
quantiles: ``rate(..._sum) / rate(..._count)`` is the mean latency of handling an
AppendEntries request on this node (as a follower), persistence included.

Thread safety: the groups belong to the trio thread, while ``prometheus_client``'s HTTP
server scrapes from its own thread.  A collector made inside ``trio.run`` remembers that run's
token and, when scraped from another thread, takes its snapshot *in* the trio thread
(``trio.from_thread.run_sync``); scraped after the run has ended, it reports nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from nuraft_mesg.errors import RaftError
from nuraft_mesg.group import GroupStatistics

if TYPE_CHECKING:
    import threading
    from wsgiref.simple_server import WSGIServer

    from nuraft_mesg.manager import Manager

__all__ = ["ManagerCollector", "make_registry", "render", "serve_metrics"]

PREFIX = "nuraft_mesg_group_"
LABELS = ("server", "group")

def _managers_of(source: object) -> Callable[[], list[Manager]]:
    from nuraft_mesg.manager import Manager

    if isinstance(source, Manager):
        one = source
        return lambda: [one]
    if callable(source):
        fn = source
        return lambda: list(fn())
    if isinstance(source, Iterable):
        fixed = list(source)
        return lambda: fixed
    raise TypeError(f"expected a Manager, managers or a callable returning them: {source!r}")


class ManagerCollector:
    """A prometheus_client collector over the groups of one or more Managers.

    ``source`` is a Manager, an iterable of Managers, or a callable returning the Managers to
    report at each scrape (for nodes that come and go, e.g. a LocalCluster's live nodes).
    ``trio_token`` (default: the current run's, when made inside ``trio.run``) is where
    scrapes from other threads take their snapshot.
    """

    def __init__(
        self,
        source: Manager | Iterable[Manager] | Callable[[], Iterable[Manager]],
        *,
        trio_token: trio.lowlevel.TrioToken | None = None,
    ) -> None:
        self._managers = _managers_of(source)
        if trio_token is None and trio.lowlevel.in_trio_run():
            trio_token = trio.lowlevel.current_trio_token()
        self._token = trio_token

    # -- snapshot ----------------------------------------------------------------------------
    def snapshot(self) -> list[tuple[str, GroupStatistics]]:
        """``(server uuid, statistics)`` of every hosted group, read in the trio thread."""
        if self._token is None or trio.lowlevel.in_trio_run():
            return self._read()
        try:
            return trio.from_thread.run_sync(self._read, trio_token=self._token)
        except trio.RunFinishedError:
            return []

    def _read(self) -> list[tuple[str, GroupStatistics]]:
        rows: list[tuple[str, GroupStatistics]] = []
        for mgr in self._managers():
            for gid in mgr.group_ids:
                try:
                    stats = mgr.group(gid).statistics()
                except RaftError:  # stopped between the listing and the read
                    continue
                rows.append((mgr.server_uuid, stats))
        return rows

    # -- the collector protocol --------------------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (so registering never scrapes)."""
        yield from self._families([])

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.snapshot())

    @staticmethod
    def _families(rows: list[tuple[str, GroupStatistics]]) -> Iterator[Metric]:
        def counter(name: str, doc: str, value: Callable[[GroupStatistics], int]) -> Metric:
            fam = CounterMetricFamily(PREFIX + name, doc, labels=LABELS)
            for server, st in rows:
                fam.add_metric([server, st.group_id], value(st))
            return fam

        def gauge(name: str, doc: str, value: Callable[[GroupStatistics], int]) -> Metric:
            fam = GaugeMetricFamily(PREFIX + name, doc, labels=LABELS)
            for server, st in rows:
                fam.add_metric([server, st.group_id], value(st))
            return fam

        yield counter("steps", "Raft requests received by the group (nuraft_mesg "
                      'raft_group_cnt{op="step_count"})', lambda s: s.messages_received)
        yield counter("sends", "Raft requests sent by the group (nuraft_mesg "
                      'raft_group_cnt{op="send_count"})', lambda s: s.messages_sent)
        yield counter("dropped", "Raft messages dropped by the group (full queues, unknown "
                      "peers)", lambda s: s.messages_dropped)
        yield counter("leader_changes", "Times this node saw a new leader of the group "
                      "(itself included)", lambda s: s.leader_changes)
        reads = CounterMetricFamily(PREFIX + "reads", "Reads answered here (Manager.read), "
                                    "per mode", labels=(*LABELS, "mode"))
        for server, st in rows:
            for mode, n in (("linearizable", st.reads_linearizable), ("lease", st.reads_lease),
                            ("stale", st.reads_stale)):
                reads.add_metric([server, st.group_id, mode], n)
        yield reads
        yield counter("reads_failed", "Reads that failed here (no quorum in time, leadership "
                      "changed, refused)", lambda s: s.reads_failed)
        latency = SummaryMetricFamily(
            PREFIX + "append_latency_seconds",
            "Time to handle an AppendEntries request, persistence included (nuraft_mesg "
            'raft_group_latency{op="append_latency"})',
            labels=LABELS,
        )
        for server, st in rows:
            latency.add_metric([server, st.group_id], count_value=st.append_requests,
                               sum_value=st.append_latency_us_total / 1e6)
        yield latency
        yield gauge("term", "Current Raft term of the group on this node", lambda s: s.term)
        yield gauge("commit_index", "Commit index of the group on this node",
                    lambda s: s.commit_index)
        yield gauge("last_log_index", "Last log index of the group on this node",
                    lambda s: s.last_log_index)
        yield gauge("applied_index", "Last index applied to the state machine on this node",
                    lambda s: s.applied_index)
        yield gauge("is_leader", "1 if this node leads the group, else 0",
                    lambda s: int(s.is_leader))


def make_registry(
    source: Manager | Iterable[Manager] | Callable[[], Iterable[Manager]],
) -> CollectorRegistry:
    """A fresh registry holding only a :class:`ManagerCollector` over ``source`` (call it
    inside ``trio.run`` so that scrapes from other threads are safe)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ManagerCollector(source))
    return registry


def render(
    source: Manager | Iterable[Manager] | Callable[[], Iterable[Manager]] | CollectorRegistry,
) -> bytes:
    """The Prometheus text exposition of ``source`` (Managers, or a registry of yours)."""
    registry = source if isinstance(source, CollectorRegistry) else make_registry(source)
    return generate_latest(registry)


def serve_metrics(
    source: Manager | Iterable[Manager] | Callable[[], Iterable[Manager]] | CollectorRegistry,
    port: int,
    addr: str = "127.0.0.1",
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` with ``prometheus_client.start_http_server`` (a daemon thread; port
    0 picks a free one: read ``server.server_port``).  Call it inside ``trio.run``; stop with
    ``server.shutdown(); server.server_close()``."""
    registry = source if isinstance(source, CollectorRegistry) else make_registry(source)
    return start_http_server(port, addr=addr, registry=registry)
