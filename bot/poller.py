"""Long polling that stores before it acknowledges.

Telegram forgets an update once a later ``getUpdates`` names an offset past it. python-telegram-bot's
updater moves the offset as soon as a batch arrives, before any handler has stored it, so a crash
in that window loses messages for good. keel drives ``getUpdates`` itself: a batch is committed to
the inbox in one transaction, and only then does the next call move the offset. A crash at any
moment leaves every update either still at Telegram (redelivered, deduplicated by ``update_id``)
or in the inbox (finished by recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram import Bot, Update
from telegram.error import (
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    TelegramError,
    TimedOut,
)

from storage.inbox import InboxItem

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 25
"""Long-poll wait per getUpdates (Telegram holds the request open up to this many seconds)."""
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
CONFLICT_GIVE_UP_S = 60.0
"""How long getUpdates may keep answering 409 Conflict (another process takes this bot's
updates) before keel stops with one line and a non-zero exit. Longer than one long poll, so an
instance that was just stopped, whose last poll Telegram still holds, is waited out."""
CROWD = 16
"""Updates in flight at once from which the poller counts as crowded (``Poller.crowded``)."""

Store = Callable[[list[InboxItem]], Coroutine[Any, Any, set[int]]]
Dispatch = Callable[[Update], Coroutine[Any, Any, None]]
Sent = Callable[[], list[Any]]
"""The last getUpdates answer's updates as Telegram sent them (``UpdatesRequest.batch``)."""
OrderKey = Callable[[Update], tuple[int, int] | None]


REDACTED = "[redacted secret]"


def scrubbed(update: Update, secrets: list[str], sent: dict[str, Any] | None = None
             ) -> tuple[Update, dict[str, Any]]:
    """The update with every known secret (the bot token, the API key) replaced, and its
    payload as stored: a person who pastes one into a chat must not have it stored, sent to the
    model or shown in a trace. The payload is ``sent``, the update as Telegram sent it, when the
    caller has it (rebuilding it from the object cost 47 µs an update), else rebuilt once."""
    payload = update.to_dict() if sent is None else sent
    if not secrets:
        return update, payload
    text = json.dumps(payload, ensure_ascii=False)
    if not any(secret in text for secret in secrets):
        return update, payload
    for secret in secrets:
        text = text.replace(json.dumps(secret, ensure_ascii=False)[1:-1], REDACTED)
    log.warning("update %s carried a secret of this bot (its token or API key); it was redacted "
                "before storage. Revoke it if it was sent on purpose.", update.update_id)
    payload = json.loads(text)
    cleaned = Update.de_json(payload, update.get_bot())
    assert cleaned is not None
    return cleaned, payload


def inbox_item(update: Update, payload: dict[str, Any] | None = None) -> InboxItem:
    chat = update.effective_chat
    message = update.effective_message
    user = update.effective_user
    thread = message.message_thread_id if message is not None and message.is_topic_message \
        else None
    return InboxItem(update_id=update.update_id, chat_id=chat.id if chat else None,
                     thread_id=thread, user_id=user.id if user else None,
                     payload=update.to_dict() if payload is None else payload,
                     status="received")


class Poller:
    """getUpdates → commit the batch → dispatch what is new; the offset moves only after the
    commit. Updates that share an order key (one conversation's messages) are handled one after
    another in the order Telegram gave them; the rest concurrently."""

    def __init__(self, bot: Bot, *, store: Store, dispatch: Dispatch, order_key: OrderKey,
                 allowed_updates: list[str], timeout: int = POLL_TIMEOUT_S,
                 conflict_give_up_s: float | None = None, secrets: list[str] | None = None,
                 warm_up: Callable[[], None] | None = None, crowd: int = CROWD,
                 sent: Sent | None = None) -> None:
        self.bot = bot
        self._sent = sent
        """Where the batch's updates are as Telegram sent them, stored as they came; without it
        (or for an update it lacks) each is rebuilt from its object."""
        self._warm_up = warm_up
        """Called once, with the first update handled: what only updates need (the model
        client's SDK) starts loading then, not at start-up."""
        self.secrets = [s for s in secrets or [] if s]
        self.store = store
        self.dispatch = dispatch
        self.order_key = order_key
        self.allowed_updates = allowed_updates
        self.timeout = timeout
        self.conflict_give_up_s = CONFLICT_GIVE_UP_S if conflict_give_up_s is None \
            else conflict_give_up_s
        self.tasks: set[asyncio.Task[None]] = set()
        self.crowd = crowd
        self.crowded = asyncio.Event()
        """Set when ``crowd`` or more updates are being handled at once (a burst); whoever waits
        for it clears it once the burst is over. Nothing needs to wake on a clock to notice."""
        self._tails: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self.fatal: BaseException | None = None
        """Set when polling stopped for good (a rejected token, a lasting 409 Conflict): the app
        should exit."""
        self.stopped = asyncio.Event()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="keel-poller")

    async def stop(self) -> None:
        """Stop asking for updates. An unconfirmed batch in flight is redelivered next start."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None

    async def _run(self) -> None:
        offset: int | None = None
        failures = 0
        conflict_since: float | None = None
        webhook_removed = False
        try:
            while True:
                try:
                    updates = await self.bot.get_updates(
                        offset=offset, timeout=self.timeout, allowed_updates=self.allowed_updates,
                        read_timeout=self.timeout + 10)
                except (InvalidToken, Forbidden) as exc:
                    log.error("Telegram refused the bot token (%s); stopping", type(exc).__name__)
                    self.fatal = exc
                    return
                except Conflict as exc:
                    if "webhook" in str(exc).lower() and not webhook_removed:
                        # a webhook left set (a webhook deployment went back to polling): remove
                        # it, keeping the updates Telegram holds, and ask again at once. Only
                        # here, not at every start: polling starts without the extra round trip.
                        webhook_removed = True
                        with contextlib.suppress(TelegramError):  # else: the 409 path below
                            await self.bot.delete_webhook(drop_pending_updates=False)
                            log.warning("a webhook was set for this bot; keel polls, so it "
                                        "removed it (updates waiting for it are kept). Set "
                                        "KEEL_WEBHOOK_URL to use a webhook.")
                            continue
                    failures += 1
                    now = asyncio.get_running_loop().time()
                    if conflict_since is None:  # one line for the whole episode, not one a poll
                        conflict_since = now
                        log.warning("another process is receiving this bot's updates (Telegram "
                                    "answered 409 Conflict: a second `keel run` or a webhook); "
                                    "retrying for up to %.0f s, then stopping", self.conflict_give_up_s)
                    elif now - conflict_since >= self.conflict_give_up_s:
                        self.fatal = exc
                        return
                    await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
                    continue
                except (TimedOut, NetworkError) as exc:
                    failures += 1
                    log.warning("getUpdates failed (%s); retrying", exc)
                    await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S)) - 1])
                    continue
                failures = 0
                if conflict_since is not None:
                    conflict_since = None
                    log.info("receiving this bot's updates again (the other process stopped)")
                if not updates:
                    continue
                sent = self._sent_by_id()
                cleaned = [scrubbed(u, self.secrets, sent.get(u.update_id)) for u in updates]
                updates = tuple(u for u, _ in cleaned)
                try:
                    fresh = await self.store([inbox_item(u, payload) for u, payload in cleaned])
                except Exception:
                    # not stored: the offset stays, Telegram sends the batch again
                    log.exception("could not store %d update(s); asking again", len(updates))
                    await asyncio.sleep(BACKOFF_S[0])
                    continue
                offset = updates[-1].update_id + 1  # confirmed by the next getUpdates
                for update in updates:
                    if update.update_id in fresh:
                        self.submit(update)
        finally:
            self.stopped.set()

    def _sent_by_id(self) -> dict[int, dict[str, Any]]:
        if self._sent is None:
            return {}
        return {item["update_id"]: item for item in self._sent()
                if isinstance(item, dict) and isinstance(item.get("update_id"), int)}

    def submit(self, update: Update) -> asyncio.Task[None]:
        """Handle a stored update (fresh, or found unfinished at start-up)."""
        if self._warm_up is not None:
            warm_up, self._warm_up = self._warm_up, None
            try:
                warm_up()
            except Exception:  # an optimisation only: the first call loads what it needs
                log.exception("warming up for the first update failed")
        key = self.order_key(update)
        previous = self._tails.get(key) if key is not None else None
        task = asyncio.create_task(self._handle(update, previous),
                                   name=f"update {update.update_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if len(self.tasks) >= self.crowd:
            self.crowded.set()
        if key is not None:
            self._tails[key] = task

            def forget(t: asyncio.Task[None], key: tuple[int, int] = key) -> None:
                if self._tails.get(key) is t:
                    del self._tails[key]

            task.add_done_callback(forget)
        return task

    async def _handle(self, update: Update, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            await self.dispatch(update)
        except Exception:
            log.exception("update %s could not be handled", update.update_id)

    async def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for updates being handled, then cancel the rest (their stored
        requests are finished by recovery at the next start). Returns how many were cancelled."""
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)
