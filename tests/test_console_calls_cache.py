"""The console's cache for voice: calls upserted from snapshots, their timelines, voicemails, presence, queue depth."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from bridge import protocol
from console.cache import Cache, call_preview
from tests.console_support import NOW, CallLog, EventLog, calls_events, customer, demo_events, fill, iso


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "c.db")


def test_a_call_before_any_text_makes_the_conversation(cache: Cache) -> None:
    calls = CallLog(EventLog())
    sid = calls.start(customer(1), NOW - timedelta(minutes=3), caller_name="Maya [b]Chen[/b]")
    cache.apply(calls.log.events)
    [conv] = cache.conversations()
    assert conv.customer_number == customer(1)
    assert conv.customer_name == "Maya [b]Chen[/b]"  # Twilio's caller name, kept as text
    assert conv.last_preview == "📞 Calling · waiting in support"
    assert conv.unread == 0 and conv.waiting_since is None
    [row] = cache.messages(conv.id)
    assert (row.direction, row.id) == ("call", sid)
    board = cache.call_board("you")
    assert [c.call_sid for c in board.waiting] == [sid]
    assert board.waiting[0].place == "San Francisco, CA"


def test_snapshots_upsert_and_the_timeline_keeps_each_change(cache: Cache) -> None:
    calls = CallLog(EventLog())
    sid = calls.start(customer(1), NOW - timedelta(minutes=5))
    calls.answer(sid, "ana", NOW - timedelta(minutes=4))
    calls.update(sid, "held", NOW - timedelta(minutes=3), state="on_hold", on_hold=True)
    calls.update(sid, "unheld", NOW - timedelta(minutes=2), state="connected", on_hold=False)
    calls.end(sid, NOW - timedelta(minutes=1, seconds=48))
    cache.apply(calls.log.events)
    found = cache.calls([sid])
    call, timeline = found[sid]
    assert (call.state, call.outcome, call.agents) == ("ended", "answered", ["ana"])
    assert [c.change for c in timeline] == ["queued", "accepted", "connected", "held", "unheld", "ended"]
    [conv] = cache.conversations()
    assert conv.last_preview == "📞 Call · 2m 07s · answered by ana"
    assert conv.last_at == iso(NOW - timedelta(minutes=1, seconds=48))
    assert len(cache.messages(conv.id)) == 1  # one row in the thread for the whole call


def test_replayed_and_repeated_snapshots_change_nothing(cache: Cache) -> None:
    calls = CallLog(EventLog())
    sid = calls.start(customer(1), NOW - timedelta(minutes=5))
    calls.answer(sid, "ana", NOW - timedelta(minutes=4))
    cache.apply(calls.log.events)
    before = cache.calls([sid])[sid]
    # The stream resends what the cache has (a reconnect's overlap): skipped by the cursor.
    assert cache.apply(calls.log.events) == []
    # The bridge says the same thing twice (a duplicated callback it passed on): no second timeline step.
    calls.emit(sid, "connected", NOW - timedelta(minutes=3))
    cache.apply(calls.log.events[-1:])
    after = cache.calls([sid])[sid]
    assert after[0] == before[0] or after[0].changed_at != before[0].changed_at
    assert [c.change for c in after[1]] == [c.change for c in before[1]]
    assert len(cache.messages(before[0].conversation_id)) == 1


def test_the_newest_snapshot_wins_within_a_batch_and_an_older_seq_never_overwrites(cache: Cache) -> None:
    calls = CallLog(EventLog())
    sid = calls.start(customer(1), NOW - timedelta(minutes=5))
    calls.answer(sid, "ana", NOW - timedelta(minutes=4))
    calls.end(sid, NOW - timedelta(minutes=1))
    cache.apply(calls.log.events)  # all in one batch: folded into one write of the last snapshot
    assert cache.calls([sid])[sid][0].state == "ended"
    # A snapshot older than the stored one (the cursor wound back, as a restored copy of the cache could be): the
    # stored row's seq guards the call, so the queue does not get a caller back who is long gone.
    stale = protocol.Event(2, protocol.CALL_UPDATED, iso(NOW), {**calls.calls[sid], "state": "queued"})
    cache.conn().execute("UPDATE meta SET value = '1' WHERE key = 'cursor'")
    cache.apply([stale])
    assert cache.calls([sid])[sid][0].state == "ended"
    assert cache.call_board(None).waiting == []


def test_voicemail_lands_in_the_thread_and_asks_for_an_answer(cache: Cache) -> None:
    calls = CallLog(EventLog())
    sid = calls.start(customer(1), NOW - timedelta(minutes=5))
    calls.update(sid, "voicemail_started", NOW - timedelta(minutes=1), state="voicemail")
    vid = calls.voicemail(sid, NOW - timedelta(seconds=10), duration=42)
    calls.end(sid, NOW - timedelta(seconds=10), outcome="voicemail")
    cache.apply(calls.log.events)
    [conv] = cache.conversations()
    assert conv.last_preview == "Voicemail 0:42"  # the call's end does not bury it
    assert conv.unread == 1 and conv.waiting_since == iso(NOW - timedelta(seconds=10))
    rows = cache.messages(conv.id)
    assert [r.direction for r in rows] == ["call", "voicemail"]
    assert rows[1].media[0]["url"].endswith(".mp3")
    voicemail = cache.voicemails([vid])[vid]
    assert (voicemail.duration, voicemail.reason) == (42, "longest wait")
    assert cache.next_needing_attention("you") is not None


def test_the_board_has_my_call_wrap_up_presence_and_the_queue_depth(cache: Cache) -> None:
    fill(cache, demo_events() + calls_events(demo_events(), waiting=3, mine="on_hold"))
    board = cache.call_board("you", NOW)
    assert len(board.waiting) == 3
    assert [c.queued_at for c in board.waiting] == sorted(c.queued_at or "" for c in board.waiting)
    assert board.mine is not None and board.mine.state == "on_hold" and not board.wrap_up
    assert board.mine_since == iso(NOW - timedelta(seconds=47))
    assert board.presence == "busy" and board.agents_available == 2  # ana and dee; bob is on a call, chen away
    assert board.depth[-1][1] == 3
    hour_ago = iso(NOW - timedelta(hours=1))
    assert board.depth[0][0] <= hour_ago < board.depth[1][0]  # the level the hour started at, then its changes
    # Hung up: the call is over, and the bridge says the agent is wrapping it up.
    calls = CallLog(EventLog(seq=cache.cursor(), ids="more calls"))
    mine = board.mine
    calls.calls[mine.call_sid] = {
        **{k: getattr(mine, k) for k in ("call_sid", "conversation_id", "twilio_number", "customer_number")},
        "state": "ended",
        "agents": ["you"],
        "outcome": "answered",
        "ended_at": iso(NOW),
        "answered_at": mine.answered_at,
    }
    calls.emit(mine.call_sid, "ended", NOW)
    calls.presence("you", "busy", "wrap_up", NOW, mine.call_sid)
    cache.apply(calls.log.events)
    board = cache.call_board("you", NOW)
    assert board.mine is not None and board.mine.call_sid == mine.call_sid and board.wrap_up


def test_queue_depth_keeps_an_hour(cache: Cache) -> None:
    calls = CallLog(EventLog())
    start = NOW - timedelta(hours=3)
    for n in range(30):
        sid = calls.start(customer(n), start + timedelta(minutes=n * 6))
        calls.answer(sid, "ana", start + timedelta(minutes=n * 6 + 1))
    cache.apply(calls.log.events)
    depth = [at for (at,) in cache.conn().execute("SELECT at FROM queue_depth ORDER BY at")]
    newest = start + timedelta(minutes=29 * 6 + 1)
    assert depth[-1] == iso(newest)
    hour_ago = iso(newest - timedelta(hours=1))
    assert sum(1 for at in depth if at <= hour_ago) == 1  # the level at the hour's start is kept, nothing older
    assert len(depth) == 2 * 10 + 1


def test_previews_say_how_a_call_went() -> None:
    base = {"queued_at": iso(NOW), "answered_at": None, "ended_at": iso(NOW + timedelta(seconds=40))}
    assert call_preview({**base, "state": "ended", "outcome": "abandoned", "agents": []}) == (
        "📞 Missed call · hung up after 0:40"
    )
    moved = {**base, "state": "ended", "outcome": "answered", "agents": ["ana", "bob"]}
    moved["answered_at"] = iso(NOW)
    assert call_preview(moved) == "📞 Call · 40s · answered by ana → bob"
    assert call_preview({"state": "ringing_agent", "agent": "ana"}) == "📞 Calling · ringing ana"
    assert call_preview({"state": "ended", "outcome": "voicemail"}) is None
    hung_up: dict[str, object] = {**base, "state": "ended", "outcome": "agent_hung_up", "agents": [], "agent": "ana"}
    assert call_preview(hung_up) == "📞 Call · hung up by ana"  # not a missed call: the caller did not give up


def test_a_catch_up_of_many_calls_is_fast(cache: Cache) -> None:
    calls = CallLog(EventLog())
    for n in range(2000):
        at = NOW - timedelta(hours=10) + timedelta(seconds=n * 15)
        sid = calls.start(customer(n % 700), at)
        calls.answer(sid, "ana", at + timedelta(seconds=5))
        calls.update(sid, "held", at + timedelta(seconds=30), state="on_hold", on_hold=True)
        calls.end(sid, at + timedelta(seconds=90))
    events = calls.log.events
    started = time.perf_counter()
    fill(cache, events, batch=500)
    rate = len(events) / (time.perf_counter() - started)
    assert cache.conn().execute("SELECT count(*) FROM calls").fetchone()[0] == 2000
    assert cache.call_board("ana").waiting == []
    assert rate > 3000, f"{rate:.0f} events/s"  # measured ~20k/s here; the bound only catches a pathology
