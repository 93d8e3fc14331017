"""The fake Telegram server against the real python-telegram-bot client, over HTTP.

Each test proves one thing PTB does with Telegram works the same against the fake: shapes it
parses, errors it maps to exceptions, long polling, uploads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters, Update
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.ext import (
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes.telegram import FakeTelegram, ManualClock, RequestRecord

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(20)]


@pytest_asyncio.fixture
async def bot(fake_telegram: FakeTelegram) -> AsyncIterator[Bot]:
    client = Bot(
        fake_telegram.token,
        base_url=fake_telegram.base_url,
        base_file_url=fake_telegram.base_file_url,
    )
    async with client:  # initialize() calls getMe
        yield client


def keyboard(*pairs: tuple[str, str]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(t, callback_data=d)] for t, d in pairs])


async def test_get_me_and_token_errors(fake_telegram: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (fake_telegram.bot.id, "keel_test_bot", True)
    assert me.can_read_all_group_messages is False  # privacy mode, Telegram's default

    with pytest.raises(EndPointNotFound):  # 404 "Not Found: method not found"
        await bot.do_api_request("noSuchMethod")
    assert fake_telegram.calls("noSuchMethod")[0].response == {
        "ok": False,
        "error_code": 404,
        "description": "Not Found: method not found",
    }

    stranger = Bot("123456789:AAwrongSecret", base_url=fake_telegram.base_url)
    with pytest.raises(InvalidToken):
        await stranger.get_me()
    assert fake_telegram.requests[-1].status == 401


async def test_application_long_polls_messages_and_callback_queries(
    fake_telegram: FakeTelegram,
) -> None:
    seen: list[str] = []

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        seen.append("start")
        await update.effective_message.reply_text(
            "Pick one", reply_markup=keyboard(("Yes", "ans:yes"), ("No", "ans:no"))
        )

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None and update.effective_message.text
        seen.append(update.effective_message.text)
        await update.effective_message.reply_text(f"echo: {update.effective_message.text}")

    async def pressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None and query.message is not None
        seen.append(f"pressed {query.data}")
        await query.answer("Noted")
        await query.edit_message_text(f"You chose {query.data}")

    application = (
        ApplicationBuilder()
        .token(fake_telegram.token)
        .base_url(fake_telegram.base_url)
        .base_file_url(fake_telegram.base_file_url)
        .build()
    )
    application.add_handler(CommandHandler("start", start))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    application.add_handler(CallbackQueryHandler(pressed))

    alice = fake_telegram.user("Alice", username="alice")
    chat = fake_telegram.private_chat(alice)
    async with application:
        # a long timeout: the poll must return as soon as an update arrives, not at the timeout
        await application.updater.start_polling(timeout=10, poll_interval=0)  # type: ignore[union-attr]
        await application.start()
        try:
            await fake_telegram.wait_for(lambda: fake_telegram.calls("getUpdates"), 5)
            began = time.monotonic()
            fake_telegram.inject_text(chat, "/start")
            question = await fake_telegram.next_bot_message(chat.id)
            assert time.monotonic() - began < 3
            assert question["text"] == "Pick one"

            update = fake_telegram.press_button(question, text="No")
            edited = await fake_telegram.wait_for(
                lambda: next(
                    (m for m in fake_telegram.sent(chat.id) if m["text"].startswith("You chose")),
                    None,
                )
            )
            assert edited["text"] == "You chose ans:no" and "edit_date" in edited
            assert "reply_markup" not in edited  # editing text without markup drops the keyboard
            answer = fake_telegram.answered(update["callback_query"]["id"])
            assert answer is not None and answer["text"] == "Noted"

            fake_telegram.inject_text(chat, "hello there")
            assert (await fake_telegram.next_bot_message(chat.id))["text"] == "echo: hello there"
        finally:
            await application.updater.stop()  # type: ignore[union-attr]
            await application.stop()
    assert seen == ["start", "pressed ans:no", "hello there"]
    # on stop PTB confirms what it processed; nothing is handed out again
    assert fake_telegram.calls("getUpdates")[-1].response == {"ok": True, "result": []}


async def test_html_and_markdown_v2_become_text_and_entities(
    fake_telegram: FakeTelegram, bot: Bot
) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    message = await bot.send_message(
        chat.id,
        '<b>Done</b> – see <a href="https://example.com">the report</a> 😀 <code>x=1</code>',
        parse_mode=ParseMode.HTML,
    )
    assert message.text == "Done – see the report 😀 x=1"
    assert [(e.type, e.offset, e.length) for e in message.entities] == [
        ("bold", 0, 4),
        ("text_link", 11, 10),
        ("code", 25, 3),
    ]
    assert message.entities[1].url == "https://example.com/"  # Telegram normalises links
    assert message.parse_entity(message.entities[2]) == "x=1"  # UTF-16 offsets past the emoji

    message = await bot.send_message(
        chat.id,
        "*Bold* _it_ ||secret|| v1\\.0\n```python\nprint(1)\n```",
        parse_mode=ParseMode.MARKDOWN_V2,
    )
    assert message.text == "Bold it secret v1.0\nprint(1)"
    assert [(e.type, e.offset, e.length, e.language) for e in message.entities] == [
        ("bold", 0, 4, None),
        ("italic", 5, 2, None),
        ("spoiler", 8, 6, None),
        ("pre", 20, 8, "python"),
    ]

    plain = await bot.send_message(chat.id, "  /help or https://keel.dev #ops  \n")
    assert plain.text == "/help or https://keel.dev #ops"  # trimmed; entities detected
    assert [e.type for e in plain.entities] == ["bot_command", "url", "hashtag"]
    assert len(fake_telegram.sent(chat.id)) == 3


async def test_text_limits(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    with pytest.raises(BadRequest) as too_long:
        await bot.send_message(chat.id, "a" * 4097)
    assert str(too_long.value) == "Message is too long"  # PTB: "Bad Request: message is too long"
    assert fake_telegram.requests[-1].response == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: message is too long",
    }
    await bot.send_message(chat.id, "a" * 4096)
    # the limit counts characters, not UTF-16 units: 4096 emoji (8192 units) are accepted
    await bot.send_message(chat.id, "😀" * 4096)
    # markup does not count; the text after parsing does
    await bot.send_message(chat.id, "<b>" + "a" * 4096 + "</b>", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match="Message text is empty"):
        await bot.send_message(chat.id, "")
    with pytest.raises(BadRequest, match="Text must be non-empty"):
        await bot.send_message(chat.id, " \n ")


async def test_parse_errors_are_telegrams(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    with pytest.raises(BadRequest, match="Can't parse entities") as html_error:
        await bot.send_message(chat.id, "Line one<br>Line two", parse_mode=ParseMode.HTML)
    assert fake_telegram.requests[-1].response["description"] == (  # type: ignore[index]
        'Bad Request: can\'t parse entities: Unsupported start tag "br" at byte offset 8'
    )
    assert "unsupported start tag" in str(html_error.value)  # PTB lower-cases after the first word
    with pytest.raises(BadRequest):
        await bot.send_message(chat.id, "<b>bold", parse_mode=ParseMode.HTML)
    assert fake_telegram.requests[-1].response["description"] == (  # type: ignore[index]
        "Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"b\""
    )
    with pytest.raises(BadRequest, match="Can't parse entities"):
        await bot.send_message(chat.id, "Version 1.0", parse_mode=ParseMode.MARKDOWN_V2)
    assert fake_telegram.requests[-1].response["description"] == (  # type: ignore[index]
        "Bad Request: can't parse entities: Character '.' is reserved and must be escaped with "
        "the preceding '\\'"
    )
    with pytest.raises(BadRequest, match="Chat not found"):
        await bot.send_message(-100123, "hi")
    assert fake_telegram.sent() == []


async def test_retry_after_and_flood_control(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    fake_telegram.fail_next("sendMessage", status=429, retry_after=7)
    with pytest.raises(RetryAfter) as flood:
        await bot.send_message(chat.id, "first")
    assert flood.value.retry_after in (7, __import__("datetime").timedelta(seconds=7))
    assert fake_telegram.requests[-1].response == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    await bot.send_message(chat.id, "second")  # one-shot

    clock = ManualClock()
    fake_telegram.enable_flood_control(private=(1, 1.0), clock=clock)
    await bot.send_message(chat.id, "a")
    with pytest.raises(RetryAfter):
        await bot.send_message(chat.id, "b")
    clock.advance(1.0)
    await bot.send_message(chat.id, "c")
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == ["second", "a", "c"]


async def test_lost_answers_and_server_errors(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    fake_telegram.fail_next("sendMessage", drop_connection=True)
    with pytest.raises(NetworkError):
        await bot.send_message(chat.id, "never sent")
    assert fake_telegram.sent(chat.id) == []

    fake_telegram.fail_next("sendMessage", drop_connection=True, after_processing=True)
    with pytest.raises(NetworkError):
        await bot.send_message(chat.id, "sent, but the answer was lost")
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == ["sent, but the answer was lost"]

    fake_telegram.fail_next("sendMessage", status=502)
    with pytest.raises(NetworkError, match="Bad Gateway"):
        await bot.send_message(chat.id, "x")

    fake_telegram.block_bot(chat.user)  # type: ignore[arg-type]
    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_message(chat.id, "x")


async def test_a_late_answer_after_processing(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    fake_telegram.slow_next("sendMessage", delay_s=2.0)
    with pytest.raises(TimedOut):  # the client's read timeout is shorter than the delay
        await bot.send_message(chat.id, "accepted, answered too late", read_timeout=0.2)
    # Telegram already has it: the client cannot tell a lost request from a lost answer
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == ["accepted, answered too late"]
    late = fake_telegram.calls("sendMessage")[-1]
    assert (late.fault, late.processed) == ("late", True)
    await fake_telegram.wait_for(lambda: late.client_gone)
    assert late.response is None  # the answer never reached anyone

    # a patient client gets the answer, late
    fake_telegram.slow_next("sendMessage", delay_s=0.3)
    began = time.monotonic()
    message = await bot.send_message(chat.id, "slow but fine", read_timeout=5)
    assert time.monotonic() - began >= 0.3
    assert message.text == "slow but fine" and fake_telegram.calls("sendMessage")[-1].ok

    began = time.monotonic()
    await bot.send_message(chat.id, "one-shot")
    assert time.monotonic() - began < 0.3
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == [
        "accepted, answered too late", "slow but fine", "one-shot"]


async def test_a_hang_before_processing(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    fake_telegram.hang_next("sendMessage")
    sending = asyncio.create_task(bot.send_message(chat.id, "held", read_timeout=10))
    held = await fake_telegram.wait_for(lambda: fake_telegram.hung)
    assert held[0].params["text"] == "held" and held[0].fault == "hang"
    assert fake_telegram.sent(chat.id) == []  # nothing is done while held
    assert fake_telegram.release_hung() == 1
    assert (await sending).text == "held"
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == ["held"]

    # the client gives up while the request is held: it is never processed, released or not
    fake_telegram.hang_next("sendMessage")
    with pytest.raises(TimedOut):
        await bot.send_message(chat.id, "given up", read_timeout=0.2)
    given_up = fake_telegram.calls("sendMessage")[-1]
    await fake_telegram.wait_for(lambda: given_up.client_gone)
    assert (fake_telegram.hung, fake_telegram.release_hung()) == ([], 0)
    assert not given_up.processed and given_up.response is None
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == ["held"]

    # a hang for N seconds, then the request goes through for a client still waiting
    fake_telegram.hang_next("sendMessage", seconds=0.3)
    began = time.monotonic()
    assert (await bot.send_message(chat.id, "after a pause", read_timeout=5)).text == "after a pause"
    assert time.monotonic() - began >= 0.3


async def test_any_method_fails_with_star(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    fake_telegram.fail_next("*", status=502, times=2)
    with pytest.raises(NetworkError, match="Bad Gateway"):
        await bot.get_me()
    with pytest.raises(NetworkError, match="Bad Gateway"):
        await bot.send_chat_action(chat.id, "typing")
    assert await bot.send_chat_action(chat.id, "typing") is True
    assert [r.status for r in fake_telegram.requests[-3:]] == [502, 502, 200]
    assert fake_telegram.chat_actions(chat.id) == [fake_telegram.chat_action_log[-1]]

    fake_telegram.hang_next("*")
    polling = asyncio.create_task(bot.get_updates(timeout=0, read_timeout=10))
    await fake_telegram.wait_for(lambda: fake_telegram.hung)
    update = fake_telegram.inject_text(chat, "arrived while the poll was held")
    fake_telegram.release_hung()
    assert [u.update_id for u in await polling] == [update["update_id"]]


async def test_on_answer_sees_each_answer_as_it_leaves(
    fake_telegram: FakeTelegram, bot: Bot
) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    batches: list[list[int]] = []

    def on_answer(record: RequestRecord) -> None:
        if record.method == "getUpdates" and record.response and record.response["result"]:
            batches.append([u["update_id"] for u in record.response["result"]])

    fake_telegram.on_answer = on_answer
    first = fake_telegram.inject_text(chat, "one")
    second = fake_telegram.inject_text(chat, "two")
    await bot.get_updates(timeout=0)
    await bot.get_updates(offset=second["update_id"] + 1, timeout=0)  # empty: not a batch
    assert batches == [[first["update_id"], second["update_id"]]]


async def test_stop_does_not_wait_for_held_or_late_requests() -> None:
    fake = FakeTelegram()
    await fake.start()
    client = Bot(fake.token, base_url=fake.base_url)
    chat = fake.private_chat(fake.user())
    fake.hang_next("getMe")
    fake.slow_next("sendMessage", delay_s=60)
    held = asyncio.create_task(client.get_me(read_timeout=30))
    late = asyncio.create_task(client.send_message(chat.id, "late", read_timeout=30))
    await fake.wait_for(lambda: fake.hung and fake.sent(chat.id))
    began = time.monotonic()
    await fake.stop()
    assert time.monotonic() - began < 0.9  # under aiohttp's own shutdown_timeout
    for task in (held, late):
        with pytest.raises(NetworkError):
            await task
    assert not fake.calls("getMe")[0].processed  # a held request ends unprocessed


async def test_inline_keyboards(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    with pytest.raises(BadRequest, match="Button_data_invalid"):  # PTB: "BUTTON_DATA_INVALID"
        await bot.send_message(chat.id, "Pick", reply_markup=keyboard(("Go", "x" * 65)))
    message = await bot.send_message(chat.id, "Pick", reply_markup=keyboard(("Go", "x" * 64)))
    assert message.reply_markup == keyboard(("Go", "x" * 64))

    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_reply_markup(
            chat.id, message.message_id, reply_markup=keyboard(("Go", "x" * 64))
        )
    await bot.edit_message_reply_markup(chat.id, message.message_id, reply_markup=None)
    assert "reply_markup" not in fake_telegram.sent(chat.id)[-1]

    update = fake_telegram.inject_text(chat, "hi")
    assert update["message"]["text"] == "hi"
    with pytest.raises(AssertionError, match="no callback button"):
        fake_telegram.press_button(fake_telegram.sent(chat.id)[-1], text="Go")

    again = await bot.send_message(chat.id, "Again?", reply_markup=keyboard(("Yes", "y")))
    query = fake_telegram.press_button(again.to_dict(), data="y")["callback_query"]
    assert query["message"]["message_id"] == again.message_id and query["data"] == "y"
    assert await bot.answer_callback_query(query["id"], text="ok")
    with pytest.raises(BadRequest, match="Query is too old"):
        await bot.answer_callback_query(query["id"])
    with pytest.raises(BadRequest, match="Query is too old"):
        await bot.answer_callback_query("12345")
    late = fake_telegram.press_button(again.to_dict(), text="Yes")["callback_query"]
    fake_telegram.expire_callback_queries()
    with pytest.raises(BadRequest, match="Query is too old"):
        await bot.answer_callback_query(late["id"])


async def test_send_document_multipart(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    message = await bot.send_document(
        chat.id,
        document=b"trace line 1\n",
        filename="trace.jsonl",
        caption="<i>trace</i>",
        parse_mode=ParseMode.HTML,
    )
    assert message.document is not None and message.document.file_name == "trace.jsonl"
    assert message.caption == "trace" and message.caption_entities[0].type == "italic"
    [sent] = fake_telegram.documents(chat.id)
    assert (sent["filename"], sent["data"]) == ("trace.jsonl", b"trace line 1\n")
    assert fake_telegram.calls("sendDocument")[0].files["document"][0] == "trace.jsonl"
    # the file can be fetched back the way PTB downloads files
    data = await (await bot.get_file(message.document.file_id)).download_as_bytearray()
    assert bytes(data) == b"trace line 1\n"


async def test_message_drafts_only_in_private_chats(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    assert await bot.send_message_draft(chat.id, draft_id=7, text="Thinking")
    assert await bot.send_message_draft(
        chat.id, draft_id=7, text="<b>Thinking</b> more", parse_mode=ParseMode.HTML
    )
    assert [d["text"] for d in fake_telegram.drafts(chat.id)] == ["Thinking", "Thinking more"]
    assert fake_telegram.sent(chat.id) == []  # drafts are not messages
    await bot.send_message(chat.id, "Final answer")
    assert fake_telegram.current_draft(chat.id) is None

    group = fake_telegram.group("Team")
    with pytest.raises(BadRequest, match="Textdraft_peer_invalid"):
        await bot.send_message_draft(group.id, draft_id=1, text="x")


async def test_forum_topics(fake_telegram: FakeTelegram, bot: Bot) -> None:
    forum = fake_telegram.forum("Agents")
    topic = await bot.create_forum_topic(forum.id, "Daily briefing")
    assert topic.name == "Daily briefing" and topic.message_thread_id > 0

    message = await bot.send_message(
        forum.id, "Briefing", message_thread_id=topic.message_thread_id
    )
    assert message.is_topic_message and message.message_thread_id == topic.message_thread_id
    # in a topic every message replies to the topic's creation message, as in Telegram
    assert message.reply_to_message is not None
    assert message.reply_to_message.forum_topic_created is not None
    assert [m["text"] for m in fake_telegram.sent(forum.id, topic.message_thread_id)] == [
        "Briefing"
    ]

    with pytest.raises(BadRequest, match="Message thread not found"):
        await bot.send_message(forum.id, "x", message_thread_id=999)
    with pytest.raises(BadRequest, match="The chat is not a forum"):
        await bot.create_forum_topic(fake_telegram.supergroup("Plain").id, "x")

    alice = fake_telegram.user("Alice")
    reply = fake_telegram.inject_reply(fake_telegram.sent(forum.id)[-1], "ok", user=alice)
    assert reply["message"]["message_thread_id"] == topic.message_thread_id
    answer = await bot.send_message(
        forum.id, "thanks", reply_parameters=ReplyParameters(reply["message"]["message_id"])
    )
    assert answer.message_thread_id == topic.message_thread_id  # replies stay in the topic


async def test_get_updates_offsets_and_long_polling(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    first = fake_telegram.inject_text(chat, "one")
    second = fake_telegram.inject_text(chat, "two")
    assert second["update_id"] > first["update_id"]

    updates = await bot.get_updates()
    assert [u.message.text for u in updates] == ["one", "two"]  # type: ignore[union-attr]
    assert len(await bot.get_updates()) == 2  # not confirmed yet
    assert await bot.get_updates(offset=second["update_id"] + 1) == ()  # confirmed, forgotten
    assert await bot.get_updates(offset=first["update_id"]) == ()  # gone for good

    # a long poll returns as soon as an update arrives
    poll = asyncio.create_task(bot.get_updates(offset=second["update_id"] + 1, timeout=10))
    await fake_telegram.wait_for(lambda: len(fake_telegram.calls("getUpdates")) == 5)
    began = time.monotonic()
    third = fake_telegram.inject_text(chat, "three")
    updates = await poll
    assert time.monotonic() - began < 2
    assert [u.update_id for u in updates] == [third["update_id"]]

    # a second bot instance polling ends the first one's long poll with 409, as Telegram does
    poll = asyncio.create_task(bot.get_updates(offset=third["update_id"] + 1, timeout=5))
    await fake_telegram.wait_for(lambda: len(fake_telegram.calls("getUpdates")) == 6)
    async with Bot(fake_telegram.token, base_url=fake_telegram.base_url) as twin:
        await twin.get_updates(offset=third["update_id"] + 1)
    with pytest.raises(Conflict, match="terminated by other getUpdates request"):
        await poll

    # allowed_updates is remembered; updates of other kinds are never queued
    question = await bot.send_message(chat.id, "Q", reply_markup=keyboard(("A", "a")))
    await bot.get_updates(offset=third["update_id"] + 1, allowed_updates=["message"])
    press = fake_telegram.press_button(question.to_dict(), data="a")
    assert not fake_telegram.delivered(press)
    assert await bot.get_updates(offset=third["update_id"] + 1) == ()


async def test_group_privacy_mode(fake_telegram: FakeTelegram, bot: Bot) -> None:
    group = fake_telegram.group("Team")
    alice = fake_telegram.user("Alice")
    chatter = fake_telegram.inject_text(group, "lunch?", user=alice)
    mention = fake_telegram.inject_text(group, "what is our budget?", user=alice, mention_bot=True)
    command = fake_telegram.inject_text(group, "/status@keel_test_bot", user=alice)
    assert not fake_telegram.delivered(chatter)
    assert fake_telegram.delivered(mention) and fake_telegram.delivered(command)
    assert mention["message"]["entities"] == [{"offset": 0, "length": 14, "type": "mention"}]
    updates = await bot.get_updates()
    assert [u.message.text for u in updates] == [  # type: ignore[union-attr]
        "@keel_test_bot what is our budget?",
        "/status@keel_test_bot",
    ]

    mine = await bot.send_message(group.id, "Budget: $40")
    reply = fake_telegram.inject_reply(mine.to_dict(), "thanks", user=alice)
    assert fake_telegram.delivered(reply)  # replies to the bot reach it

    photo = fake_telegram.inject_photo(fake_telegram.private_chat(alice), caption="receipt")
    voice = fake_telegram.inject_voice(fake_telegram.private_chat(alice), duration=4)
    sticker = fake_telegram.inject_sticker(fake_telegram.private_chat(alice))
    document = fake_telegram.inject_document(fake_telegram.private_chat(alice), "a.csv", b"x,y")
    updates = await bot.get_updates(offset=updates[-1].update_id + 1)
    messages = [u.message for u in updates]
    assert len(messages) == 5 and updates[-1].update_id == document["update_id"]
    _reply, photo_msg, voice_msg, sticker_msg, document_msg = messages
    assert photo_msg and photo_msg.photo[-1].file_id == photo["message"]["photo"][-1]["file_id"]
    assert photo_msg.caption == "receipt"
    assert (
        voice_msg
        and voice_msg.voice
        and voice_msg.voice.file_id == (voice["message"]["voice"]["file_id"])
    )
    assert (
        sticker_msg
        and sticker_msg.sticker
        and sticker_msg.sticker.emoji == (sticker["message"]["sticker"]["emoji"])
    )
    assert document_msg and document_msg.document and document_msg.document.file_name == "a.csv"


async def test_set_my_commands_and_chat_actions(fake_telegram: FakeTelegram, bot: Bot) -> None:
    assert await bot.set_my_commands([("start", "Start"), ("status", "What runs now")])
    assert [c.command for c in await bot.get_my_commands()] == ["start", "status"]
    assert fake_telegram.commands()[1] == {"command": "status", "description": "What runs now"}
    with pytest.raises(BadRequest, match="Bot_command_invalid"):
        await bot.set_my_commands([("Start", "Start")])

    chat = fake_telegram.private_chat(fake_telegram.user())
    assert await bot.send_chat_action(chat.id, "typing")
    assert [a["action"] for a in fake_telegram.chat_actions(chat.id)] == ["typing"]
    with pytest.raises(BadRequest, match="Wrong parameter action in request"):
        await bot.send_chat_action(chat.id, "dancing")


async def test_next_bot_message_names_the_chat_on_timeout(fake_telegram: FakeTelegram) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    with pytest.raises(AssertionError, match=f"chat {chat.id}"):
        await fake_telegram.next_bot_message(chat.id, timeout=0.05)


async def test_raw_http_json_query_string_and_method_case(fake_telegram: FakeTelegram) -> None:
    """Other clients send JSON bodies or GET query strings; Telegram accepts all of them."""
    chat = fake_telegram.private_chat(fake_telegram.user())
    api = f"{fake_telegram.base_url}{fake_telegram.token}"
    async with aiohttp.ClientSession() as http:
        markup = {"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]}
        response = await http.post(f"{api}/SENDMESSAGE", json={
            "chat_id": chat.id, "text": "*hi*", "parse_mode": "MarkdownV2", "reply_markup": markup})  # fmt: skip
        body = await response.json()
        assert response.status == 200 and body["ok"] is True
        assert body["result"]["entities"] == [{"offset": 0, "length": 2, "type": "bold"}]
        assert body["result"]["reply_markup"] == markup

        response = await http.get(f"{api}/sendMessage", params={"chat_id": chat.id, "text": "q"})
        assert (await response.json())["result"]["text"] == "q"

        response = await http.post(f"{api}/sendMessage", json={"chat_id": chat.id})
        assert response.status == 400
        assert await response.json() == {
            "ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}  # fmt: skip

        response = await http.get(f"{fake_telegram.base_url}not-a-token/getMe")
        assert response.status == 404
    assert [m["text"] for m in fake_telegram.sent(chat.id)] == ["hi", "q"]


async def test_edits_and_deletes(fake_telegram: FakeTelegram, bot: Bot) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    said = fake_telegram.inject_text(chat, "meet at 5")
    edited = fake_telegram.inject_edit(said["message"], "meet at 6")
    [first, second] = await bot.get_updates()
    assert first.message and first.message.text == "meet at 5"
    assert second.edited_message and second.edited_message.text == "meet at 6"
    assert second.edited_message.edit_date is not None
    assert edited["edited_message"]["message_id"] == said["message"]["message_id"]

    mine = await bot.send_message(chat.id, "draft <b>one</b>", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_text("draft <b>one</b>", chat.id, mine.message_id,
                                    parse_mode=ParseMode.HTML)  # fmt: skip
    changed = await bot.edit_message_text("final", chat.id, mine.message_id)
    assert isinstance(changed, type(mine)) and changed.text == "final"
    with pytest.raises(BadRequest, match="Message to edit not found"):
        await bot.edit_message_text("x", chat.id, 9999)
    with pytest.raises(BadRequest, match="Message can't be edited"):
        await bot.edit_message_text("x", chat.id, said["message"]["message_id"])

    assert await bot.delete_message(chat.id, mine.message_id)
    assert fake_telegram.sent(chat.id) == [] and fake_telegram.deleted[0]["text"] == "final"
    with pytest.raises(BadRequest, match="Message to delete not found"):
        await bot.delete_message(chat.id, mine.message_id)


async def test_application_answers_inside_a_forum_topic(fake_telegram: FakeTelegram) -> None:
    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text(f"got {update.effective_message.text}")

    application = ApplicationBuilder().token(fake_telegram.token)
    application = application.base_url(fake_telegram.base_url).build()
    application.add_handler(MessageHandler(filters.TEXT, echo))
    forum = fake_telegram.forum("Agents")
    alice = fake_telegram.user("Alice")
    topic = fake_telegram.create_topic(forum, "Ops", by=alice)  # the bot sees the service message
    async with application:
        await application.updater.start_polling(timeout=10)  # type: ignore[union-attr]
        await application.start()
        try:
            said = fake_telegram.inject_text(forum, "status?", user=alice, thread=topic)
            reply = await fake_telegram.next_bot_message(forum.id, topic.message_thread_id)
        finally:
            await application.updater.stop()  # type: ignore[union-attr]
            await application.stop()
    # PTB keeps the topic and quotes the user's message in groups
    assert reply["text"] == "got status?" and reply["is_topic_message"] is True
    assert reply["reply_to_message"]["message_id"] == said["message"]["message_id"]
    assert said["message"]["reply_to_message"]["forum_topic_created"]["name"] == "Ops"


async def test_text_mention_links_carry_the_user(fake_telegram: FakeTelegram, bot: Bot) -> None:
    alice = fake_telegram.user("Alice", username="alice")
    chat = fake_telegram.private_chat(alice)
    message = await bot.send_message(
        chat.id, f'<a href="tg://user?id={alice.id}">Alice</a>, approve?', parse_mode="HTML"
    )
    [mention] = message.entities
    assert mention.type == "text_mention" and mention.user is not None
    assert (mention.user.id, mention.user.first_name) == (alice.id, "Alice")


# Parsing as TDLib parses (the fake's parser was checked against TDLib's own test vectors).
PARSED = [
    ("<i>é</i> <s>x</s><u>y</u>", "HTML", "é xy",
     [("italic", 0, 1), ("strikethrough", 2, 1), ("underline", 3, 1)]),
    ("<b>a</b><b>b</b>", "HTML", "ab", [("bold", 0, 2)]),  # touching entities merge
    ("<b>a<code>b</code></b>", "HTML", "ab", [("bold", 0, 1), ("code", 1, 1)]),
    ("<blockquote expandable>q</blockquote>", "HTML", "q", [("expandable_blockquote", 0, 1)]),
    ("x &lt;&amp;&gt; &nbsp; &#9731;", "HTML", "x <&> &nbsp; ☃", []),
    ("<a>site.org</a>", "HTML", "site.org", [("text_link", 0, 8)]),
    ("__u__ ~s~ `c` [t](tg://user?id=5)", "MarkdownV2", "u s c t",
     [("underline", 0, 1), ("strikethrough", 2, 1), ("code", 4, 1), ("text_mention", 6, 1)]),
    (">one\n>two||\nthree", "MarkdownV2", "one\ntwo\nthree", [("expandable_blockquote", 0, 8)]),
    ("*a* _b_ `c` [d](http://e.org)", "Markdown", "a b c d",
     [("bold", 0, 1), ("italic", 2, 1), ("code", 4, 1), ("text_link", 6, 1)]),
    ("ping @keel_dev /run@keel_test_bot $TON #x1", None, "ping @keel_dev /run@keel_test_bot $TON #x1",
     [("mention", 5, 9), ("bot_command", 15, 18), ("cashtag", 34, 4), ("hashtag", 39, 3)]),
]  # fmt: skip
REFUSED = [
    ("<p>x</p>", "HTML", 'Unsupported start tag "p" at byte offset 0'),
    ("é<b>x</i>", "HTML", 'Unmatched end tag at byte offset 6, expected "</b>", found "</i>"'),
    ("<span>x</span>", "HTML", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
    ('<a href=x">', "HTML", "Unexpected end of name token at byte offset 8"),
    ("2+2", "MarkdownV2", "Character '+' is reserved and must be escaped with the preceding '\\'"),
    ("é *x", "MarkdownV2", "Can't find end of Bold entity at byte offset 3"),
    ("[x](y", "MarkdownV2", "Can't find end of a URL at byte offset 4"),
    ("_x", "Markdown", "Can't find end of the entity starting at byte offset 0"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "mode", "plain", "entities"), PARSED)
async def test_entities_parse_like_telegram(
    fake_telegram: FakeTelegram, bot: Bot, text: str, mode: str | None, plain: str,
    entities: list[tuple[str, int, int]],
) -> None:  # fmt: skip
    chat = fake_telegram.private_chat(fake_telegram.user(id=5))
    message = await bot.send_message(chat.id, text, parse_mode=mode)
    assert message.text == plain
    assert [(e.type, e.offset, e.length) for e in message.entities] == entities


@pytest.mark.parametrize(("text", "mode", "reason"), REFUSED)
async def test_markup_errors_like_telegram(
    fake_telegram: FakeTelegram, bot: Bot, text: str, mode: str, reason: str
) -> None:
    chat = fake_telegram.private_chat(fake_telegram.user())
    with pytest.raises(BadRequest, match="Can't parse entities"):
        await bot.send_message(chat.id, text, parse_mode=mode)
    description = fake_telegram.requests[-1].response["description"]  # type: ignore[index]
    assert description.startswith(f"Bad Request: can't parse entities: {reason}")
