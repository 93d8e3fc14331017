"""`keel run` on SQLite starts without what only other paths need (issue 15): the anthropic SDK
(imported when the first update arrives), psycopg (PostgreSQL and `keel db copy` only), mistune
(the first reply), cryptography (Telegram Passport, which keel never asks for)."""

from __future__ import annotations

import subprocess
import sys

from bot import cli_db_copy
from storage import copy


def test_the_run_path_imports_neither_the_sdk_nor_psycopg() -> None:
    code = ("import sys, bot.cli, bot.app, agents.runtime, bot.service, storage.connect; "
            "print(sorted(m for m in ('anthropic', 'psycopg', 'procrastinate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_telegram_is_imported_without_cryptography_which_still_imports_later() -> None:
    code = ("import sys, bot; bot.preload_tls(); bot.import_telegram(); "
            "import bot.cli, bot.app, bot.service, telegram._passport.credentials as c; "
            "print(sorted(m for m in ('cryptography', 'mistune') if m in sys.modules), "
            "c.CRYPTO_INSTALLED); bot.app.build_application(bot.app.Settings("
            "telegram_bot_token='1:x', _env_file=None)); import cryptography.hazmat; "
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["[]", "False", "True"]


def test_db_copy_help_names_the_real_default_batch() -> None:
    assert cli_db_copy.BATCH_HELP_DEFAULT == copy.DEFAULT_BATCH
