"""One bounded queue type for everything the daemon holds on behalf of someone: client outboxes and due windows.

Owns the rules of holding things under pressure, so the server and the scheduler
share one tested implementation instead of two ad-hoc deques. Imports the
standard library only.

:class:`BoundedQueue` holds items, each filed under a ``key`` (a stream, a
message kind) inside a ``group`` (a client; the key itself by default):

- **Hard cap.** Never more than ``capacity`` items, whatever is put. When full,
  a droppable item leaves: the oldest of the key with the most items, in the
  lowest priority class present. If the newcomer is itself the least valuable
  (droppable and of a lower class than every droppable item held) it is the one
  turned away. When nothing held is droppable, a droppable newcomer is turned
  away (``"rejected"``) and an undroppable one is refused as ``"overflow"``:
  the caller must act (a client that never reads is closed; a ``--fast``
  stream waits for the engine before it submits).
- **Coalescing.** ``put(..., coalesce=c)`` replaces the pending item that was
  put with the same ``c`` (the latest wins, in the old one's place), so a
  stream-list update never queues twice for one client.
- **Priority classes.** ``priority`` 0 is served first and dropped last; a
  client's own predictions and control messages go in class 0, other streams'
  predictions in class 1, so under pressure the client keeps its own results.
  With ``keep_key_order`` a key's items are also served in their arrival order
  across classes: an item put in a higher class takes the key's items held in
  lower classes up with it (the scheduler: a stream that becomes established
  has its first windows scored before its later ones, not starved behind every
  other live stream until they go stale).
- **Order.** ``order="fifo"`` serves each class in arrival order (an outbox,
  where a ``stopped`` must not overtake the predictions before it);
  ``order="fair"`` serves each class round-robin across groups, then across
  the keys of a group, oldest first within a key (the scheduler: one stream,
  or one client's many streams, cannot starve the rest).
- **Batches.** ``take_while(decide, priority)`` takes items in service order
  while ``decide`` says so, all under the lock: the consumer picks its batch
  (a size and cost limit, stale items set apart) without ever holding the lock
  itself, and what it decided on is what it gets.
- **Drop accounting.** ``put`` returns what left and why (``coalesced``,
  ``evicted``, ``rejected``, ``overflow``); ``drops`` counts every reason for
  the queue's life.

Thread-safe: every method takes one re-entrant lock; ``wait_for`` blocks a
consumer thread on the same condition that ``put`` notifies (the scheduler is
fed from the event loop and capture threads and drained by one inference
thread). Asyncio users call the non-blocking methods and keep their own wake-up
event. Per-key bookkeeping is deleted as soon as a key has nothing pending.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

DROP_REASONS = ("coalesced", "evicted", "rejected", "overflow")
ORDERS = ("fifo", "fair")


class Decision(enum.Enum):
    """What ``take_while`` does with the item it shows its caller."""

    TAKE = "take"  # out of the queue, into the taken list
    SKIP = "skip"  # out of the queue, into the skipped list (the caller discards it: a stale window)
    STOP = "stop"  # left in place, and everything behind it: the take ends


@dataclass(eq=False, slots=True)
class _Entry(Generic[T]):
    item: T
    key: Hashable
    group: Hashable
    priority: int
    droppable: bool
    coalesce: Hashable | None
    seq: int = 0  # arrival number: the order a promotion keeps
    alive: bool = True


@dataclass
class PutResult(Generic[T]):
    """What ``put`` did: whether the new item is held, and each item that left (with its reason)."""

    accepted: bool
    dropped: list[tuple[T, str]] = field(default_factory=list)

    @property
    def overflow(self) -> bool:
        """The newcomer was undroppable and nothing held could make room: the caller must act."""
        return any(reason == "overflow" for _, reason in self.dropped)


class _Class(Generic[T]):
    """The items of one priority class: arrival order, and per group -> key -> FIFO for fairness."""

    __slots__ = ("arrival", "dead", "droppable", "groups", "size")

    def __init__(self) -> None:
        self.arrival: deque[_Entry[T]] = deque()  # lazy deletion: entries taken elsewhere are marked dead
        self.dead = 0
        self.groups: OrderedDict[Hashable, OrderedDict[Hashable, deque[_Entry[T]]]] = OrderedDict()
        self.droppable: dict[int, int] = {}  # id(key's deque) -> droppable items in it (only while non-zero)
        self.size = 0

    def _count(self, fifo: deque[_Entry[T]], e: _Entry[T], delta: int) -> None:
        if e.droppable:
            n = self.droppable.get(id(fifo), 0) + delta
            if n:
                self.droppable[id(fifo)] = n
            else:
                self.droppable.pop(id(fifo), None)

    def add(self, e: _Entry[T]) -> None:
        self.arrival.append(e)
        keys = self.groups.get(e.group)
        if keys is None:
            keys = self.groups[e.group] = OrderedDict()
        fifo = keys.get(e.key)
        if fifo is None:
            fifo = keys[e.key] = deque()
        fifo.append(e)
        self._count(fifo, e, +1)
        self.size += 1

    def _forget(self, e: _Entry[T]) -> None:
        """Mark taken; compact the arrival deque before dead entries outnumber live ones (bounded memory)."""
        e.alive = False
        self.size -= 1
        self.dead += 1
        if self.dead > 32 and self.dead > self.size:
            self.arrival = deque(x for x in self.arrival if x.alive)
            self.dead = 0

    def _drop_from_key(self, e: _Entry[T], head: bool) -> None:
        keys = self.groups[e.group]
        fifo = keys[e.key]
        if head:
            fifo.popleft()
        else:
            fifo.remove(e)
        self._count(fifo, e, -1)
        if not fifo:
            del keys[e.key]
            if not keys:
                del self.groups[e.group]

    def head_fifo(self) -> _Entry[T]:
        while not self.arrival[0].alive:
            self.arrival.popleft()
            self.dead -= 1
        return self.arrival[0]

    def head_fair(self) -> _Entry[T]:
        keys = next(iter(self.groups.values()))
        return next(iter(keys.values()))[0]

    def pop_fifo(self) -> _Entry[T]:
        while True:
            e = self.arrival.popleft()
            if e.alive:
                break
            self.dead -= 1
        self._drop_from_key(e, head=True)  # within a key, arrival order is key order
        e.alive = False
        self.size -= 1
        return e

    def pop_fair(self) -> _Entry[T]:
        group, keys = next(iter(self.groups.items()))
        key, fifo = next(iter(keys.items()))
        e = fifo.popleft()
        self._count(fifo, e, -1)
        if fifo:
            keys.move_to_end(key)
        else:
            del keys[key]
        if keys:
            self.groups.move_to_end(group)
        else:
            del self.groups[group]
        self._forget(e)
        return e

    def victim(self) -> _Entry[T] | None:
        """The oldest droppable item of the key holding the most items (ties: the first such key)."""
        if not self.droppable:
            return None
        best: deque[_Entry[T]] | None = None
        for keys in self.groups.values():
            for fifo in keys.values():
                if (best is None or len(fifo) > len(best)) and id(fifo) in self.droppable:
                    best = fifo
        if best is None:
            return None
        return next(x for x in best if x.droppable)

    def take(self, e: _Entry[T]) -> None:
        self._drop_from_key(e, head=False)
        self._forget(e)

    def remove_key(self, group: Hashable, key: Hashable) -> list[_Entry[T]]:
        """Take out every item of ``key`` (in ``group``), oldest first; [] when it has none here."""
        keys = self.groups.get(group)
        fifo = keys.pop(key, None) if keys is not None else None
        if fifo is None:
            return []
        if not keys:
            del self.groups[group]
        self.droppable.pop(id(fifo), None)
        for e in fifo:
            self._forget(e)
        return list(fifo)

    def merge(self, entries: list[_Entry[T]]) -> None:
        """Add ``entries`` (all of one key, older than nothing of theirs held later) in arrival order.

        Rare (a key changing class), so it rebuilds the key's FIFO and the arrival order outright.
        """
        if not entries:
            return
        by_seq = lambda e: e.seq  # noqa: E731
        first = entries[0]
        keys = self.groups.get(first.group)
        if keys is None:
            keys = self.groups[first.group] = OrderedDict()
        old = keys.get(first.key)
        if old is not None:
            self.droppable.pop(id(old), None)
        fifo = keys[first.key] = deque(sorted([*(old or ()), *entries], key=by_seq))
        n = sum(e.droppable for e in fifo)
        if n:
            self.droppable[id(fifo)] = n
        self.arrival = deque(sorted([*(x for x in self.arrival if x.alive), *entries], key=by_seq))
        self.dead = 0
        self.size += len(entries)


class BoundedQueue(Generic[T]):
    """A capped, coalescing, prioritised queue with fair or FIFO service; see the module docstring."""

    def __init__(
        self, capacity: int, order: Literal["fifo", "fair"] = "fifo", priorities: int = 2, keep_key_order: bool = False
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if priorities < 1:
            raise ValueError(f"priorities must be >= 1, got {priorities}")
        self.capacity = capacity
        self.order = order
        self.keep_key_order = keep_key_order
        self._seq = 0
        self._classes: list[_Class[T]] = [_Class() for _ in range(priorities)]
        self._coalesce: dict[Hashable, _Entry[T]] = {}
        self._size = 0
        self._cond = threading.Condition(threading.RLock())
        self.drops: Counter[str] = Counter()

    # ------------------------------------------------------------ producers

    def put(
        self,
        item: T,
        key: Hashable,
        *,
        group: Hashable | None = None,
        priority: int = 0,
        droppable: bool = True,
        coalesce: Hashable | None = None,
    ) -> PutResult[T]:
        """Hold ``item`` under ``key`` (and ``group``, default the key); never blocks, never exceeds the cap."""
        if not 0 <= priority < len(self._classes):
            raise ValueError(f"priority must be 0..{len(self._classes) - 1}, got {priority}")
        with self._cond:
            if coalesce is not None:
                old = self._coalesce.get(coalesce)
                if old is not None:
                    previous, old.item = old.item, item
                    self.drops["coalesced"] += 1
                    self._cond.notify_all()
                    return PutResult(True, [(previous, "coalesced")])
            result: PutResult[T] = PutResult(True)
            if self._size >= self.capacity:
                victim = self._victim()
                if victim is None or (droppable and priority > victim.priority):
                    reason = "rejected" if droppable else "overflow"
                    self.drops[reason] += 1
                    return PutResult(False, [(item, reason)])
                self._classes[victim.priority].take(victim)
                self._unindex(victim)
                self._size -= 1
                self.drops["evicted"] += 1
                result.dropped.append((victim.item, "evicted"))
            self._seq += 1
            e = _Entry(item, key, key if group is None else group, priority, droppable, coalesce, self._seq)
            if self.keep_key_order:
                self._promote(e.group, key, priority)
            self._classes[priority].add(e)
            if coalesce is not None:
                self._coalesce[coalesce] = e
            self._size += 1
            self._cond.notify_all()
            return result

    def _promote(self, group: Hashable, key: Hashable, priority: int) -> None:
        """Under the lock: move ``key``'s items held in classes below ``priority`` up into it, in arrival order."""
        moved: list[_Entry[T]] = []
        for cls in self._classes[priority + 1 :]:
            for old in cls.remove_key(group, key):
                new = _Entry(old.item, old.key, old.group, priority, old.droppable, old.coalesce, old.seq)
                if old.coalesce is not None and self._coalesce.get(old.coalesce) is old:
                    self._coalesce[old.coalesce] = new
                moved.append(new)
        moved.sort(key=lambda e: e.seq)
        self._classes[priority].merge(moved)

    def _victim(self) -> _Entry[T] | None:
        for cls in reversed(self._classes):  # lowest priority class first
            v = cls.victim()
            if v is not None:
                return v
        return None

    def _unindex(self, e: _Entry[T]) -> None:
        if e.coalesce is not None and self._coalesce.get(e.coalesce) is e:
            del self._coalesce[e.coalesce]

    # ------------------------------------------------------------ consumers

    def get_nowait(self, priority: int | None = None) -> T | None:
        """The next item (highest class first; FIFO or fair within it), or None when empty.

        With ``priority``, only from that class (a batch that must not mix classes).
        """
        with self._cond:
            cls = self._serving(priority)
            if cls is None:
                return None
            e = cls.pop_fifo() if self.order == "fifo" else cls.pop_fair()
            self._unindex(e)
            self._size -= 1
            self._cond.notify_all()
            return e.item

    def take_while(
        self, decide: Callable[[T], Decision], priority: int | None = None
    ) -> tuple[list[T], list[T]]:
        """Take items in service order, as ``decide`` says of each, under the queue's lock: one atomic batch.

        ``decide(item)`` sees the item ``get_nowait(priority)`` would return next:
        :attr:`Decision.TAKE` takes it, :attr:`Decision.SKIP` takes it out apart
        (the caller discards it: a stale window), :attr:`Decision.STOP` leaves it
        and everything behind it. Returns ``(taken, skipped)``, each in service
        order. The item decided on is the item taken, however many producers put
        meanwhile, so a consumer never holds the queue's lock itself. ``decide``
        runs under that lock: it must not put or take (nor wait for a thread that does); if it raises, the
        items taken before are lost with the exception, as with any consumer that fails holding them.
        """
        taken: list[T] = []
        skipped: list[T] = []
        with self._cond:
            while True:
                cls = self._serving(priority)
                if cls is None:
                    break
                head = cls.head_fifo() if self.order == "fifo" else cls.head_fair()
                verdict = decide(head.item)
                if verdict is Decision.STOP:
                    break
                e = cls.pop_fifo() if self.order == "fifo" else cls.pop_fair()
                self._unindex(e)
                self._size -= 1
                (taken if verdict is Decision.TAKE else skipped).append(e.item)
            if taken or skipped:
                self._cond.notify_all()
        return taken, skipped

    def _serving(self, priority: int | None) -> _Class[T] | None:
        """Under the lock: the class ``get_nowait(priority)`` serves from, or None when it has nothing."""
        for p, cls in enumerate(self._classes):
            if (priority is None or p == priority) and cls.size:
                return cls
        return None

    def head_priority(self) -> int | None:
        """The class the next ``get_nowait()`` serves from, or None when empty."""
        with self._cond:
            return next((p for p, cls in enumerate(self._classes) if cls.size), None)

    def wait_for(self, predicate: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Block until ``predicate()`` (default: not empty) holds or ``timeout`` passes; returns the predicate.

        The predicate runs under the queue's lock and may call its methods; ``put``,
        ``get_nowait`` and ``notify`` wake waiters.
        """
        pred = predicate if predicate is not None else (lambda: self._size > 0)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def notify(self) -> None:
        """Wake every ``wait_for`` (to re-check an outside condition such as stopping)."""
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------ housekeeping

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def key_count(self) -> int:
        """How many distinct keys have something pending (the scheduler: have all streams a window queued?)."""
        with self._cond:
            keys = {(g, k) for cls in self._classes for g, ks in cls.groups.items() for k in ks}
            return len(keys)
