"""Pilot tests of the console's calls: the panel, the call keys and the commands they send, refusals, the thread.

Offline: a FakeLink stands in for the bridge, records the commands and delivers results and events when told.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.strip import Strip
from textual.widgets import Static

from console.app import SwitchboardApp
from console.cache import Cache
from console.config import ConsoleConfig
from console.screens.confirm import Confirm
from console.screens.help import HelpScreen
from console.screens.picker import Picker
from console.screens.wrap_up import WrapUpScreen
from console.widgets.call_queue import CallQueue
from console.widgets.calls_panel import CallsPanel
from console.widgets.my_call import MyCallBar
from console.widgets.thread_view import ThreadView
from tests.console_support import NOW, CallLog, EventLog, FakeLink, calls_events, demo_events, fill, iso

SIZE = (120, 36)


def text_of(strips: list[Strip]) -> str:
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def make_cache(tmp_path: Path, waiting: int = 3, mine: str | None = "on_hold") -> Cache:
    cache = Cache(tmp_path / "cache.db")
    texts = demo_events()
    fill(cache, texts + calls_events(texts, waiting=waiting, mine=mine))
    return cache


@asynccontextmanager
async def running(cache: Cache, clock: Any = None) -> AsyncIterator[tuple[SwitchboardApp, Pilot[Any], FakeLink]]:
    app = SwitchboardApp(cache, ConsoleConfig(), link_factory=FakeLink.factory(), clock=clock or Clock(), tz=UTC)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.link, FakeLink)
        yield app, pilot, app.link


async def settle(pilot: Pilot[Any]) -> None:
    for _ in range(5):
        await pilot.pause(0.05)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.05)


def toasts(app: SwitchboardApp) -> str:
    return "\n".join(str(n.message) for n in app._notifications)


def bar(app: SwitchboardApp) -> str:
    return str(app.query_one(MyCallBar).render())


def follow_up(cache: Cache) -> CallLog:
    """Events for the calls already in ``cache``, continuing its seqs."""
    calls = CallLog(EventLog(seq=cache.cursor(), ids="calls"))
    for sid, (call, _) in cache.calls(r[0] for r in cache.conn().execute("SELECT call_sid FROM calls")).items():
        calls.calls[sid] = {
            "call_sid": sid,
            "conversation_id": call.conversation_id,
            "twilio_number": call.twilio_number,
            "customer_number": call.customer_number,
            "caller_name": call.caller_name,
            "from_city": call.from_city,
            "from_state": call.from_state,
            "from_country": call.from_country,
            "queue": call.queue,
            "state": call.state,
            "agent": call.agent,
            "on_hold": call.on_hold,
            "muted": call.muted,
            "transfer": call.transfer,
            "offered_to": call.offered_to,
            "offer_expires_at": call.offer_expires_at,
            "queued_at": call.queued_at,
            "answered_at": call.answered_at,
            "ended_at": call.ended_at,
            "outcome": call.outcome,
            "agents": call.agents,
            "reason": call.reason,
        }
    return calls


async def test_the_panel_shows_the_queue_and_my_call_and_the_waits_tick(tmp_path: Path) -> None:
    clock = Clock()
    async with running(make_cache(tmp_path), clock) as (app, pilot, _):
        panel = app.query_one(CallsPanel)
        queue = app.query_one(CallQueue)
        assert len(queue.rows) == 3
        first = text_of([queue.render_line(0)])
        assert "4:12" in first and "Priya Natarajan" in first and "New York, NY" in first and "support" in first
        assert "+44 20 7946 0958" in text_of([queue.render_line(1)])
        assert "On hold 0:47" in bar(app) and "Jordan Alvarez" in bar(app) and "call 5:25" in bar(app)
        header = str(app.query_one("QueueHeader > _Summary").render())
        assert "3 waiting" in header and "longest 4:12" in header and "2 agents available" in header
        queries = app.cache.conn().total_changes
        clock.now = NOW + timedelta(seconds=5)
        panel.tick()
        await pilot.pause(0.05)
        assert "4:17" in text_of([queue.render_line(0)])
        assert "On hold 0:52" in bar(app)
        assert "longest 4:17" in str(app.query_one("QueueHeader > _Summary").render())
        assert app.cache.conn().total_changes == queries


async def test_accept_next_sends_the_command_and_opens_the_callers_thread(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, mine=None)
    async with running(cache) as (app, pilot, link):
        oldest = app.query_one(CallsPanel).waiting[0]
        await pilot.press("A")
        await settle(pilot)
        [accept] = link.sent
        assert (accept.command, accept.args) == ("accept_call", {"call_sid": None})
        link.answer(accept, {"call_sid": oldest.call_sid, "conversation_id": oldest.conversation_id})
        await settle(pilot)
        assert app.query_one(ThreadView).conversation_id == oldest.conversation_id
        assert "Ringing your phone" in toasts(app)
        calls = follow_up(cache)
        calls.update(oldest.call_sid, "accepted", NOW, state="ringing_agent", agent="you", queue=None)
        link.deliver(calls.log.events)
        await settle(pilot)
        assert "Ringing your phone" in bar(app)
        assert len(app.query_one(CallQueue).rows) == 2
        assert app.main.check_action("accept_call", ()) is False  # one call at a time
        calls.log.events.clear()
        calls.update(oldest.call_sid, "connected", NOW, state="connected", answered_at=iso(NOW), agents=["you"])
        link.deliver(calls.log.events)
        await settle(pilot)
        assert "Connected 0:00" in bar(app)
        assert app.main.check_action("hold_call", ()) is True


@pytest.mark.parametrize(
    ("code", "message", "data", "said"),
    [
        ("already_taken", "Taken.", {"agent": "ana"}, "ana took that call."),
        ("no_phone", "No phone.", {}, "switchboard-bridge agents set-phone"),
        ("no_calls_waiting", "None.", {}, "No calls are waiting."),
    ],
)
async def test_accept_refusals_are_told_in_words(
    tmp_path: Path, code: str, message: str, data: dict[str, Any], said: str
) -> None:
    async with running(make_cache(tmp_path, mine=None)) as (app, pilot, link):
        await pilot.press("A")
        await settle(pilot)
        link.refuse(link.sent[-1], code, message, data)
        await settle(pilot)
        assert said in toasts(app)
        assert app.is_running


async def test_hold_and_mute_toggle_my_call(tmp_path: Path) -> None:
    async with running(make_cache(tmp_path)) as (app, pilot, link):
        mine = app.query_one(CallsPanel).mine
        assert mine is not None and mine.on_hold
        offered = {c.title for c in app.get_system_commands(app.main)}  # the command palette
        assert {"Hold", "Mute", "Transfer", "Hang up"} <= offered and "Accept call" not in offered
        await pilot.press("h", "M")
        await settle(pilot)
        assert [(c.command, c.args) for c in link.sent] == [
            ("hold_call", {"call_sid": mine.call_sid, "hold": False}),
            ("mute_call", {"call_sid": mine.call_sid, "muted": True}),
        ]


async def test_call_keys_are_offered_only_when_they_apply(tmp_path: Path) -> None:
    async with running(make_cache(tmp_path, mine=None, waiting=0)) as (app, pilot, link):
        main = app.main
        for action in ("accept_call", "hold_call", "mute_call", "transfer_call", "hang_up", "wrap_up"):
            assert main.check_action(action, ()) is False, action
        assert main.check_action("toggle_presence", ()) is True
        await pilot.press("h", "A", "H")
        await settle(pilot)
        assert link.sent == []
        await pilot.press("f1")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        ids = {b.id for _, bindings in app.binding_sections() for b in bindings}
        assert {"call.accept", "call.hold", "call.transfer", "call.wrap-up", "queue.open", "wrap-up.save"} <= ids


async def test_transfer_to_an_agent_warm_then_complete(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, mine="connected")
    async with running(cache) as (app, pilot, link):
        link.replies["list_agents"] = {
            "agents": [
                {"name": "ana", "active": True, "presence": "available", "has_phone": True},
                {"name": "bob", "active": True, "presence": "busy", "has_phone": True},
                {"name": "you", "active": True, "presence": "busy", "has_phone": True},
            ]
        }
        link.replies["list_queues"] = {"queues": [{"name": "billing", "waiting": 1, "agents_available": 2}]}
        mine = app.query_one(CallsPanel).mine
        assert mine is not None and mine.state == "connected"
        await pilot.press("t")
        await settle(pilot)
        picker = app.screen
        assert isinstance(picker, Picker)
        assert [c.value for c in picker.choices] == ["agent:ana", "agent:bob", "queue:billing"]
        await pilot.press(*"ana", "enter")
        await settle(pilot)
        assert isinstance(app.screen, Picker)  # cold or warm?
        await pilot.press("enter")  # warm, the first choice
        await settle(pilot)
        [transfer] = link.sent
        assert transfer.args == {"call_sid": mine.call_sid, "mode": "warm", "target": {"agent": "ana"}}
        # The bridge puts the caller on hold and rings ana; she answers: consulting.
        calls = follow_up(cache)
        warm = {"mode": "warm", "target_kind": "agent", "target": "ana", "state": "consulting", "by": "you"}
        calls.update(mine.call_sid, "transfer_started", NOW, state="consulting", on_hold=True, transfer=warm)
        link.deliver(calls.log.events)
        await settle(pilot)
        assert "Consulting ana" in bar(app) and "caller on hold" in bar(app)
        assert app.main.check_action("transfer_call", ()) is False
        assert app.main.check_action("cancel_transfer", ()) is True
        await pilot.press("T")
        await settle(pilot)
        assert (link.sent[-1].command, link.sent[-1].args) == ("complete_transfer", {"call_sid": mine.call_sid})
        await pilot.press("C")
        await settle(pilot)
        assert (link.sent[-1].command, link.sent[-1].args) == ("cancel_transfer", {"call_sid": mine.call_sid})


async def test_cold_transfer_to_a_typed_number(tmp_path: Path) -> None:
    async with running(make_cache(tmp_path, mine="connected")) as (app, pilot, link):
        link.replies["list_agents"] = {"agents": []}
        link.replies["list_queues"] = {"queues": []}
        await pilot.press("t")
        await settle(pilot)
        await pilot.press(*"+44 20 7946 0958", "enter")
        await settle(pilot)
        await pilot.press("down", "enter")  # cold
        await settle(pilot)
        [transfer] = link.sent
        assert transfer.args["mode"] == "cold" and transfer.args["target"] == {"number": "+44 20 7946 0958"}
        link.refuse(transfer, "bad_number", "+44 20 7946 095 is not a valid number in GB.")
        await settle(pilot)
        assert "not a valid number" in toasts(app)


async def test_hang_up_asks_then_wrap_up_note_is_required_before_the_next_call(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, mine="connected")
    async with running(cache) as (app, pilot, link):
        mine = app.query_one(CallsPanel).mine
        assert mine is not None
        await pilot.press("H")
        await settle(pilot)
        assert isinstance(app.screen, Confirm)
        await pilot.press("y")
        await settle(pilot)
        [hang_up] = link.sent
        assert (hang_up.command, hang_up.args) == ("hang_up", {"call_sid": mine.call_sid})
        calls = follow_up(cache)
        calls.end(mine.call_sid, NOW)
        calls.presence("you", "busy", "wrap_up", NOW, mine.call_sid)
        link.deliver(calls.log.events)
        link.answer(hang_up, {"call_sid": mine.call_sid})
        await settle(pilot)
        assert isinstance(app.screen, WrapUpScreen)
        await pilot.press("escape")  # later …
        await settle(pilot)
        assert "Wrap-up" in bar(app)
        await pilot.press("A")  # … but before the next call
        await settle(pilot)
        assert isinstance(app.screen, WrapUpScreen)
        assert [c.command for c in link.sent] == ["hang_up"]
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert "A note is required" in str(app.screen.query_one("#wrap-up-error").render())
        await pilot.press(*"Refund issued")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert not isinstance(app.screen, WrapUpScreen)
        wrap = link.sent[-1]
        assert (wrap.command, wrap.args) == ("wrap_up", {"call_sid": mine.call_sid, "note": "Refund issued"})


async def test_next_needing_attention_puts_a_waiting_call_first(tmp_path: Path) -> None:
    async with running(make_cache(tmp_path, mine=None)) as (app, pilot, _):
        oldest = app.query_one(CallsPanel).waiting[0]
        await pilot.press("n")
        await settle(pilot)
        assert app.query_one(ThreadView).conversation_id == oldest.conversation_id
        assert app.query_one(CallQueue).has_focus
        await pilot.press("n")  # again: on to the texts
        await settle(pilot)
        text = app.cache.next_needing_attention("you")
        assert text is not None and app.query_one(ThreadView).conversation_id == text.id


async def test_the_queue_opens_a_callers_thread(tmp_path: Path) -> None:
    async with running(make_cache(tmp_path)) as (app, pilot, _):
        second = app.query_one(CallsPanel).waiting[1]
        await pilot.press("q", "down", "enter")
        await settle(pilot)
        assert app.query_one(ThreadView).conversation_id == second.conversation_id


async def test_offline_call_keys_send_nothing_and_say_why(tmp_path: Path) -> None:
    async with running(make_cache(tmp_path, mine=None)) as (app, pilot, link):
        link.go_offline()
        await settle(pilot)
        await pilot.press("A")
        await settle(pilot)
        assert link.sent == []
        assert "Calls need the bridge" in toasts(app)


async def test_presence_toggles_between_away_and_available(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, mine=None, waiting=0)
    async with running(cache) as (app, pilot, link):
        await pilot.press("P")
        await settle(pilot)
        assert (link.sent[-1].command, link.sent[-1].args) == ("set_presence", {"presence": "away"})
        calls = follow_up(cache)
        calls.presence("you", "away", "agent", NOW)
        link.deliver(calls.log.events)
        await settle(pilot)
        assert "you: away" in str(app.query_one("QueueHeader > _Summary").render())
        await pilot.press("P")
        await settle(pilot)
        assert link.sent[-1].args == {"presence": "available"}


async def test_the_thread_shows_calls_and_voicemails(tmp_path: Path) -> None:
    cache = make_cache(tmp_path)
    earlier = next(r for r in cache.conversations(100) if r.customer_name == "Maya Chen")
    missed = next(r for r in cache.conversations(100) if r.last_preview == "Voicemail 0:42")
    async with running(cache) as (app, pilot, _):
        app.main.open_conversation(earlier.id)
        await settle(pilot)
        shown = text_of(app.query_one(ThreadView)._lines)
        assert "☎ Call from Maya Chen" in shown and "answered by ana · 3m 07s" in shown
        assert "ana answered" in shown and "ended" in shown
        app.main.open_conversation(missed.id)
        await settle(pilot)
        shown = " ".join(text_of(app.query_one(ThreadView)._lines).split())  # headers wrap at this width
        assert "◀ Voicemail" in shown and "0:42" in shown and "nobody answered in time" in shown
        assert "/Recordings/RE" in shown and ".mp3" in shown
        assert "went to voicemail" in shown


async def test_an_offered_call_can_be_accepted_or_declined(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, mine=None)
    async with running(cache) as (app, pilot, link):
        offered = app.query_one(CallsPanel).waiting[1]
        calls = follow_up(cache)
        expires = iso(NOW + timedelta(seconds=15))
        calls.update(offered.call_sid, "offered", NOW, offered_to="you", offer_expires_at=expires)
        link.deliver(calls.log.events)
        await settle(pilot)
        assert "Offered to you" in bar(app) and "15s to accept" in bar(app)
        assert "offered to you" in toasts(app)
        assert app.main.check_action("decline_call", ()) is True
        await pilot.press("D")
        await settle(pilot)
        assert (link.sent[-1].command, link.sent[-1].args) == ("decline_call", {"call_sid": offered.call_sid})
        await pilot.press("A")  # the offered call, not the one waiting longest
        await settle(pilot)
        assert (link.sent[-1].command, link.sent[-1].args) == ("accept_call", {"call_sid": offered.call_sid})


async def test_a_colleagues_transfer_to_me_opens_the_callers_thread(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, mine=None)
    async with running(cache) as (app, pilot, link):
        theirs = next(
            c
            for c, _ in cache.calls(r[0] for r in cache.conn().execute("SELECT call_sid FROM calls")).values()
            if c.agent == "bob" and c.state == "connected"
        )
        calls = follow_up(cache)
        cold = {"mode": "cold", "target_kind": "agent", "target": "you", "state": "ringing", "by": "bob"}
        calls.update(theirs.call_sid, "transfer_started", NOW, state="transferring", on_hold=True, transfer=cold)
        link.deliver(calls.log.events)
        await settle(pilot)
        assert "Transfer for you from bob" in bar(app)
        assert app.query_one(ThreadView).conversation_id == theirs.conversation_id
        assert "transferring a call to you" in toasts(app)


async def test_hostile_caller_names_and_queues_are_shown_inert(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache.db")
    calls = CallLog(EventLog())
    calls.presence("you", "available", "connected", NOW - timedelta(hours=1))
    hostile = "[bold red]FREE[/] \x1b[31mred\x1b]0;pwned\x07"
    calls.start(
        "+15125550199", NOW - timedelta(seconds=30), queue="[link=x]q[/link]", caller_name=hostile, city="\x1b[2J"
    )
    cache.apply(calls.log.events)
    async with running(cache) as (app, pilot, link):
        row = text_of([app.query_one(CallQueue).render_line(0)])
        assert "[bold red]FREE[/]" in row and "[link=x]q[/link]" in row
        assert "\x1b" not in row and "\x07" not in row and "␛[2J" in row
        await pilot.press("A")
        await settle(pilot)
        link.refuse(link.sent[-1], "already_taken", "Taken.", {"agent": "[b]ana[/b]"})
        await settle(pilot)
        assert "[b]ana[/b] took that call." in toasts(app)
        assert app.is_running


def test_queue_depth_per_minute_is_a_step_function_of_the_samples() -> None:
    from console.widgets.queue_header import depth_per_minute

    samples = [
        (iso(NOW - timedelta(minutes=90)), 2),  # before the hour: the level it starts at
        (iso(NOW - timedelta(minutes=30, seconds=20)), 5),
        (iso(NOW - timedelta(minutes=30, seconds=10)), 1),  # a peak inside one minute still shows
        (iso(NOW - timedelta(minutes=2)), 0),
    ]
    values = depth_per_minute(samples, NOW)
    assert len(values) == 60
    assert values[0] == 2 and values[28] == 2
    assert values[29] == 5 and values[30] == 1
    assert values[58] == 1 and values[-1] == 0  # the minute it fell in shows where it fell from
    assert depth_per_minute([], NOW) == [0.0] * 60


async def test_a_typed_transfer_number_with_brackets_is_shown_as_typed(tmp_path: Path) -> None:
    """The picker's title carries what the agent typed: text, not markup (a stray "[/]" must not stop the app)."""
    async with running(make_cache(tmp_path, mine="connected")) as (app, pilot, link):
        link.replies["list_agents"] = {"agents": []}
        link.replies["list_queues"] = {"queues": []}
        await pilot.press("t")
        await settle(pilot)
        await pilot.press(*"[/] [b]+44 20 7946 0958", "enter")
        await settle(pilot)
        assert isinstance(app.screen, Picker)
        assert "[/] [b]+44" in str(app.screen.query_one("#picker-title", Static).render())
        await pilot.press("down", "enter")  # cold
        await settle(pilot)
        [transfer] = link.sent
        assert transfer.args["target"] == {"number": "[/] [b]+44 20 7946 0958"}


async def test_hang_up_is_offered_while_my_phone_still_rings(tmp_path: Path) -> None:
    cache = make_cache(tmp_path, mine="ringing_agent")
    async with running(cache) as (app, pilot, link):
        mine = app.query_one(CallsPanel).mine
        assert mine is not None and mine.state == "ringing_agent"
        assert "Ringing your phone" in bar(app)
        await pilot.press("H")
        await settle(pilot)
        assert isinstance(app.screen, Confirm)
        await pilot.press("y")
        await settle(pilot)
        assert [(c.command, c.args) for c in link.sent] == [("hang_up", {"call_sid": mine.call_sid})]
