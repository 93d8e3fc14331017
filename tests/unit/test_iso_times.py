"""Stored times are ISO-8601 UTC text with microseconds and a Z, so they compare as text: the
quicker ``iso`` writes exactly what the strftime form wrote, for every kind of moment."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta, timezone

from storage.db import iso, now_iso

FORM = "%Y-%m-%dT%H:%M:%S.%fZ"


def test_iso_is_the_stored_form_for_any_moment_and_zone() -> None:
    rng = random.Random(15)
    for _ in range(2000):
        moment = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.uniform(0, 60 * 365 * 86400), microseconds=rng.choice([0, 1, 999_999]))
        zone = timezone(timedelta(minutes=rng.randrange(-14 * 60, 14 * 60 + 1, 15)))
        local = moment.astimezone(zone)
        assert iso(local) == moment.strftime(FORM) == iso(moment)


def test_now_is_in_the_stored_form_and_ordered_as_text() -> None:
    first = now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first)
    assert first <= now_iso()
