"""The OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions``
(text completion: the prompt continued as given, ``text_completions``) and ``GET /v1/models``.

Any OpenAI client (the ``openai`` package, LangChain, SillyTavern…) talks to the persona bot
with ``base_url="http://HOST:PORT/v1"`` and the server's API key (``Authorization: Bearer``).
Stateless: the client sends the whole conversation each time and nothing is stored. Replies
are decoded in the same batcher as the session routes' turns, under the same limits (what a
request means: ``chat_completions``; decoding: ``ConvAIModel.complete``, the call every route
shares; errors in OpenAI's shape: ``openai_shapes``).

Answers have OpenAI's shapes: a ``chat.completion`` object, or with ``stream: true``
server-sent events of ``chat.completion.chunk`` objects (the first delta gives the role, then
content deltas, a last chunk with ``finish_reason``, a usage chunk when
``stream_options.include_usage``, then ``data: [DONE]``). An error after the stream began is
sent as ``data: {"error": {...}}``, which OpenAI clients raise.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from personachat.generation.completion import Completion
from personachat.serve.chat_completions import (
    ChatRequest,
    StreamedText,
    answer,
    read_request,
    read_text_request,
)
from personachat.serve.openai_shapes import openai_error_body
from personachat.serve.service import ChatService, reply_error
from personachat.serve.settings import RequestError

EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ChatMessage(BaseModel):
    """One message; fields other than role and content (``name``…) are ignored."""

    model_config = ConfigDict(extra="ignore")
    role: StrictStr = Field(description="system (the persona), user or assistant")
    content: Any = Field(None, description="a string, or a list of text parts")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


def number(description: str) -> Any:
    return Field(None, strict=True, description=description)


class ChatCompletionBody(BaseModel):
    """OpenAI's chat-completion request. Fields this server does not know are ignored (front
    ends send many); known features it lacks (``n`` > 1, tools, logprobs…) are refused."""

    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage]
    model: StrictStr | None = Field(None, description="the served model's id (GET /v1/models)")
    temperature: float | None = number("0: greedy decoding; none: the model's own options")
    top_p: float | None = number("nucleus sampling; 0: greedy")
    max_tokens: StrictInt | None = Field(
        None, description="most tokens in the reply: an upper bound, up to the model's context"
    )
    max_completion_tokens: StrictInt | None = Field(None, description="as max_tokens")
    stop: Any = Field(None, description="a string or up to 4: the reply ends before one")
    seed: StrictInt | None = Field(None, description="same seed, same request: same reply")
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    presence_penalty: float | None = number("[-2, 2]: less of any token the reply has used")
    frequency_penalty: float | None = number("[-2, 2]: less of a token, by its count")
    logit_bias: dict | None = Field(None, description="unsupported: {} only")
    logprobs: StrictBool | None = None
    tools: list | None = None
    response_format: dict | None = None
    # Extensions: the model's other decoding options, and a character card.
    min_tokens: StrictInt | None = Field(None, description="fewest tokens in the reply")
    top_k: StrictInt | None = Field(None, description="top-k sampling (0: off)")
    repetition_penalty: float | None = number(">1 discourages the bot's own words")
    no_repeat_ngram_size: StrictInt | None = Field(None, description="ban repeated n-grams")
    persona_card: dict | None = Field(
        None, description="a Character Card V2 JSON object: its persona comes first"
    )


class CompletionBody(BaseModel):
    """OpenAI's text-completion request (``/v1/completions``): the prompt is continued as
    given. Unknown fields are ignored; known features this server lacks are refused."""

    model_config = ConfigDict(extra="ignore")
    prompt: Any = Field(description="the text to continue (a string, or a list of one)")
    model: StrictStr | None = Field(None, description="the served model's id (GET /v1/models)")
    temperature: float | None = number("0: greedy decoding; none: the model's own options")
    top_p: float | None = number("nucleus sampling; 0: greedy")
    max_tokens: StrictInt | None = Field(
        None, description="most tokens in the completion: an upper bound, up to the context"
    )
    stop: Any = Field(None, description="a string or up to 4: the completion ends before one")
    seed: StrictInt | None = Field(None, description="same seed, same request: same text")
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    best_of: StrictInt | None = None
    echo: StrictBool | None = None
    suffix: StrictStr | None = None
    logprobs: StrictInt | None = None
    presence_penalty: float | None = number("[-2, 2]: less of any token already used")
    frequency_penalty: float | None = number("[-2, 2]: less of a token, by its count")
    logit_bias: dict | None = Field(None, description="unsupported: {} only")
    min_tokens: StrictInt | None = Field(None, description="fewest tokens in the completion")
    top_k: StrictInt | None = Field(None, description="top-k sampling (0: off)")
    repetition_penalty: float | None = number(">1 discourages repeats")
    no_repeat_ngram_size: StrictInt | None = Field(None, description="ban repeated n-grams")
    max_completion_tokens: None = Field(None, exclude=True)  # chat's name; not taken here
    tools: None = Field(None, exclude=True)
    response_format: None = Field(None, exclude=True)


class ChatCompletions:
    """Chat requests answered through a ``ChatService``'s batcher, limits and counters."""

    def __init__(self, service: ChatService, model_id: str) -> None:
        self.service, self.model_id = service, model_id
        self.created = int(time.time())
        tokenizer = service.model.tokenizer
        self.decode: Callable[[list[int]], str] = lambda ids: tokenizer.decode(
            ids, skip_special_tokens=True
        ).strip()
        self.decode_raw: Callable[[list[int]], str] = lambda ids: tokenizer.decode(
            ids, skip_special_tokens=True
        )  # a text completion keeps its leading space

    def model_json(self) -> dict:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "personachat",
        }

    def read(self, body: ChatCompletionBody) -> ChatRequest:
        """The checked request; an unknown ``model`` is a 404 as OpenAI answers it."""
        if body.model is not None and body.model != self.model_id:
            raise model_not_found(body.model, self.model_id)
        service = self.service
        request = read_request(body, service.defaults, service.settings, service.model)
        # The message being answered must be read whole: a 400 saying how much fits, never
        # a reply from the persona alone (older messages are dropped as needed).
        service.fitter.fit_history(request.persona, request.history, request.options, "messages")
        return request

    def read_text(self, body: CompletionBody) -> ChatRequest:
        """A checked text-completion request (CPU work: call it in a worker thread)."""
        if body.model is not None and body.model != self.model_id:
            raise model_not_found(body.model, self.model_id)
        return read_text_request(body, self.service)

    async def complete_text(self, request: ChatRequest) -> dict:
        """The ``text_completion`` object."""
        self.service.admit()
        try:
            completion = await self._completion(request)
        finally:
            self.service.release()
        done = answer(completion, request, self.decode_raw)
        choice = {"text": done.content, "index": 0, "logprobs": None}
        return {
            **self._head("text_completion", "cmpl-"),
            "choices": [{**choice, "finish_reason": done.finish_reason}],
            "usage": done.usage(),
        }

    async def _completion(
        self, request: ChatRequest, on_token: Callable[[str], None] | None = None
    ) -> Completion:
        """Decode the reply in the batcher (the caller has admitted the request)."""
        try:
            return await self.service.batcher.reply(
                request.persona, request.history, request.options, on_token
            )
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise reply_error(err) from None

    async def complete(self, request: ChatRequest) -> dict:
        """The ``chat.completion`` object."""
        self.service.admit()
        try:
            completion = await self._completion(request)
        finally:
            self.service.release()
        done = answer(completion, request, self.decode)
        return {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.content},
                    "logprobs": None,
                    "finish_reason": done.finish_reason,
                }
            ],
            "usage": done.usage(),
        }

    def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """The ``chat.completion.chunk`` events of a chat request (see ``_started``)."""
        return self._events(request, *self._started(request))

    def stream_text(self, request: ChatRequest) -> AsyncIterator[str]:
        """The ``text_completion`` events of a text-completion request (see ``_started``)."""
        return self._text_events(request, *self._started(request))

    def _started(self, request: ChatRequest) -> tuple[asyncio.Task, asyncio.Queue]:
        """Start decoding now, so a refusal (429) is still a plain error: the reply's task
        and the queue of its texts so far, ended by None (a client that leaves cancels the
        task)."""
        self.service.admit()
        loop = asyncio.get_running_loop()
        texts: asyncio.Queue[str | None] = asyncio.Queue()

        def on_token(text: str) -> None:  # in the decoding thread
            loop.call_soon_threadsafe(texts.put_nowait, text)

        def finished(task: asyncio.Task) -> None:
            self.service.release()
            texts.put_nowait(None)
            if not task.cancelled():
                task.exception()  # retrieved here: the client may be gone

        task = asyncio.create_task(self._completion(request, on_token))
        task.add_done_callback(finished)
        return task, texts

    async def _events(
        self, request: ChatRequest, task: asyncio.Task, texts: asyncio.Queue
    ) -> AsyncIterator[str]:
        head = self._head("chat.completion.chunk")
        if request.include_usage:
            head["usage"] = None

        def chunk(delta: dict, finish_reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return event({**head, "choices": [choice]})

        try:
            yield chunk({"role": "assistant", "content": ""})
            streamed = StreamedText(request.stops)
            while (text := await texts.get()) is not None:
                if delta := streamed.push(text):
                    yield chunk({"content": delta})
            try:
                done = answer(task.result(), request, self.decode)
            except RequestError as err:
                yield event(openai_error_body(err))
                return
            if rest := streamed.finish(done.content):
                yield chunk({"content": rest})
            yield chunk({}, done.finish_reason)
            if request.include_usage:
                yield event({**head, "choices": [], "usage": done.usage()})
            yield "data: [DONE]\n\n"
        finally:
            task.cancel()  # the client left before the end: nobody waits for the reply

    async def _text_events(
        self, request: ChatRequest, task: asyncio.Task, texts: asyncio.Queue
    ) -> AsyncIterator[str]:
        """A streamed text completion: ``text_completion`` chunks of text, the last with
        ``finish_reason`` (then usage, when asked), then ``[DONE]``."""
        head = self._head("text_completion", "cmpl-")

        def chunk(text: str, finish_reason: str | None = None) -> str:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
            return event({**head, "choices": [choice]})

        try:
            streamed = StreamedText(request.stops)
            while (text := await texts.get()) is not None:
                if delta := streamed.push(text):
                    yield chunk(delta)
            try:
                done = answer(task.result(), request, self.decode_raw)
            except RequestError as err:
                yield event(openai_error_body(err))
                return
            yield chunk(streamed.finish(done.content), done.finish_reason)
            if request.include_usage:
                yield event({**head, "choices": [], "usage": done.usage()})
            yield "data: [DONE]\n\n"
        finally:
            task.cancel()

    def _head(self, kind: str, prefix: str = "chatcmpl-") -> dict:
        return {
            "id": prefix + secrets.token_urlsafe(18),
            "object": kind,
            "created": int(time.time()),
            "model": self.model_id,
        }


def event(data: dict) -> str:
    """One server-sent event as OpenAI writes them (data only; JSON in ASCII)."""
    return f"data: {json.dumps(data)}\n\n"


def model_not_found(name: str, served: str) -> RequestError:
    return RequestError(
        404,
        "model_not_found",
        f"the model {name!r} does not exist here: this server serves {served!r} "
        "(GET /v1/models lists it)",
        param="model",
    )


def openai_routes(chat: ChatCompletions, router: APIRouter) -> APIRouter:
    """The routes on ``router`` (the /v1 router with the API key documented)."""

    @router.post(
        "/chat/completions", summary="OpenAI-compatible chat (stateless)", response_model=None
    )
    async def chat_completions(body: ChatCompletionBody) -> JSONResponse | StreamingResponse:
        # A card to parse, messages to split and count: CPU work, kept off the event loop.
        request = await asyncio.to_thread(chat.read, body)
        if not body.stream:
            return JSONResponse(await chat.complete(request))
        return StreamingResponse(
            chat.stream(request), media_type="text/event-stream", headers=EVENT_STREAM_HEADERS
        )

    @router.post("/completions", summary="OpenAI-compatible text completion", response_model=None)
    async def completions(body: CompletionBody) -> JSONResponse | StreamingResponse:
        request = await asyncio.to_thread(chat.read_text, body)  # tokenizes: off the loop
        if not body.stream:
            return JSONResponse(await chat.complete_text(request))
        return StreamingResponse(
            chat.stream_text(request),
            media_type="text/event-stream",
            headers=EVENT_STREAM_HEADERS,
        )

    @router.get("/models", summary="The served model (OpenAI-compatible)")
    async def list_models() -> dict:
        return {"object": "list", "data": [chat.model_json()]}

    @router.get("/models/{model_id:path}", summary="The served model, by id")
    async def get_model(model_id: str) -> dict:
        if model_id != chat.model_id:
            raise model_not_found(model_id, chat.model_id)
        return chat.model_json()

    return router
