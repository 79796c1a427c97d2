"""``personachat telegram --model DIR``: the persona bot in Telegram, by long polling.

The CLI checks the token and the extra before the model loads, loads the model as for
``serve``, then calls ``run_telegram``. ``run_bot`` is the bot itself, a coroutine that runs
until its ``stop`` event is set (the CLI sets it on SIGINT/SIGTERM; tests set it themselves).
python-telegram-bot is imported only here and in ``bot``, when a bot starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from contextlib import suppress
from dataclasses import dataclass
from functools import partial

from personachat.errors import PersonachatError
from personachat.serve.command import (
    add_common_arguments,
    build_settings,
    check_threads,
    open_store,
    share_cpu,
)
from personachat.serve.settings import RequestError, ServeSettings, clean_personality

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
DEFAULT_BASE_URL = "https://api.telegram.org"
POLL_TIMEOUT = 10  # seconds a getUpdates call waits for messages (long polling)
# The serve limits that apply to a bot (no HTTP bodies or headers here), with their help.
LIMITS = {
    "max_batch_size": "replies decoded together in one model call (1: one at a time)",
    "batch_window_ms": "how long a message waits for other chats' messages to join its batch",
    "max_in_flight": "messages being answered at once, all chats together",
    "max_message_chars": "longest user message; a longer one is refused in its chat",
    "max_persona_sentences": "most persona sentences (/persona, /card)",
    "max_persona_chars": "longest persona sentence (/persona, /card)",
    "max_history_kept": "messages stored per chat; older turns are dropped",
    "max_reply_tokens": "longest reply, in tokens",
}
log = logging.getLogger("personachat.telegram")


class TelegramBotError(PersonachatError, ValueError):
    """The bot cannot start (no token, no extra, the Bot API refused or unreachable)."""


@dataclass(frozen=True)
class BotConfig:
    """Where the bot connects and what it starts new chats with."""

    token: str
    base_url: str = DEFAULT_BASE_URL  # the Bot API server's root (a local one: its address)
    persona: list[str] | None = None  # a new chat's persona; None: one from the model's data
    poll_timeout: float = POLL_TIMEOUT
    send_retries: tuple[float, ...] | None = None  # seconds between tries; None: the bot's


def add_telegram_arguments(parser: argparse.ArgumentParser) -> None:
    """The bot's flags (the model flags are shared with ``interact`` and ``serve``; the
    database, threads, log level and limits with ``serve``)."""
    parser.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help="root URL of the Bot API server, e.g. http://127.0.0.1:8081 for a local "
        f"telegram-bot-api server (default: {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--persona",
        action="append",
        default=[],
        metavar="SENTENCE",
        help="persona of a new chat (repeat); default: a persona from the model's data",
    )
    add_common_arguments(parser, LIMITS, log_level="warning")


def check_telegram(options: argparse.Namespace) -> BotConfig:
    """The bot's configuration, checked before the model loads: the extra is installed, the
    token is set, the options are valid."""
    try:
        import telegram  # noqa: F401

        import personachat.serve.service  # noqa: F401  (needs pydantic)
    except ImportError as err:
        raise TelegramBotError(
            f"personachat telegram needs python-telegram-bot ({err}); install it with: "
            "pip install 'personachat[telegram]'"
        ) from err
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise TelegramBotError(
            f"no bot token: set the {TOKEN_ENV} environment variable to the token @BotFather "
            "gave you (not a flag, so it stays out of `ps` and shell history)"
        )
    if not options.base_url.startswith(("http://", "https://")):
        raise TelegramBotError(
            f"--base-url {options.base_url!r} is not an http(s) URL: give the Bot API "
            f"server's root, e.g. {DEFAULT_BASE_URL} or http://127.0.0.1:8081"
        )
    check_threads(options)
    settings = settings_from(options)
    try:
        persona = clean_personality(options.persona, settings) if options.persona else None
    except RequestError as err:
        raise TelegramBotError(f"--persona: {err.message}") from None
    return BotConfig(token, options.base_url.rstrip("/"), persona)


def settings_from(options: argparse.Namespace) -> ServeSettings:
    """The bot's limits (serve's settings; an invalid one is a ``TelegramBotError``)."""
    return build_settings(options, LIMITS, TelegramBotError)


def build_application(config: BotConfig, settings: ServeSettings):
    """python-telegram-bot's application for ``config``: updates handled concurrently (the
    batcher gathers them), at most ``max_in_flight`` at once."""
    from telegram.ext import ApplicationBuilder

    return (
        ApplicationBuilder()
        .token(config.token)
        .base_url(f"{config.base_url}/bot")
        .base_file_url(f"{config.base_url}/file/bot")
        .concurrent_updates(settings.max_in_flight)
        .build()
    )


async def run_bot(model, store, settings: ServeSettings, config: BotConfig, stop: asyncio.Event):
    """Answer the bot's chats until ``stop`` is set; then stop fetching updates, finish the
    replies under way (stored and sent) and return the batcher's statistics."""
    from personachat.serve.service import ChatService
    from personachat.telegram.bot import NAMESPACE, SEND_RETRIES, PersonaBot

    # The bot's chats live in their own namespace of the store, replies tracked until sent.
    service = ChatService(model, store.view(NAMESPACE, track_delivery=True), settings)
    bot = PersonaBot(service, config.persona, config.send_retries or SEND_RETRIES)
    application = build_application(config, settings)
    application.add_handlers(bot.handlers())
    application.add_error_handler(bot.on_error)
    service.batcher.start()
    service.writer.start()
    try:
        await start_polling(application, config)
        try:
            announce(application.bot.username, store.path, settings, model)
            pending = asyncio.create_task(bot.deliver_pending(application.bot))
            await stop.wait()
            pending.cancel()
            with suppress(asyncio.CancelledError):
                await pending
        finally:
            await stop_application(application)
    finally:
        await service.drain()
        await service.batcher.stop()
        await service.writer.stop()
    return service.batcher.stats


async def start_polling(application, config: BotConfig) -> None:
    """getMe (is the token good?), the command menu, then long polling; a refusal or an
    unreachable API is a one-line ``TelegramBotError``."""
    from telegram import BotCommand
    from telegram.error import TelegramError

    from personachat.telegram.bot import COMMANDS

    try:
        await application.initialize()
        with suppress(TelegramError):  # the command menu is a courtesy
            await application.bot.set_my_commands(
                [BotCommand(name, what) for name, what in COMMANDS.items()]
            )
        await application.start()
        await application.updater.start_polling(
            timeout=int(config.poll_timeout), allowed_updates=["message"]
        )
    except TelegramError as err:
        await stop_application(application)
        raise startup_error(err, config.base_url) from None


async def stop_application(application) -> None:
    """Stop fetching updates (the fetched ones are confirmed to the API), let the updates
    being handled finish (their replies sent), and close the connections."""
    if application.updater.running:
        await application.updater.stop()
    if application.running:
        await application.stop()
    await application.shutdown()


def startup_error(err: Exception, base_url: str) -> TelegramBotError:
    """The one-line error of a bot that could not start, by what the API answered."""
    from telegram.error import InvalidToken, NetworkError

    if isinstance(err, InvalidToken):
        return TelegramBotError(
            f"the Bot API at {base_url} refused the token in {TOKEN_ENV} ({err}); check the "
            "token with @BotFather (and --base-url, for a server of your own)"
        )
    if isinstance(err, NetworkError):
        return TelegramBotError(
            f"cannot reach the Bot API at {base_url} ({err}); check the network or --base-url"
        )
    return TelegramBotError(f"the Bot API at {base_url} would not start the bot: {err}")


def announce(username: str, db, settings: ServeSettings, model) -> None:
    say = partial(print, "personachat telegram:", flush=True)
    say(
        f"@{username} is answering (long polling); sessions in {db}; batches of up to "
        f"{settings.max_batch_size} on {model.device}"
    )


def run_telegram(model, options: argparse.Namespace, model_name: str) -> int:
    """``personachat telegram``: the bot until SIGINT or SIGTERM, then a clean stop."""
    config = check_telegram(options)
    settings = settings_from(options)
    logging.basicConfig(
        level=options.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    store = open_store(options, model_name)
    share_cpu(model, options)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_bot(model, store, settings, config, stop)

    try:
        asyncio.run(main())
    finally:
        store.close()
    return 0
