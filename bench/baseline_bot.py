"""The smallest bot of the same kind, for the start-up and memory baselines (no keel at all).

python-telegram-bot with the same rate limiter and long polling, one ``AsyncAnthropic`` client, a
handler that asks the model and replies. No storage, no sessions, no traces, no budgets. Run as
``python -m bench.baseline_bot`` with keel's environment variables.
"""

from __future__ import annotations

import os

import anthropic
from telegram import Update
from telegram.ext import AIORateLimiter, ApplicationBuilder, ContextTypes, MessageHandler, filters


def main() -> None:
    client = anthropic.AsyncAnthropic(api_key=os.environ["ANTHROPIC_API_KEY"],
                                      base_url=os.environ["ANTHROPIC_BASE_URL"])

    async def on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Ask the model, send its answer."""
        assert update.message is not None and update.message.text is not None
        answer = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=1024,
            messages=[{"role": "user", "content": update.message.text}])
        text = "".join(b.text for b in answer.content if b.type == "text") or "…"
        await update.message.reply_text(text)

    app = (ApplicationBuilder().token(os.environ["TELEGRAM_BOT_TOKEN"])
           .base_url(os.environ["TELEGRAM_API_BASE_URL"])
           .rate_limiter(AIORateLimiter(max_retries=3)).concurrent_updates(True).build())
    app.add_handler(MessageHandler(filters.TEXT, on_message, block=False))
    app.run_polling(allowed_updates=[Update.MESSAGE])


if __name__ == "__main__":
    main()
