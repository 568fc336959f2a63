"""The chaos rig's checks find what they are meant to find (fast, no processes)."""

from __future__ import annotations

from nuraft_mesg.testing.chaos.checks import (
    Replica,
    check_election_safety,
    check_real_time,
    check_replicas,
    encode,
)
from nuraft_mesg.testing.chaos.history import Op

G = "g"


def put(i: int, value: str, t0: float, t1: float, type_: str = "ok") -> Op:
    return Op(i, 0, "put", f"{G}/k", value, t0, type_, t1)  # type: ignore[arg-type]


def rep(node: str, *ops: Op) -> Replica:
    return Replica(node, G, tuple(encode(o) for o in ops))


def test_a_faithful_run_passes() -> None:
    a, b, c = put(0, "a", 0, 1), put(1, "b", 2, 3), put(2, "c", 2.5, 9, "info")
    reps = {G: [rep("n0", a, c, b), rep("n1", a, c, b)]}
    assert check_replicas([a, b, c], reps, {}) == []
    assert check_real_time([a, b, c], reps) == []  # c and b overlap: either order


def test_a_lost_acknowledged_write_is_found() -> None:
    a, b = put(0, "a", 0, 1), put(1, "b", 2, 3)
    found = check_replicas([a, b], {G: [rep("n0", a, b), rep("n1", a)]}, {})
    assert any("acknowledged write #1" in v and "0 times" in v for v in found)
    assert any("differ" in v for v in found)


def test_a_duplicate_and_a_phantom_are_found() -> None:
    a = put(0, "a", 0, 1)
    phantom = Replica("n0", G, (encode(a), encode(a), b"set k never"))
    found = check_replicas([a], {G: [phantom]}, {})
    assert any("applied 2 times" in v for v in found)
    assert any("never written" in v for v in found)


def test_a_definitely_failed_write_must_not_be_applied() -> None:
    a = put(0, "a", 0, 1, "fail")
    assert any("failed definitely" in v for v in check_replicas([a], {G: [rep("n0", a)]}, {}))


def test_log_order_against_real_time() -> None:
    a, b = put(0, "a", 0, 1), put(1, "b", 2, 3)
    found = check_real_time([a, b], {G: [rep("n0", b, a)]})
    assert len(found) == 1 and "#0" in found[0] and "#1" in found[0]


def test_two_leaders_in_one_term() -> None:
    assert check_election_safety({(G, 3): {"x"}, (G, 4): {"x"}}) == []
    assert check_election_safety({(G, 5): {"x", "y"}}) == [f"group {G}: 2 leaders in term 5: "
                                                            "['x', 'y']"]
