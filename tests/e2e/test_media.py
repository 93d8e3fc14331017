"""Files in a chat (issue 19): what the person sends reaches the model as the API's own blocks, what
keel cannot read gets one line, and what an agent makes comes back as a document.

The real bot (python-telegram-bot, the anthropic SDK) against both fakes; the fake Anthropic checks
image and document blocks as the real API does (base64, media type, the bytes match it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest
import pytest_asyncio

from agents.config import load_settings
from agents.transcribe import NOT_CONFIGURED
from tests.e2e.conftest import BotWorld, bot_env, quiet_hour, start_bot, stop_bot
from tests.fakes.anthropic import FakeAnthropic, RecordedRequest, Reply, reply, tool_use
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.e2e

PHOTO = b"\xff\xd8\xff\xe0 a photo of a red bicycle"
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
       b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")
CONFIG = """
default_agent = "filer"

[agents.filer]
description = "Makes files for the person."
system = "You make files."
tools = ["send_file"]
"""

World = Callable[..., Any]


@pytest_asyncio.fixture
async def make_world(fake_telegram: FakeTelegram, fake_anthropic: FakeAnthropic,
                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[World]:
    """A running bot with extra settings (environment variables) and keel.toml."""
    worlds: list[BotWorld] = []

    async def make(**env: str) -> BotWorld:
        path = tmp_path / "keel.toml"
        path.write_text(CONFIG, "utf-8")
        bot_env(monkeypatch, fake_telegram, fake_anthropic, KEEL_CONFIG=str(path), **env)
        world = BotWorld(telegram=fake_telegram, anthropic=fake_anthropic,
                         settings=load_settings())
        world.route_to = lambda text: "filer"
        world.app = await start_bot(world.settings)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        await stop_bot(world.app)
    assert not fake_anthropic.unexpected, [r.note for r in fake_anthropic.unexpected]


def blocks(req: RecordedRequest, index: int = -1) -> list[dict[str, Any]]:
    content = req.body["messages"][index]["content"]  # cache markers left out
    return [{k: v for k, v in b.items() if k != "cache_control"} for b in content]


def of_type(req: RecordedRequest, kind: str) -> list[dict[str, Any]]:
    return [b for m in req.body["messages"] if isinstance(m["content"], list)
            for b in m["content"] if b.get("type") == kind]


async def test_a_photo_with_a_caption_and_a_pdf_reach_the_model_as_image_and_document_blocks(
        make_world: World, tmp_path: Path) -> None:
    world = await make_world()
    tg, chat = world.telegram, world.alice_chat
    world.answer(lambda req: reply("A red bicycle." if len(of_type(req, "document")) == 0
                                   else "The PDF has one empty page."))

    tg.inject_photo(chat, caption="What is in this picture?", data=PHOTO)
    assert (await tg.next_bot_message(chat.id))["text"] == "A red bicycle."
    first = world.agent_requests[-1]
    image, caption = blocks(first)
    assert image["type"] == "image"
    assert image["source"]["type"] == "base64"
    assert image["source"]["media_type"] == "image/jpeg"
    assert base64.b64decode(image["source"]["data"]) == PHOTO
    assert caption == {"type": "text", "text": "What is in this picture?"}

    tg.inject_document(chat, "report.pdf", PDF, mime_type="application/pdf",
                       caption="Summarise this")
    assert (await tg.next_bot_message(chat.id))["text"] == "The PDF has one empty page."
    second = world.agent_requests[-1]
    document, text = blocks(second)
    assert document["type"] == "document" and document["title"] == "report.pdf"
    assert document["source"]["media_type"] == "application/pdf"
    assert base64.b64decode(document["source"]["data"]) == PDF
    assert text["text"] == "Summarise this"
    # the photo is still in the conversation, sent again from the local copy ...
    assert [base64.b64decode(b["source"]["data"]) for b in of_type(second, "image")] == [PHOTO]
    # ... and each file was downloaded from Telegram once
    assert len(tg.downloads) == 2
    assert len(tg.calls("getFile")) == 2

    # history and traces hold references to the local copies, not the bytes
    with sqlite3.connect(tmp_path / "data" / "keel.sqlite3") as conn:
        stored = " ".join(r[0] for r in conn.execute("SELECT content FROM messages"))
    assert stored.count('"keel_file"') == 2
    assert base64.b64encode(PHOTO).decode() not in stored
    traces = " ".join(p.read_text("utf-8") for p in (tmp_path / "data" / "traces").rglob("*.jsonl"))
    assert '"keel_file"' in traces and base64.b64encode(PDF).decode() not in traces
    copies = [p for p in (tmp_path / "data" / "files").rglob("*") if p.is_file()]
    assert sorted(p.read_bytes() for p in copies) == sorted([PHOTO, PDF])


async def test_a_file_over_the_limit_gets_one_line_and_is_never_downloaded(
        make_world: World) -> None:
    world = await make_world(KEEL_MAX_FILE_BYTES="5000")
    tg, chat = world.telegram, world.alice_chat

    tg.inject_document(chat, "big.pdf", PDF + b"%" * 6000, mime_type="application/pdf")
    answer = (await tg.next_bot_message(chat.id))["text"]
    assert answer == ("The file “big.pdf” (0.0 MB) is too large for me: I read files up to "
                      "0.0 MB. Please send a smaller one.")
    assert tg.calls("getFile") == [] and tg.downloads == []
    assert world.anthropic.message_requests == []  # no router, no agent


async def test_stickers_and_voice_notes_without_a_transcriber_get_one_line(
        make_world: World) -> None:
    world = await make_world()
    tg, chat = world.telegram, world.alice_chat

    tg.inject_sticker(chat)
    assert (await tg.next_bot_message(chat.id))["text"].startswith("I can't read stickers — I "
                                                                   "read photos, images, PDFs")
    tg.inject_voice(chat)
    assert (await tg.next_bot_message(chat.id))["text"] == NOT_CONFIGURED
    tg.inject_document(chat, "song.mp3", b"ID3 music", mime_type="audio/mpeg")
    assert (await tg.next_bot_message(chat.id))["text"] == (
        "I can't read the file “song.mp3” — I read photos, images, PDFs and text files (txt, md, "
        "csv, json, code).")
    assert tg.downloads == [] and world.anthropic.message_requests == []


async def test_a_voice_note_is_transcribed_by_the_configured_command(
        make_world: World, tmp_path: Path) -> None:
    script = tmp_path / "transcribe.py"
    script.write_text("import sys\n"
                      "data = open(sys.argv[1], 'rb').read()\n"
                      "print('remind me to call mum' if data == b'OggS fake voice' else 'other')\n")
    world = await make_world(KEEL_TRANSCRIBER="command",
                             KEEL_TRANSCRIBER_COMMAND=f"{sys.executable} {script}")
    world.answer(lambda req: reply("I will."))
    world.telegram.inject_voice(world.alice_chat)
    assert (await world.telegram.next_bot_message(world.alice_chat.id))["text"] == "I will."
    texts = [b["text"] for b in blocks(world.agent_requests[-1])]
    assert texts[0] == "[Voice note, transcribed]\nremind me to call mum"


async def test_an_album_is_one_message(make_world: World) -> None:
    world = await make_world()
    tg, chat = world.telegram, world.alice_chat
    world.answer(lambda req: reply(f"{len(of_type(req, 'image'))} photos."))

    tg.inject_photo(chat, caption="Which is better?", data=PHOTO, media_group_id="album-1")
    tg.inject_photo(chat, data=PHOTO + b" and a blue one", media_group_id="album-1")
    assert (await tg.next_bot_message(chat.id))["text"] == "2 photos."
    [request] = world.agent_requests
    first, second, text = blocks(request)
    assert base64.b64decode(first["source"]["data"]) == PHOTO
    assert base64.b64decode(second["source"]["data"]) == PHOTO + b" and a blue one"
    assert text == {"type": "text", "text": "Which is better?"}
    poller = world.app.bot_data["poller"]
    await asyncio.gather(*poller.tasks)  # every update handled, the second part included
    assert len(tg.sent(chat.id)) == 1  # the second part is not answered on its own
    runtime = world.app.bot_data["runtime"]
    assert await runtime.db.fetchval("SELECT COUNT(*) FROM inbox WHERE status != 'done'") == 0


async def test_a_text_file_is_read_as_text(make_world: World) -> None:
    world = await make_world()
    world.answer(lambda req: reply("Two rows."))
    world.telegram.inject_document(world.alice_chat, "data.csv", b"a,b\n1,2\n3,4\n",
                                   mime_type="text/csv", caption="How many rows?")
    assert (await world.telegram.next_bot_message(world.alice_chat.id))["text"] == "Two rows."
    file, caption = blocks(world.agent_requests[-1])
    assert file["text"] == '<file name="data.csv">\na,b\n1,2\n3,4\n\n</file>'
    assert caption["text"] == "How many rows?"


def filer(req: RecordedRequest) -> Reply:
    if not req.tool_results:
        return reply(tool_use("send_file", {"filename": "sales.csv", "content": "month,total\n"
                                            "May,42\n", "caption": "Your **export**"}))
    result = req.tool_results[-1]
    if result.get("is_error"):
        return reply(f"Failed: {json.loads(result['content'])['message']}")
    return reply("Here is the export.")


async def test_send_file_delivers_a_document_before_the_answer(make_world: World) -> None:
    world = await make_world()
    tg, chat = world.telegram, world.alice_chat
    world.answer(filer)
    tg.inject_text(chat, "Export May's sales as CSV")
    await tg.wait_for(lambda: len(tg.sent(chat.id)) >= 2)
    [document] = tg.documents(chat.id)
    assert document["filename"] == "sales.csv"
    assert document["data"] == b"month,total\nMay,42\n"
    doc_message, answer = tg.sent(chat.id)
    assert doc_message["caption"] == "Your export"  # Markdown rendered as entities
    assert doc_message["caption_entities"][0]["type"] == "bold"
    assert answer["text"] == "Here is the export."


async def test_send_file_refuses_bytes_that_are_not_what_their_name_says(
        make_world: World) -> None:
    world = await make_world()
    tg, chat = world.telegram, world.alice_chat

    def liar(req: RecordedRequest) -> Reply:
        if not req.tool_results:
            return reply(tool_use("send_file", {
                "filename": "chart.png",
                "content_base64": base64.b64encode(b"<svg/>").decode()}))
        return filer(req)

    world.answer(liar)
    tg.inject_text(chat, "Draw a chart")
    message = await tg.next_bot_message(chat.id)
    assert message["text"] == "Failed: These bytes are not a PNG file."
    assert tg.documents(chat.id) == []


async def test_the_fake_api_refuses_media_blocks_the_real_one_would(
        fake_anthropic: FakeAnthropic) -> None:
    client = anthropic.AsyncAnthropic(api_key="sk-test", base_url=fake_anthropic.base_url,
                                      max_retries=0)

    async def error_of(block: dict[str, Any]) -> str:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[
                {"role": "user", "content": [block, {"type": "text", "text": "?"}]}])
        return str(refused.value.body["error"]["message"])  # type: ignore[index]

    unresolved = {"type": "image", "source": {"type": "keel_file", "sha256": "0" * 64}}
    assert (await error_of(unresolved)).startswith(
        "messages.0.content.0.image.source: Input tag 'keel_file' found")
    png_as_jpeg = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                               "data": base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()}}
    assert (await error_of(png_as_jpeg)).endswith("Image does not match the provided media type "
                                                  "image/jpeg")
    not_pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                              "data": base64.b64encode(b"hello").decode()}}
    assert (await error_of(not_pdf)).endswith("The PDF specified was not valid.")
    await client.close()


async def test_a_scheduled_run_delivers_the_files_it_sent_before_its_post(
        make_world: World, tmp_path: Path) -> None:
    # a schedule's agent sends a file: it reaches the schedule's chat once, before the post
    # (it used to be stored and never delivered: only the post was committed)
    world = await make_world()
    tg, chat = world.telegram, world.alice_chat
    world.answer(filer)
    schedule = (f'\n[[schedules]]\nname = "export"\nagent = "filer"\n'
                f'cron = "0 {quiet_hour()} * * *"\n'
                f'timezone = "UTC"\nchat_id = {chat.id}\ntask = "Export May\'s sales."\n')
    with (tmp_path / "keel.toml").open("a", encoding="utf-8") as config:
        config.write(schedule)
    await stop_bot(world.app)  # a restart reads the schedule
    world.app = await start_bot(load_settings())
    tg.inject_text(chat, "/run export")
    await tg.wait_for(lambda: any("Here is the export." in m.get("text", "")
                                  for m in tg.sent(chat.id)), timeout=20)
    [document] = tg.documents(chat.id)
    assert document["filename"] == "sales.csv" and document["data"] == b"month,total\nMay,42\n"
    sent = tg.sent(chat.id)
    doc_at = next(i for i, m in enumerate(sent) if m.get("document"))
    post_at = next(i for i, m in enumerate(sent) if "Here is the export." in m.get("text", ""))
    assert doc_at < post_at
