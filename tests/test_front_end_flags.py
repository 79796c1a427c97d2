"""The front ends over a ChatService (``serve``, ``telegram``) share their flags and the way
their settings are built, and a bot's turn starts through the same call as an HTTP one."""

from __future__ import annotations

import asyncio

import pytest

from personachat.cli import build_parser
from personachat.serve.command import settings_from as serve_settings
from personachat.serve.service import KeyedLocks
from personachat.serve.settings import ServeError
from personachat.telegram.command import TelegramBotError
from personachat.telegram.command import settings_from as bot_settings

SHARED = ["--model", "m", "--db", "chats.sqlite3", "--threads", "2", "--prefill-threads", "3"]
LIMITS = ["--max-batch-size", "4", "--max-history-kept", "10", "--max-message-chars", "99"]


def test_serve_and_the_bot_read_the_shared_flags_the_same_way():
    parser = build_parser()
    serve = parser.parse_args(["serve", *SHARED, *LIMITS])
    bot = parser.parse_args(["telegram", *SHARED, *LIMITS])

    for options in (serve, bot):
        assert (options.db, options.threads, options.prefill_threads) == ("chats.sqlite3", 2, 3)
    server, chats = serve_settings(serve), bot_settings(bot)
    for settings in (server, chats):
        assert settings.max_batch_size == 4
        assert settings.max_history_kept == 10
        assert settings.max_message_chars == 99
    assert (serve.log_level, bot.log_level) == ("info", "warning")  # each its own default


def test_a_limit_out_of_range_is_each_front_ends_own_one_line_error():
    parser = build_parser()
    flags = ["--model", "m", "--max-in-flight", "0"]

    with pytest.raises(ServeError) as serve:
        serve_settings(parser.parse_args(["serve", *flags]))
    with pytest.raises(TelegramBotError) as bot:
        bot_settings(parser.parse_args(["telegram", *flags]))
    assert str(serve.value) == str(bot.value) == "--max-in-flight must be a number >= 1, got 0"


def test_the_bot_has_no_http_only_flags():
    bot = build_parser().parse_args(["telegram", "--model", "m"])
    assert not hasattr(bot, "api_key") and not hasattr(bot, "max_body_bytes")


def test_keyed_locks_count_who_holds_or_waits_and_forget_a_free_key():
    async def main() -> None:
        locks, release = KeyedLocks(), asyncio.Event()

        async def hold() -> None:
            async with locks.hold("chat"):
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0)
        assert (locks.users("chat"), locks.users("other")) == (3, 0)  # 1 holds, 2 wait
        release.set()
        await asyncio.gather(*tasks)
        assert locks.users("chat") == 0

    asyncio.run(main())
