"""``personachat telegram``: a trained persona bot in Telegram, one conversation per chat.

- ``bot``: the handlers: commands, card files, turns through serve's ``ChatService`` (the
  same SQLite store and batcher as ``personachat serve``);
- ``command``: the ``personachat telegram`` subcommand and ``run_bot``, the bot's main loop.

Both need python-telegram-bot (the ``telegram`` extra) and are imported only when a bot
starts, so ``import personachat`` works without it.
"""
