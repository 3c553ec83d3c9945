"""realtime/queues.py: the one bounded queue of the daemon (client outboxes, due windows).

Each rule of the module docstring is exercised directly, then checked as a property over
arbitrary sequences of puts and gets (hypothesis): the cap always holds, every
item put is accounted for exactly once (served, dropped with a reason, or still held),
``take_while`` shows its caller what ``get_nowait`` would take and takes exactly what it was told,
and fair order lets no key starve.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime.queues import DROP_REASONS, BoundedQueue, Decision


def take(q: BoundedQueue, n: int) -> list:
    """Up to ``n`` items in service order, as consumers take them (``get_nowait`` until empty)."""
    out: list = []
    while len(out) < n and (item := q.get_nowait()) is not None:
        out.append(item)
    return out


def test_fifo_order_and_cap_drops_the_oldest_of_the_biggest_key():
    q: BoundedQueue[str] = BoundedQueue(4)
    for i in range(3):
        q.put(f"a{i}", "a")
    q.put("b0", "b")
    r = q.put("b1", "b")  # full: "a" holds the most, its oldest leaves
    assert r.accepted and r.dropped == [("a0", "evicted")]
    assert len(q) == 4
    assert take(q, 10) == ["a1", "a2", "b0", "b1"]
    assert q.drops["evicted"] == 1


def test_undroppable_items_are_kept_and_overflow_is_reported():
    q: BoundedQueue[str] = BoundedQueue(3)
    q.put("hello", "ctl", droppable=False)
    q.put("p0", "s")
    q.put("started", "ctl", droppable=False)
    r = q.put("stopped", "ctl", droppable=False)  # the prediction makes room
    assert r.accepted and r.dropped == [("p0", "evicted")]
    r = q.put("p1", "s")  # nothing droppable held: the newcomer is turned away
    assert not r.accepted and r.dropped == [("p1", "rejected")] and not r.overflow
    r = q.put("error", "ctl", droppable=False)
    assert not r.accepted and r.overflow
    assert take(q, 5) == ["hello", "started", "stopped"]


def test_coalescing_keeps_one_pending_update_and_the_latest_wins():
    q: BoundedQueue[str] = BoundedQueue(8)
    q.put("streams v1", "streams", coalesce="streams", droppable=False)
    q.put("p0", "s")
    for v in range(2, 50):
        r = q.put(f"streams v{v}", "streams", coalesce="streams", droppable=False)
        assert r.accepted and r.dropped == [(f"streams v{v - 1}", "coalesced")]
    assert len(q) == 2
    assert take(q, 5) == ["streams v49", "p0"]  # in the first update's place, with the last content
    q.put("streams v50", "streams", coalesce="streams")  # taken: the next one queues afresh
    assert take(q, 5) == ["streams v50"]


def test_lower_class_is_dropped_first_and_served_last():
    q: BoundedQueue[str] = BoundedQueue(3)
    q.put("other0", "x", priority=1)
    q.put("own0", "mine", priority=0)
    q.put("other1", "x", priority=1)
    r = q.put("own1", "mine", priority=0)
    assert r.dropped == [("other0", "evicted")]
    r = q.put("own2", "mine", priority=0)
    assert r.dropped == [("other1", "evicted")]
    r = q.put("other2", "x", priority=1)  # the newcomer is the least valuable: it goes
    assert not r.accepted and r.dropped == [("other2", "rejected")]
    q2: BoundedQueue[str] = BoundedQueue(4)
    q2.put("other", "x", priority=1)
    q2.put("own", "mine", priority=0)
    assert take(q2, 2) == ["own", "other"]


def test_one_class_at_a_time():
    q: BoundedQueue[str] = BoundedQueue(8, order="fair")
    assert q.head_priority() is None
    q.put("late0", "x", priority=1)
    q.put("live0", "a", priority=0)
    q.put("late1", "y", priority=1)
    assert q.head_priority() == 0
    assert q.get_nowait(priority=0) == "live0" and q.get_nowait(priority=0) is None
    assert q.head_priority() == 1
    assert q.get_nowait(priority=1) == "late0"


def test_fair_order_round_robins_groups_then_keys():
    q: BoundedQueue[str] = BoundedQueue(100, order="fair")
    for i in range(10):
        q.put(f"hog{i}", "hog")
    q.put("a0", "a")
    q.put("a1", "a")
    # One client ("c") with two streams counts as one group: it gets a turn, not two.
    q.put("c1-0", "c1", group="c")
    q.put("c2-0", "c2", group="c")
    q.put("c1-1", "c1", group="c")
    got = take(q, 7)
    assert got == ["hog0", "a0", "c1-0", "hog1", "a1", "c2-0", "hog2"]


def test_fair_eviction_takes_from_the_hog():
    q: BoundedQueue[str] = BoundedQueue(5, order="fair")
    for i in range(4):
        q.put(f"hog{i}", "hog")
    q.put("a0", "a")
    for i in range(4, 20):
        q.put(f"hog{i}", "hog")
    q.put("a1", "a")
    held = take(q, 10)
    assert "a0" in held and "a1" in held and len(held) == 5


def test_bookkeeping_does_not_grow_with_streams_that_came_and_went():
    q: BoundedQueue[int] = BoundedQueue(4, order="fair")
    for i in range(5000):
        q.put(i, f"stream-{i}", group=f"client-{i % 7}")
        if i % 3 == 0:
            q.get_nowait()
    assert len(q) == 4
    groups = sum(len(c.groups) for c in q._classes)
    arrival = sum(len(c.arrival) for c in q._classes)
    assert groups <= 4 and arrival <= 4 + 33  # dead entries are compacted away


def test_an_unread_outbox_with_an_old_undroppable_head_stays_bounded():
    """The head never leaves (nobody reads) while predictions are evicted behind it: memory stays bounded."""
    q: BoundedQueue[str] = BoundedQueue(8)
    q.put("hello", "ctl", droppable=False)
    for i in range(10_000):
        q.put(f"p{i}", "s")
    assert len(q) == 8
    assert sum(len(c.arrival) for c in q._classes) <= 8 + 33


def test_wait_for_wakes_a_consumer_thread():
    q: BoundedQueue[int] = BoundedQueue(4, order="fair")
    got: list[int] = []

    def consume() -> None:
        while len(got) < 100:
            if q.wait_for(timeout=5):
                item = q.get_nowait()
                if item is not None:
                    got.append(item)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(100):  # the producer waits for room, so nothing is ever evicted
        assert q.wait_for(lambda: len(q) < 4, timeout=5)
        assert q.put(i, "k").accepted
    t.join(10)
    assert not t.is_alive()
    assert got == list(range(100))
    assert not q.wait_for(timeout=0.01)  # empty: the wait times out


def test_take_while_takes_skips_and_stops_as_told_within_one_class():
    """The scheduler's batch: stale windows set apart, at most a few taken, one class, the rest left in order."""
    q: BoundedQueue[str] = BoundedQueue(16, order="fair")
    for key in ("a", "b"):
        for i in range(3):
            q.put(f"{key}{i}", key, group=key)
    q.put("bg0", "c", priority=1)
    shown: list[str] = []

    def decide(item: str) -> Decision:
        shown.append(item)
        if item in ("a0", "b1"):
            return Decision.SKIP  # stale: out of the queue, reported apart
        return Decision.TAKE if len(shown) <= 4 else Decision.STOP

    taken, skipped = q.take_while(decide, priority=0)
    assert shown == ["a0", "b0", "a1", "b1", "a2"]  # round robin, as get_nowait serves them
    assert taken == ["b0", "a1"] and skipped == ["a0", "b1"]
    assert len(q) == 3 and take(q, 5) == ["a2", "b2", "bg0"]  # the stopped-at item leads, class 1 untouched
    assert q.take_while(lambda item: Decision.TAKE) == ([], [])  # empty


def test_take_while_without_a_class_serves_as_get_nowait_and_frees_coalesced_slots():
    q: BoundedQueue[str] = BoundedQueue(8)
    q.put("other", "x", priority=1)
    q.put("streams v1", "streams", coalesce="streams")
    q.put("own", "mine")
    taken, skipped = q.take_while(lambda item: Decision.TAKE)
    assert (taken, skipped) == (["streams v1", "own", "other"], []) and len(q) == 0 and q.key_count() == 0
    assert q.put("streams v2", "streams", coalesce="streams").dropped == []  # queued afresh
    assert q.take_while(lambda item: Decision.STOP) == ([], []) and take(q, 2) == ["streams v2"]


def test_take_while_decides_on_the_item_it_takes_while_producers_put():
    q: BoundedQueue[int] = BoundedQueue(10_000, order="fair")
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            q.put(i, i % 7, group=i % 3)
            i += 1

    t = threading.Thread(target=produce)
    t.start()
    try:
        seen: list[int] = []
        got: list[int] = []
        while t.is_alive() or q:
            shown: list[int] = []

            def decide(item: int, shown: list[int] = shown) -> Decision:
                shown.append(item)
                if len(shown) > 5:
                    return Decision.STOP
                return Decision.SKIP if item % 2 else Decision.TAKE

            taken, skipped = q.take_while(decide)
            decided = shown[: len(taken) + len(skipped)]
            assert sorted(decided) == sorted(taken + skipped)
            assert taken == [x for x in decided if x % 2 == 0] and skipped == [x for x in decided if x % 2]
            seen += shown[len(decided) :]  # the item stopped at stays queued
            got += decided
    finally:
        stop.set()
        t.join(10)
    assert sorted(got) == list(range(5000)) and len(q) == 0
    assert set(seen) <= set(got)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        BoundedQueue(0)
    with pytest.raises(ValueError):
        BoundedQueue(4, order="lifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BoundedQueue(4).put("x", "k", priority=2)


def test_keep_key_order_takes_a_keys_older_items_up_to_its_newest_class():
    """A stream whose first windows were put as background (class 1) and whose next one is live (class 0):
    its first windows are served before its live one, not left behind every other live stream's."""
    for order in ("fair", "fifo"):
        q: BoundedQueue[str] = BoundedQueue(8, order=order, keep_key_order=True)
        q.put("s1", "s", priority=1)
        q.put("s2", "s", priority=1)
        q.put("t1", "t", priority=0)
        q.put("s3", "s", priority=0)  # s is established: s1 and s2 move up with it, ahead of it
        assert q.head_priority() == 0 and len(q) == 4 and q.key_count() == 2
        assert [x for x in take(q, 4) if x.startswith("s")] == ["s1", "s2", "s3"]
        assert len(q) == 0 and q.key_count() == 0

    plain: BoundedQueue[str] = BoundedQueue(8, order="fair")  # without it, class 1 waits for class 0 to empty
    for item, key, prio in (("s1", "s", 1), ("t1", "t", 0), ("s3", "s", 0)):
        plain.put(item, key, priority=prio)
    assert take(plain, 3) == ["t1", "s3", "s1"]

    q = BoundedQueue(3, order="fair", keep_key_order=True)  # moved items stay droppable, counted, coalescable
    q.put("s1", "s", priority=1, coalesce="c")
    q.put("s2", "s", priority=0)
    assert q.put("s1'", "s", priority=1, coalesce="c").dropped == [("s1", "coalesced")]
    q.put("t1", "t", priority=0)
    assert q.put("u1", "u", priority=0).dropped == [("s1'", "evicted")]  # the oldest of the key with the most
    assert take(q, 3) == ["s2", "t1", "u1"]


# ------------------------------------------------------------------ properties

op = st.one_of(
    st.tuples(
        st.just("put"),
        st.integers(0, 4),  # key
        st.integers(0, 2),  # group
        st.integers(0, 1),  # priority
        st.booleans(),  # droppable
        st.sampled_from([None, "streams", "other"]),  # coalesce
    ),
    st.tuples(st.just("get")),
    st.tuples(st.just("get_class"), st.integers(0, 1)),
    st.tuples(st.just("take"), st.integers(0, 5)),
    st.tuples(
        st.just("take_while"),
        st.sampled_from([None, 0, 1]),
        st.lists(st.sampled_from(list(Decision)), max_size=6),
    ),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 6), order=st.sampled_from(["fifo", "fair"]), keep=st.booleans(),
       ops=st.lists(op, max_size=120))
def test_every_item_is_accounted_for_once_and_the_cap_holds(capacity, order, keep, ops):
    q: BoundedQueue[int] = BoundedQueue(capacity, order=order, keep_key_order=keep)
    put: list[int] = []
    served: list[int] = []
    dropped: dict[int, str] = {}
    for n, o in enumerate(ops):
        if o[0] == "put":
            _, key, group, prio, droppable, coalesce = o
            r = q.put(n, key, group=group, priority=prio, droppable=droppable, coalesce=coalesce)
            put.append(n)
            for item, reason in r.dropped:
                assert reason in DROP_REASONS
                assert item not in dropped
                dropped[item] = reason
            assert r.accepted == (n not in dropped)
        elif o[0] in ("get", "get_class"):
            prio = o[1] if o[0] == "get_class" else None
            shown: list[int] = []  # what a batch's decision looks at before it takes (or leaves) an item
            assert q.take_while(lambda x, shown=shown: shown.append(x) or Decision.STOP, priority=prio) == (
                [],
                [],
            )
            item = q.get_nowait(priority=prio)
            assert shown == ([] if item is None else [item])
            if item is not None:
                served.append(item)
        elif o[0] == "take_while":
            _, prio, verdicts = o
            plan = iter(verdicts)
            taken, skipped = q.take_while(lambda x, plan=plan: next(plan, Decision.STOP), priority=prio)
            assert len(taken) + len(skipped) <= len(verdicts)
            served.extend(taken + skipped)
        else:
            served.extend(take(q, o[1]))
        assert 0 <= len(q) <= capacity
    held = take(q, len(q))
    assert len(q) == 0 and q.key_count() == 0
    assert sorted(served + held + list(dropped)) == sorted(put)  # each exactly once
    assert sum(q.drops.values()) == len(dropped)


@settings(max_examples=300, deadline=None)
@given(order=st.sampled_from(["fifo", "fair"]), capacity=st.integers(1, 8),
       ops=st.lists(st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 1), st.integers(0, 1)), st.none()),
                    max_size=80))
def test_keep_key_order_serves_each_key_in_arrival_order(order, capacity, ops):
    """Whatever the classes its items were put in, a key's items come out in the order they went in."""
    q: BoundedQueue[tuple[int, int]] = BoundedQueue(capacity, order=order, keep_key_order=True)
    served: list[tuple[int, int]] = []
    for n, o in enumerate(ops):
        if o is None:
            served.extend(take(q, 1))
        else:
            key, group, prio = o
            q.put((key * 2 + group, n), key, group=group, priority=prio)
    served.extend(take(q, len(q)))
    for k in {k for k, _ in served}:
        mine = [n for kk, n in served if kk == k]
        assert mine == sorted(mine)


@settings(max_examples=200, deadline=None)
@given(loads=st.lists(st.integers(1, 30), min_size=2, max_size=6))
def test_fair_service_reaches_every_key_within_one_round(loads):
    """Whatever each key has queued, the k-th round of service serves every key that still has items."""
    q: BoundedQueue[tuple[int, int]] = BoundedQueue(sum(loads), order="fair")
    for key, n in enumerate(loads):
        for i in range(n):
            q.put((key, i), key)
    served = take(q, sum(loads))
    keys = len(loads)
    first_round = [k for k, _ in served[:keys]]
    assert sorted(first_round) == list(range(keys))
    for key in range(keys):  # each key's items come out in its own order
        assert [i for k, i in served if k == key] == list(range(loads[key]))
