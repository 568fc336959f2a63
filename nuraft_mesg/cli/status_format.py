"""``nuraft-mesg status``'s table: a :class:`~nuraft_mesg.transport.status.NodeStatus` (what
``Admin/Status`` serves, built by :func:`nuraft_mesg.admin.collect_status`) rendered per group:
leader, term, commit index, members and their lag."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nuraft_mesg.transport.status import NodeStatus

__all__ = ["format_status", "short_names"]


def short_names(uuids: Iterable[str], *, min_length: int = 8) -> dict[str, str]:
    """A display name per uuid: its shortest prefix (at least ``min_length`` characters)
    that no other of ``uuids`` shares."""
    unique = sorted(set(uuids))
    length = min_length
    while length < 36 and len({u[:length] for u in unique}) < len(unique):
        length += 1
    return {u: u[:length] for u in unique}


def _all_uuids(status: NodeStatus) -> set[str]:
    found = {status.server_uuid}
    for g in status.groups:
        if g.leader_id:
            found.add(g.leader_id)
        found.update(m.peer_id for m in g.members)
    return found


def _short(peer: str, names: Mapping[str, str]) -> str:
    return names.get(peer) or peer[:8]


def format_status(status: NodeStatus, names: Mapping[str, str] | None = None) -> str:
    """A table per node: one row per group.  ``names`` maps uuids to display names
    (default: the shortest unique prefix, at least 8 characters).

    ``lag`` is, per member, how many entries its log is behind this node's; it is known for
    every member on the leader, and only for this node itself on a follower (nuraft_mesg's
    ``get_raft_status``); ``*`` marks a member still joining, ``(L)`` a learner.
    """
    names = {**short_names(_all_uuids(status)), **(names or {})}
    me = _short(status.server_uuid, names)
    head = (f"node {me} ({status.server_uuid}, server id {status.server_id}); "
            f"{len(status.groups)} group(s); data service "
            f"{'on' if status.data_service else 'off'}")
    rows = [("group", "leader", "term", "commit", "applied", "members", "lag")]
    for g in status.groups:
        leader = _short(g.leader_id, names) if g.leader_id else "none"
        if g.is_leader:
            leader += " (this node)"
        members = []
        lags = []
        for m in g.members:
            label = _short(m.peer_id, names)
            if m.learner:
                label += "(L)"
            if m.is_new_joiner:
                label += "*"
            members.append(label)
            lag = g.lag(m)
            if lag is not None:
                lags.append(f"{_short(m.peer_id, names)}:{lag}")
        rows.append((g.group_id[:8], leader, str(g.term), str(g.commit_index),
                     str(g.applied_index), ",".join(members) or "-", " ".join(lags) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([head, *lines])
