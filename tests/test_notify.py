"""The wake-up channel: what the migration's trigger notifies is what ``queue.listen`` hears."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from geojobs import queue

pytestmark = pytest.mark.db


def test_a_queued_job_wakes_a_listener_on_the_one_channel(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        queue.listen(listener)
        queue.enqueue(conn, "noop", {})
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in notes] == [(queue.NOTIFY_CHANNEL, "noop")]
