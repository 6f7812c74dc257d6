"""Simulated customers: seeded, short support conversations texted to the team's numbers, answering agents."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from bridge.sandbox.config import SandboxConfig
from bridge.sandbox.media import media_url
from bridge.sandbox.messaging import Media, Message, Messaging

log = logging.getLogger("switchboard.sandbox.customers")

# Area codes with geo data in the messaging webhook, each with the 555-01xx numbers reserved for fiction.
AREA_CODES = ("415", "212", "312", "512", "206", "617", "303", "404")
FIRST_NAMES = (
    "Maya",
    "Jonas",
    "Priya",
    "Diego",
    "Aiko",
    "Sam",
    "Fatima",
    "Liam",
    "Chloé",
    "Noah",
    "Zainab",
    "Eli",
)
ITEMS = ("desk lamp", "rain jacket", "coffee grinder", "yoga mat", "backpack", "bluetooth speaker", "teapot")
STREETS = ("12 Harbor Way", "480 Elm St Apt 3B", "77 Sunset Blvd", "9 Quarry Rd", "215 Maple Ave")
CITIES = ("Oakland, CA", "Brooklyn, NY", "Evanston, IL", "Round Rock, TX", "Tacoma, WA")
DAYS = ("yesterday", "on Monday", "last Friday", "two days ago")
NUDGES = (
    "Hello? Anyone there?",
    "??",
    "Still waiting on an answer here",
    "hi, just checking you got my text",
)


@dataclass(frozen=True, slots=True)
class Topic:
    """A kind of support conversation: ways to open it, then the customer's lines, one per agent answer."""

    name: str
    openers: tuple[str, ...]
    replies: tuple[str, ...]
    photo: bool = False


TOPICS = (
    Topic(
        "order-status",
        (
            "Hi, where is my order {order}? It was supposed to arrive {day}.",
            "hey any update on order {order}? tracking hasn't moved in 3 days",
            "Hello! Has order {order} shipped yet?",
        ),
        ("It's under {name}, order {order}.", "ok great, thanks!"),
    ),
    Topic(
        "refund",
        (
            "Hi, I sent back the {item} last week and still no refund. Order {order}",
            "When will I get my refund for the {item}? It's been 10 days",
        ),
        ("It was ${amount}, paid by card", "Thank you 🙏"),
    ),
    Topic(
        "address-change",
        (
            "Can I change the delivery address on order {order}? I'm moving",
            "Need to update my shipping address please, order {order}",
        ),
        ("New address is {street}, {city}", "Perfect, thanks!"),
    ),
    Topic(
        "damaged-item",
        ("My {item} arrived damaged, photo attached", "The {item} came broken :( see pic"),
        ("Could you send a replacement instead of a refund?", "Great, thanks for the quick help"),
        photo=True,
    ),
    Topic(
        "praise",
        ("Just got my {item} and I love it 😍", "Thanks for the fast shipping! 🎉"),
        ("Will do! 👍",),
    ),
    Topic(
        "long-complaint",
        (
            "Hi, I've been trying to reach someone about order {order} for a week. The {item} I received "
            "is the wrong size, the box was already open, and nobody has answered my emails. I would really "
            "like this sorted out before the weekend please.",
        ),
        ("Ok, how do I send it back?", "Thanks"),
    ),
    Topic(
        "spanish",
        ("Hola, ¿hacen envíos a México? Quiero pedir un {item}", "Buenas, ¿dónde está mi pedido {order}?"),
        ("Perfecto, ¡gracias!",),
    ),
    Topic("stop-then-start", ("STOP",), ("Thanks!",)),
)
# Sent some texts after a STOP, as people who stopped by mistake do.
RESTART_LINES = ("START", "Sorry, texted STOP by accident. Is order {order} still coming?")


@dataclass(frozen=True, slots=True)
class CustomerText:
    """A text one simulated customer sends to one of the team's numbers."""

    from_number: str
    to: str
    body: str
    media: tuple[Media, ...] = ()


@dataclass(slots=True)
class Customer:
    """One simulated person and where their current conversation stands."""

    number: str
    name: str
    support_number: str = ""
    details: dict[str, str] = field(default_factory=dict)
    lines: deque[str] = field(default_factory=deque)
    """What they will say next, one line per agent answer."""
    active: bool = False
    opted_out: bool = False
    waiting_since: int | None = None
    """The tick of their last unanswered text, or None when an agent has answered since."""
    nudged: bool = False
    conversations: int = 0


class CustomerSimulator:
    """Decides what customers say, with no I/O: the same seed and agent answers give the same texts.

    ``next_text()`` is the next unprompted text (a new conversation, a nudge, a START after a STOP), one per
    tick; ``answer()`` is a customer's reply to an agent. Each conversation's wording comes from that
    customer's own generator, so how agents interleave their answers does not change what anyone says; it
    can change who is free to start a conversation, and when a nudge comes.
    """

    def __init__(self, seed: int, support_numbers: tuple[str, ...], media_base_url: str) -> None:
        self.seed = seed
        self.support_numbers = support_numbers
        self.media_base_url = media_base_url
        self.rng = random.Random(f"{seed}|customers")
        # Nudges react to agents being slow; their own generator keeps them from shifting who texts next.
        self.nudge_rng = random.Random(f"{seed}|nudges")
        self.tick = 0
        self.customers: dict[str, Customer] = {}
        self.scheduled: list[tuple[int, str, str]] = []
        """(tick, customer number, body): texts a customer will send later on their own."""
        numbers = [f"+1{area}55501{n:02d}" for area in AREA_CODES for n in range(20, 100)]
        self.pool = [n for n in numbers if n not in support_numbers]

    def is_customer(self, number: str) -> bool:
        return number in self.customers

    def _customer(self, number: str) -> Customer:
        customer = self.customers.get(number)
        if customer is None:
            name_rng = random.Random(f"{self.seed}|name|{number}")
            customer = Customer(number=number, name=name_rng.choice(FIRST_NAMES))
            self.customers[number] = customer
        return customer

    def _personal_rng(self, customer: Customer) -> random.Random:
        return random.Random(f"{self.seed}|customer|{customer.number}|{customer.conversations}")

    def _fill(self, customer: Customer, template: str) -> str:
        return template.format(name=customer.name, **customer.details)

    def _say(self, customer: Customer, body: str, media: tuple[Media, ...] = ()) -> CustomerText:
        customer.waiting_since = self.tick
        return CustomerText(from_number=customer.number, to=customer.support_number, body=body, media=media)

    def next_text(self) -> CustomerText:
        """The next text some customer sends unprompted."""
        self.tick += 1
        due = next((item for item in self.scheduled if item[0] <= self.tick), None)
        if due is not None:
            self.scheduled.remove(due)
            customer = self.customers[due[1]]
            if due[2] == "START":
                customer.opted_out = False
            return self._say(customer, due[2])
        ignored = [
            c
            for c in self.customers.values()
            if c.active and not c.opted_out and not c.nudged and c.waiting_since is not None
            if self.tick - c.waiting_since >= 3
        ]
        if ignored and self.nudge_rng.random() < 0.3:
            customer = ignored[0]
            customer.nudged = True
            return self._say(customer, self.nudge_rng.choice(NUDGES))
        return self._open_conversation()

    def _open_conversation(self) -> CustomerText:
        idle = [n for n in self.pool if not (n in self.customers and self.customers[n].active)]
        customer = self._customer(self.rng.choice(idle or self.pool))
        topic = self.rng.choice(TOPICS)
        customer.support_number = self.rng.choice(self.support_numbers)
        customer.conversations += 1
        rng = self._personal_rng(customer)
        customer.details = {
            "order": f"#{rng.randint(10000, 99999)}",
            "item": rng.choice(ITEMS),
            "amount": f"{rng.randint(12, 240)}.{rng.choice(('00', '49', '99'))}",
            "street": rng.choice(STREETS),
            "city": rng.choice(CITIES),
            "day": rng.choice(DAYS),
        }
        customer.active = True
        customer.nudged = False
        customer.lines = deque(self._fill(customer, line) for line in topic.replies)
        body = self._fill(customer, rng.choice(topic.openers))
        media: tuple[Media, ...] = ()
        if topic.photo:
            slug = customer.details["item"].replace(" ", "-")
            name = f"damaged-{slug}-{rng.randint(100, 999)}.png"
            media = (Media(url=media_url(self.media_base_url, name), content_type="image/png"),)
        if body == "STOP":
            customer.opted_out = True
            later = self.tick + rng.randint(3, 6)
            self.scheduled.append((later, customer.number, "START"))
            self.scheduled.append((later + 1, customer.number, self._fill(customer, RESTART_LINES[1])))
        return self._say(customer, body, media)

    def answer(self, number: str, agent_body: str) -> CustomerText | None:
        """What the customer at ``number`` says back to an agent's text, or None when they have nothing."""
        customer = self.customers.get(number)
        if customer is None or customer.opted_out or not agent_body.strip():
            return None
        customer.waiting_since = None
        if not customer.lines:
            customer.active = False
            return None
        line = customer.lines.popleft()
        if not customer.lines:
            customer.active = False
        return self._say(customer, line)


OPENING_GAP = 1.0
"""Seconds between the opening texts."""


class CustomerTraffic:
    """Runs the simulator against the sandbox: texts at the configured rate, and answers to agents' texts."""

    def __init__(self, config: SandboxConfig, messaging: Messaging) -> None:
        self.config = config
        self.messaging = messaging
        self.simulator = CustomerSimulator(config.seed, config.support_numbers, config.media_base_url)
        # Timing has its own generator so that what customers say depends only on the seed, not on timing.
        self.timing = random.Random(f"{config.seed}|timing")
        self._tasks: set[asyncio.Task[None]] = set()
        messaging.delivered_hooks.append(self.on_delivered)

    def start(self) -> None:
        """Send the opening texts, then text at ``customer_rate`` per minute (if it is not 0)."""
        if self.config.customer_rate > 0 or self.config.opening_texts > 0:
            self._spawn(self._run(), "customer traffic")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        for n in range(self.config.opening_texts):
            if n:
                await asyncio.sleep(OPENING_GAP)
            await self.send(self.simulator.next_text())
        if self.config.customer_rate <= 0:
            return
        interval = 60.0 / self.config.customer_rate
        while True:
            await asyncio.sleep(interval * self.timing.uniform(0.5, 1.5))
            await self.send(self.simulator.next_text())

    async def send(self, text: CustomerText) -> None:
        try:
            await self.messaging.receive(text.from_number, text.to, text.body, text.media)
        except Exception:  # one bad delivery must not stop the customers
            log.exception("simulated text from %s could not be delivered", text.from_number)

    def on_delivered(self, message: Message) -> None:
        """An agent's text reached a simulated customer: they may answer after a human pause."""
        if not message.direction.startswith("outbound") or not self.simulator.is_customer(message.to):
            return
        text = self.simulator.answer(message.to, message.body)
        if text is None:
            return
        delay = self.config.customer_reply_delay * self.timing.uniform(0.5, 1.5)
        self._spawn(self._answer_later(text, delay), f"answer from {text.from_number}")

    async def _answer_later(self, text: CustomerText, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.send(text)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
