"""End-to-end harness: the real keel bot (python-telegram-bot + anthropic SDK) against both fakes.

    async def test_x(bot_world: BotWorld) -> None:
        world = bot_world
        world.answer(lambda req: reply("hi"))      # what the agent model says
        world.telegram.inject_text(world.alice_chat, "hello")
        msg = await world.telegram.next_bot_message(world.alice_chat.id)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from agents.config import Settings, load_settings
from agents.sessions import is_compaction_request
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

ALICE_ID = 1001
BOB_ID = 1002
MALLORY_ID = 6666
API_KEY = "sk-ant-test-key-0123456789"

AgentAnswer = Callable[[RecordedRequest], Reply | Awaitable[Reply]]


def is_router(req: RecordedRequest) -> bool:
    tools = req.body.get("tools") or [] if isinstance(req.body, dict) else []
    return any(t.get("name") == "route" for t in tools)


def is_compactor(req: RecordedRequest) -> bool:
    """A compaction request: the compactor's, or an agent summarising its own session."""
    return is_compaction_request(req.body)


@dataclass
class BotWorld:
    telegram: FakeTelegram
    anthropic: FakeAnthropic
    settings: Settings
    app: Any = None
    route_to: Callable[[str], str] = field(default=lambda text: "assistant")
    agent_answer: AgentAnswer = field(default=lambda req: reply(f"echo: {req.last_user_text}"))
    summarise: Callable[[RecordedRequest], Reply] = field(
        default=lambda req: reply("Earlier: the person and the assistant talked."))

    def __post_init__(self) -> None:
        self.alice = self.telegram.user("Alice", username="alice", id=ALICE_ID)
        self.bob = self.telegram.user("Bob", username="bob", id=BOB_ID)
        self.mallory = self.telegram.user("Mallory", username="mallory", id=MALLORY_ID)
        self.alice_chat = self.telegram.private_chat(self.alice)
        self.anthropic.responder = self._respond

    def answer(self, fn: AgentAnswer) -> None:
        self.agent_answer = fn

    def _respond(self, req: RecordedRequest) -> Reply | Awaitable[Reply]:
        if is_router(req):
            return reply(tool_use("route", {"agent": self.route_to(req.last_user_text)}))
        if is_compactor(req):
            return self.summarise(req)
        return self.agent_answer(req)

    @property
    def agent_requests(self) -> list[RecordedRequest]:
        return [r for r in self.anthropic.message_requests if not is_router(r) and not is_compactor(r)]


def bot_env(monkeypatch: pytest.MonkeyPatch, telegram: FakeTelegram, anthropic: FakeAnthropic,
            **extra: str) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", telegram.token)
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", telegram.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic.base_url)
    monkeypatch.setenv("KEEL_ALLOWED_USER_IDS", f"{ALICE_ID},{BOB_ID}")
    for key, value in extra.items():
        monkeypatch.setenv(key, value)


async def start_bot(settings: Settings) -> Any:
    from bot.app import build_application, start_app

    app = build_application(settings)
    await start_app(app)
    return app


async def stop_bot(app: Any) -> None:
    from bot.app import stop_app

    await stop_app(app)


@pytest_asyncio.fixture
async def bot_world(
    fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BotWorld]:
    bot_env(monkeypatch, fake_telegram, fake_anthropic)
    world = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic, settings=load_settings())
    world.app = await start_bot(world.settings)
    try:
        yield world
    finally:
        await stop_bot(world.app)
    assert not fake_anthropic.unexpected, [r.note for r in fake_anthropic.unexpected]


def quiet_hour(timezone: str = "UTC") -> int:
    """An hour of the day twelve hours from now in ``timezone``. A daily schedule at that hour
    has nothing to catch up when the bot starts: started within its misfire grace after its
    hour, the bot fires it once more at start-up (as it should), and a test counting the fires it
    makes itself sees one more (such tests failed every day in that hour)."""
    return (datetime.now(ZoneInfo(timezone)).hour + 12) % 24


def at_hour(day: tuple[int, int, int], hour: int, timezone: str) -> datetime:
    """``hour``:00:05 on ``day`` in ``timezone``, as UTC (a moment just after a daily fire)."""
    return datetime(*day, hour, 0, 5, tzinfo=ZoneInfo(timezone)).astimezone(UTC)
