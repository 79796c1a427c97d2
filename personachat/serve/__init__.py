"""``personachat serve``: a trained persona bot over HTTP and in the browser, many users at once.

The modules, in the order a request meets them:

- ``settings``: the server's limits and decoding bounds, and the checks of what a client sends;
- ``store``: sessions (persona + messages) in SQLite, so a restarted server continues them;
- ``batcher``: concurrent replies (session turns and OpenAI requests) gathered into one
  batched ``ConvAIModel.complete`` call, run in a worker thread;
- ``bodies``: the JSON bodies the API accepts (every string valid Unicode);
- ``guard``: middleware refusing a request before routing (Host, API key, body size);
- ``service``: sessions and turns behind the routes; ``responses``: errors as JSON;
- the OpenAI-compatible chat: ``chat_completions`` (what a request means: persona, history,
  options, stop strings), ``text_completions`` (the prompt of ``/v1/completions``),
  ``openai_shapes`` (OpenAI's error shape) and ``openai_api`` (its bodies and routes);
- ``app``: the FastAPI routes and the chat page (``static/``);
- ``server``: uvicorn with the socket options and the header timeout it lacks;
- ``command``: the ``personachat serve`` subcommand.

``settings``, ``store`` and ``batcher`` are plain Python; the others need FastAPI and uvicorn
(the ``serve`` extra) and are imported only when a server is started, so ``import personachat``
works without them.
"""

from personachat.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
