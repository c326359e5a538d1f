"""The gateway's in-memory copy of users' recent events and dismissed items.

A bounded LRU in front of `StateStore.user_state`: filled when a Recommend
reads a user from the store, updated write-through by SendFeedback after the
event's transaction has committed, dropped by ForgetUser and, for every
user of an ImportEvents batch, once that batch has committed. A hit saves the
SQLite read and its thread-pool hop, the largest cost of the gateway's
Recommend path (docs/bench.md, section 2). (`recgen import` writes to the
file behind a running gateway's back: such a gateway's cached users miss
those events until they leave the cache or the gateway restarts.)

It is correct only while this gateway is the store's only writer: every
write then passes through `record`/`invalidate` here. That holds for the
SQLite backend (one file, one gateway host) and not for PostgreSQL, where
several gateways write the same state and a cached user would miss the
others' feedback; `server/main.py` enables the cache for SQLite only.

What it does not do: it never writes to the store, never changes the
durability contract (the caller acknowledges after the commit, as without
it), and knows nothing of feedback weights. All methods run on the event
loop's thread: no locks.
"""

from __future__ import annotations

from collections import OrderedDict

from server.state import Event, UserState


class UserStateCache:
    def __init__(self, capacity: int, history_cap: int) -> None:
        assert capacity >= 1, f"capacity must be >= 1, got {capacity}"
        self.capacity = capacity
        self.history_cap = history_cap  # the `limit` every fill was read with
        self._users: OrderedDict[str, UserState] = OrderedDict()  # user_id -> state, LRU order
        # Write generations, so a read from the store that raced a write is never
        # cached: `_gen` counts writes; `_written[user]` is the generation of the
        # user's last write (bounded like the cache: `_forgotten_gen` is the
        # newest generation dropped from it, and any fill older than that is
        # refused since the dropped entry may have been this user's).
        self._gen = 0
        self._written: OrderedDict[str, int] = OrderedDict()
        self._forgotten_gen = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._users)

    def get(self, user_id: str) -> UserState | None:
        """The cached state, or None (then `ticket()`, read the store, `fill`).
        The lists are shared: callers must not change them."""
        state = self._users.get(user_id)
        if state is None:
            self.misses += 1
            return None
        self._users.move_to_end(user_id)
        self.hits += 1
        return state

    def ticket(self) -> int:
        """Taken before a store read; `fill` with it caches the read only if no
        write to that user happened since."""
        return self._gen

    def fill(
        self,
        user_id: str,
        ticket: int,
        events: list[Event],
        dismissed: list[str],
        seen: tuple[str, ...] = (),
        forgotten_at: float = 0.0,
    ) -> bool:
        if self._written.get(user_id, 0) > ticket or self._forgotten_gen > ticket:
            return False  # a write raced the read: the next request reads again
        events = list(events[: self.history_cap])
        self._users[user_id] = UserState(events, list(dismissed), seen, forgotten_at)
        self._users.move_to_end(user_id)
        while len(self._users) > self.capacity:
            self._users.popitem(last=False)
        return True

    def _touch(self, user_id: str) -> None:
        self._gen += 1
        self._written[user_id] = self._gen
        self._written.move_to_end(user_id)
        while len(self._written) > self.capacity:
            _, gen = self._written.popitem(last=False)
            self._forgotten_gen = max(self._forgotten_gen, gen)

    def record(self, ev: Event) -> None:
        """An event that has just been committed (stored=True)."""
        self._touch(ev.user_id)
        state = self._users.get(ev.user_id)
        if state is None:
            return
        events, dismissed, seen, forgotten_at = state
        if ev.type == "DISMISS":
            if ev.item_id not in dismissed:
                dismissed = [*dismissed, ev.item_id]
        else:
            # The store's order: ts descending, then arrival descending. The new
            # event arrived last, so it goes before every event with ts <= its own.
            at = next((i for i, old in enumerate(events) if old.ts <= ev.ts), len(events))
            events = [*events[:at], ev, *events[at:]]
            if len(events) > self.history_cap:  # what falls out still counts as consumed
                seen = tuple(dict.fromkeys([*(e.item_id for e in events), *seen]))
                events = events[: self.history_cap]
        # New lists, not changed ones: a request may still be reading the old state.
        self._users[ev.user_id] = UserState(events, dismissed, seen, forgotten_at)

    def invalidate(self, user_id: str) -> None:
        """Drop the user (forgotten, or a write whose outcome is unknown)."""
        self._touch(user_id)
        self._users.pop(user_id, None)
