"""The linearizability checker (nuraft_mesg.testing.linearizability): hand-written histories
that are and are not linearizable, the recorder and its file format, the search budget, a
model of one's own, and properties over generated histories (accepted as generated; rejected
once a read is made stale)."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nuraft_mesg.testing import (
    History,
    KVModel,
    Model,
    Operation,
    check,
    check_kv,
    simulated_history,
)
from nuraft_mesg.testing.linearizability import main


def _op(h: History, client: int | str, kind: str, key: str, start: float, end: float | None,
        value: str | None = None, *, read: str | None = None, outcome: str = "ok") -> int:
    """Record one operation over [start, end]: ok (``read`` = what a get saw), fail, info."""
    op = h.invoke(client, kind, key, value, time=start)
    if outcome == "ok":
        assert end is not None
        h.ok(op, read, time=end)
    elif outcome == "fail":
        h.fail(op, time=end)
    elif outcome == "info":
        h.info(op, time=end)
    return op


# -- hand-written histories ------------------------------------------------------------------
def test_a_sequential_history_is_linearizable_and_its_order_is_given() -> None:
    h = History()
    _op(h, 1, "put", "k", 0, 1, "a")
    _op(h, 2, "get", "k", 2, 3, read="a")
    _op(h, 1, "del", "k", 4, 5)
    _op(h, 2, "get", "k", 6, 7, read=None)
    _op(h, 2, "put", "k", 8, 9, "")
    _op(h, 1, "get", "k", 10, 11, read="")  # an empty value is not a missing key
    result = check_kv(h)
    assert result.ok, str(result)
    assert [op.id for op in result.partitions["k"].linearization] == [0, 1, 2, 3, 4, 5]


def test_a_stale_read_is_a_violation_with_a_small_witness() -> None:
    h = History()
    w1 = _op(h, 1, "put", "k", 0, 1, "a")
    w2 = _op(h, 1, "put", "k", 2, 3, "b")
    for i in range(10):  # noise on the key that the witness should drop
        _op(h, 3, "get", "k", 3.1 + i * 0.1, 3.15 + i * 0.1, read="b")
    stale = _op(h, 2, "get", "k", 5, 6, read="a")
    _op(h, 4, "put", "other", 0, 10, "x")
    result = check_kv(h)
    assert result.outcome == "violation"
    (v,) = result.violations
    assert v.key == "k"
    assert result.partitions["other"].outcome == "ok"
    assert {op.id for op in v.witness} == {w1, w2, stale}
    assert v.blocked is not None and v.blocked.id == stale
    text = str(result)
    assert "key 'k': violation" in text and f"#{stale}" in text and "'a'" in text


def test_a_lost_write_is_a_violation() -> None:
    h = History()
    _op(h, 1, "put", "k", 0, 1, "a")
    _op(h, 2, "get", "k", 2, 3, read=None)
    assert check_kv(h).outcome == "violation"


def test_a_read_of_a_value_never_written_is_explained() -> None:
    h = History()
    _op(h, 1, "put", "k", 0, 1, "a")
    _op(h, 2, "get", "k", 0.5, 3, read="zzz")
    (v,) = check_kv(h).violations
    assert "ever wrote 'zzz'" in v.explanation


def test_a_failed_write_has_no_effect() -> None:
    h = History()
    _op(h, 1, "put", "k", 0, 1, "a", outcome="fail")
    _op(h, 2, "get", "k", 2, 3, read="a")
    assert check_kv(h).outcome == "violation"
    h2 = History()
    _op(h2, 1, "put", "k", 0, 1, "a", outcome="fail")
    _op(h2, 2, "get", "k", 2, 3, read=None)
    assert check_kv(h2).ok


@pytest.mark.parametrize("seen", [None, "a"])
def test_concurrent_operations_may_take_effect_in_either_order(seen: str | None) -> None:
    h = History()
    _op(h, 1, "put", "k", 0, 10, "a")
    _op(h, 2, "get", "k", 1, 2, read=seen)
    assert check_kv(h).ok


def test_concurrent_reads_must_agree_on_one_order() -> None:
    # Two puts overlap; one reader sees a then b, the other b then a: no single order.
    h = History()
    _op(h, 1, "put", "k", 0, 10, "a")
    _op(h, 2, "put", "k", 0, 10, "b")
    _op(h, 3, "get", "k", 1, 2, read="a")
    _op(h, 3, "get", "k", 3, 4, read="b")
    _op(h, 4, "get", "k", 1, 2, read="b")
    _op(h, 4, "get", "k", 3, 4, read="a")
    assert check_kv(h).outcome == "violation"


def test_operations_that_touch_in_time_are_concurrent() -> None:
    h = History()
    _op(h, 1, "put", "k", 0, 5, "a")
    _op(h, 2, "get", "k", 5, 6, read=None)  # invoked at the instant the put returned
    assert check_kv(h).ok
    h.invoke(3, "get", "k", time=5.5)
    h.ok(h.invoke(3, "get", "k", time=7), None, time=8)
    assert check_kv(h).outcome == "violation"  # a later read must see the put


def test_unknown_outcomes_may_take_effect_late_or_never() -> None:
    took = History()
    _op(took, 1, "put", "k", 0, 1, "a", outcome="info")
    _op(took, 2, "get", "k", 2, 3, read=None)
    _op(took, 2, "get", "k", 50, 51, read="a")  # long after the client gave up
    assert check_kv(took).ok
    never = History()
    _op(never, 1, "put", "k", 0, 1, "a", outcome="info")
    _op(never, 2, "get", "k", 50, 51, read=None)
    assert check_kv(never).ok
    flip = History()
    _op(flip, 1, "put", "k", 0, 1, "a", outcome="info")
    _op(flip, 2, "get", "k", 2, 3, read="a")
    _op(flip, 2, "get", "k", 4, 5, read=None)  # it cannot un-happen
    assert check_kv(flip).outcome == "violation"


def test_an_invocation_never_completed_counts_as_unknown_and_unknown_reads_are_dropped() -> None:
    h = History()
    h.invoke(1, "put", "k", "a", time=0)  # the client crashed
    _op(h, 2, "get", "k", 0.5, None, outcome="info")
    _op(h, 3, "get", "k", 9, 10, read="a")
    ops = h.operations()
    assert [(op.kind, op.status, op.ret) for op in ops] == [
        ("put", "info", math.inf), ("get", "info", math.inf), ("get", "ok", 10)]
    result = check_kv(h)
    assert result.ok and result.operations == 2


def test_keys_are_checked_independently() -> None:
    h = History()
    for k in range(5):
        _op(h, k, "put", f"k{k}", 0, 1, "a")
        _op(h, k, "get", f"k{k}", 2, 3, read="a" if k != 3 else None)
    result = check_kv(h)
    assert sorted(result.partitions) == [f"k{k}" for k in range(5)]
    assert [v.key for v in result.violations] == ["k3"]


def test_the_search_budget_answers_unknown_instead_of_hanging() -> None:
    # A hot key under heavy concurrency (the hard case): a tiny budget gives up.
    history = simulated_history(random.Random(5), operations=3000, clients=40, keys=1)
    start = time.monotonic()
    result = check_kv(history, max_steps=5000)
    assert result.outcome == "unknown", str(result)
    assert result.unknown[0].explanation.startswith("search budget")
    out_of_time = check_kv(history, timeout=0.0)
    assert out_of_time.outcome == "unknown"
    assert time.monotonic() - start < 60


# -- the recorder and its file format ----------------------------------------------------------
def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    h = History()
    _op(h, 1, "put", "k", 0.0, 1.0, "va lue")
    _op(h, "c2", "get", "k", 0.5, 1.5, read="va lue")
    _op(h, 1, "del", "k", 2, 3, outcome="fail")
    h.invoke(3, "put", "k", "x", time=4)
    path = tmp_path / "h.jsonl"
    h.dump(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[2] == {"type": "invoke", "id": 1, "client": "c2", "kind": "get", "key": "k",
                        "value": None, "time": 0.5}
    assert lines[1]["type"] == "ok" and lines[1]["value"] is None
    assert lines[3]["type"] == "ok" and lines[3]["value"] == "va lue"
    again = History.load(path)
    assert again.events == h.events
    assert again.operations() == h.operations()
    assert again.invoke(1, "get", "k", time=9) == 4  # ids continue after the loaded ones


def test_load_accepts_short_completions_and_reports_bad_lines() -> None:
    put = '{"type":"invoke","id":5,"client":1,"kind":"put","key":"k","value":"a","time":1}'
    done = '{"type":"ok","id":5,"value":null,"time":2}'
    assert check_kv(History.from_lines([put, done, ""])).ok
    bad = [
        ([done], "never invoked"),
        ([put.replace('"a"', "null")], "a put has a value"),
        ([put, done.replace('"ok"', '"maybe"')], "event type"),
        ([put, done.replace('"time":2', '"time":0.5')], "before its invocation"),
        ([put, done.replace('"id":5', '"id":5,"key":"other"')], "differs"),
        ([put, done.replace("null", '"x"')], "only a completed get"),
        ([put, done.replace(',"time":2', "")], "time"),
        ([put, put], "invoked twice"),
        ([put, done, done], "completed twice"),
        (["[1, 2]"], "JSON object"),
        (["not json"], "Expecting value"),
    ]
    for lines, message in bad:
        with pytest.raises(ValueError, match=message) as info:
            History.from_lines(lines)
        assert f"line {len(lines)}:" in str(info.value)


def test_the_command_line_checks_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    good = simulated_history(random.Random(2), operations=200, clients=4, keys=3)
    good.dump(tmp_path / "good.jsonl")
    bad = History()
    _op(bad, 1, "put", "k", 0, 1, "a")
    _op(bad, 2, "get", "k", 2, 3, read=None)
    bad.dump(tmp_path / "bad.jsonl")
    (tmp_path / "junk.jsonl").write_text("{}\n")
    assert main([str(tmp_path / "good.jsonl")]) == 0
    assert main([str(tmp_path / "good.jsonl"), str(tmp_path / "junk.jsonl")]) == 2
    assert main([str(tmp_path / n) for n in ("junk.jsonl", "bad.jsonl", "good.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "good.jsonl: linearizability: ok" in out
    assert "bad.jsonl: linearizability: violation" in out and "junk.jsonl: history line 1" in out


def test_the_recorder_refuses_what_it_cannot_check() -> None:
    h = History()
    with pytest.raises(ValueError):
        h.ok(0)
    op = h.invoke(1, "get", "k", time=1)
    with pytest.raises(ValueError, match="before its invocation"):
        h.ok(op, "x", time=0.5)
    with pytest.raises(ValueError, match="finite"):
        h.ok(op, "x", time=math.inf)
    h.ok(op, "x", time=2)
    with pytest.raises(ValueError, match="twice"):
        h.fail(op, time=3)
    with pytest.raises(ValueError, match="a put has a value"):
        h.invoke(1, "put", "k")
    assert len(h) == 1


def test_default_times_are_monotonic() -> None:
    h = History()
    op = h.invoke(1, "put", "k", "a")
    h.ok(op)
    ends = [ev.time for ev in h.events]
    assert ends[0] <= ends[1] <= time.monotonic()


# -- a model of one's own -------------------------------------------------------------------
class Counter(Model[int]):
    """A counter: ``add`` (value: the amount) and ``read`` (value: the total)."""

    def init(self) -> int:
        return 0

    def step(self, state: int, op: Operation) -> tuple[bool, int]:
        if op.kind == "add":
            return True, state + int(op.input or 0)
        return op.output == str(state), state

    def read_only(self, op: Operation) -> bool:
        return op.kind == "read"


def test_a_model_of_ones_own() -> None:
    h = History()
    h.ok(h.invoke(1, "add", "c", "2", time=0), time=5)
    h.ok(h.invoke(2, "add", "c", "3", time=0), time=5)
    h.ok(h.invoke(3, "read", "c", time=1), "3", time=2)  # the second add went first
    h.ok(h.invoke(3, "read", "c", time=6), "5", time=7)
    assert check(h, Counter()).ok
    h.ok(h.invoke(3, "read", "c", time=8), "2", time=9)
    result = check(h, Counter())
    assert result.outcome == "violation"
    assert list(result.partitions) == [""]  # the default: one object
    assert result.violations[0].witness[-1].output == "2"


# -- properties over generated histories ----------------------------------------------------
_SHAPES = st.tuples(st.integers(0, 2**32), st.integers(20, 300), st.integers(1, 8),
                    st.integers(1, 6), st.sampled_from([0.0, 0.05, 0.2]))


@given(_SHAPES)
def test_generated_linearizable_histories_are_accepted(shape: tuple[int, int, int, int,
                                                                     float]) -> None:
    seed, ops, clients, keys, unknown = shape
    h = simulated_history(random.Random(seed), operations=ops, clients=clients, keys=keys,
                          unknown=unknown)
    result = check_kv(h, timeout=30)
    assert result.ok, str(result)


def _make_one_read_stale(h: History, rng: random.Random) -> tuple[History, int] | None:
    """A copy of ``h`` with one read changed to a value that a later write, sequential with
    both, overwrote; None when ``h`` has no such read.  Values are unique, so it admits no
    order."""
    ops = h.operations()
    writes = [o for o in ops if o.kind in ("put", "del") and o.status == "ok"]
    candidates = []
    for r in ops:
        if r.kind != "get" or r.status != "ok":
            continue
        for old in writes:
            if old.kind != "put" or old.key != r.key or old.input == r.output:
                continue
            if any(w.key == r.key and old.ret < w.call and w.ret < r.call for w in writes):
                candidates.append((r.id, old.input))
                break
    if not candidates:
        return None
    target, value = rng.choice(candidates)
    lines = [json.loads(ev.to_json()) for ev in h.events]
    for line in lines:
        if line["id"] == target and line["type"] == "ok":
            line["value"] = value
    return History.from_lines(json.dumps(line) for line in lines), target


@given(_SHAPES)
def test_histories_with_a_stale_read_are_rejected(shape: tuple[int, int, int, int,
                                                               float]) -> None:
    seed, ops, clients, keys, unknown = shape
    rng = random.Random(seed)
    h = simulated_history(rng, operations=max(ops, 60), clients=clients, keys=min(keys, 3),
                          unknown=unknown)
    mutated = _make_one_read_stale(h, rng)
    if mutated is None:
        return
    stale, target = mutated
    result = check_kv(stale, timeout=30)
    assert result.outcome == "violation", str(result)
    (v,) = result.violations
    assert target in {op.id for op in v.witness}
    assert check_kv(h, timeout=30).ok  # the same history, unchanged, passes


def _brute_force(ops: list[Operation]) -> bool:
    """Linearizable by trying every order of every subset that keeps the completed ops."""
    model = KVModel()
    done = [o for o in ops if o.status == "ok"]
    unknown = [o for o in ops if o.status == "info" and o.kind != "get"]
    for k in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, k):
            for order in itertools.permutations(done + list(extra)):
                if any(b.ret < a.call for i, a in enumerate(order) for b in order[i + 1:]):
                    continue  # b completed before a began: b must come first
                state = model.init()
                for op in order:
                    legal, state = model.step(state, op)
                    if not legal:
                        break
                else:
                    return True
    return False


_SMALL = st.lists(
    st.tuples(st.sampled_from(["put", "get", "del"]), st.sampled_from([None, "a", "b"]),
              st.integers(0, 6), st.integers(0, 4), st.sampled_from(["ok", "ok", "info"])),
    min_size=1, max_size=6)


@given(_SMALL)
def test_the_search_agrees_with_brute_force(spec: list[tuple[str, str | None, int, int, str]]
                                             ) -> None:
    h = History()
    for client, (kind, value, start, length, outcome) in enumerate(spec):
        if kind == "put" and value is None:
            value = "a"
        op = h.invoke(client, kind, "k", value if kind == "put" else None, time=start)
        if outcome == "ok":
            h.ok(op, value if kind == "get" else None, time=start + length)
        else:
            h.info(op, time=start + length)
    assert check_kv(h).ok == _brute_force(h.operations())


def test_a_generated_10000_operation_history_checks() -> None:
    h = simulated_history(random.Random(1), operations=10_000, clients=50, keys=100)
    start = time.perf_counter()
    result = check_kv(h)
    print(f"\n10,000-op history: {result.operations} ops, {len(result.partitions)} keys, "
          f"{result.outcome} in {time.perf_counter() - start:.2f}s")
    assert result.ok, str(result)
    assert result.operations == len(h.operations()) - sum(
        1 for op in h.operations() if op.kind == "get" and op.status == "info")
