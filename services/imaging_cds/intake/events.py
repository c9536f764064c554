"""Noticing missed topic-based notifications: event numbers per subscription, kept in Redis."""

from __future__ import annotations

from typing import Any

import redis

_RECORD = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > old then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return old
"""


class EventCounter:
    """The highest event number seen per subscription; says when a notification reveals a gap."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._key = f"{prefix}:subscription-events"
        self._record: Any = client.register_script(_RECORD)

    def gap(self, subscription_id: str, first_event: int | None, events_since_start: int | None) -> bool:
        """Record what this notification shows and say whether events before it were never received.

        ``first_event`` is the lowest event number it carries (None for a heartbeat or handshake);
        ``events_since_start`` the server's count of events so far.
        """
        highest = max(n for n in (first_event, events_since_start, 0) if n is not None)
        previous = int(self._record(keys=[self._key], args=[subscription_id, highest]))
        seen_up_to = max(previous, 0)
        if first_event is not None:
            return first_event > seen_up_to + 1
        return events_since_start is not None and events_since_start > seen_up_to
