"""The model chosen per conversation (migration 0009_conversation_model), on SQLite and
PostgreSQL: one chat or topic only, NULL until chosen, back to NULL for the agent's own."""

from __future__ import annotations

from storage.conversation_model import ConversationModels
from storage.conversations import ConversationRepository
from tests.conftest import OpenDb


async def test_a_model_is_chosen_for_one_conversation_only(open_db: OpenDb) -> None:
    db = await open_db()
    models = ConversationModels(db)
    await ConversationRepository(db).get_or_create(-100, 7)
    assert await models.get(-100, 7) is None
    assert await models.get(42, None) is None  # no conversation yet

    await models.set(-100, 7, "claude-haiku-4-5")
    await models.set(42, None, "claude-opus-4-7")  # creates the conversation
    assert await models.get(-100, 7) == "claude-haiku-4-5"
    assert await models.get(-100, None) is None  # the group outside the topic
    assert await models.get(42, 0) == "claude-opus-4-7"

    await models.set(-100, 7, None)
    assert await models.get(-100, 7) is None
    assert (await ConversationRepository(db).get_or_create(42, None)).id > 0
