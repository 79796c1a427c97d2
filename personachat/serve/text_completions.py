"""``POST /v1/completions``: OpenAI's text completion, the prompt used as given.

SillyTavern's text-completion mode and many scripts build the whole prompt themselves (the
character card, the chat, ``{{char}}:`` at the end) and ask the model to continue it. No
persona, no chat template, no speaker tokens are added: the prompt is tokenized as the
tokenizer does by default (a Llama tokenizer adds its ``<s>``, GPT-2's adds nothing) and the
model continues it until its end-of-text token, a stop string or ``max_tokens``.

Requests wait in the same batcher as chat requests and session turns and are decoded by the
same call, ``ConvAIModel.complete``: their options say ``raw_prompt`` (which also keeps them
in calls of their own). What is here is the route's check of the prompt.
"""

from __future__ import annotations

from dataclasses import replace

from personachat.generation.completion import prompt_ids
from personachat.generation.generate import DecodingOptions
from personachat.model.loading import context_size
from personachat.serve.openai_shapes import bad_request


def check_prompt(model, prompt: str, max_length: int) -> None:
    """Refuse a prompt that leaves no room for ``max_length`` tokens in the model's context
    (a 400 naming ``prompt``)."""
    room = context_size(model.model) - max_length
    length = len(prompt_ids(model.tokenizer, prompt))
    if not prompt.strip():
        raise bad_request("prompt", "empty_prompt", "prompt is empty: send some text to continue")
    if length > room:
        raise bad_request(
            "prompt",
            "context_length_exceeded",
            f"prompt has {length} tokens; with max_tokens={max_length} the model's context "
            f"({context_size(model.model)} tokens) holds at most {room}: shorten the prompt",
        )


def text_options(options: DecodingOptions) -> DecodingOptions:
    """A chat request's options for a text completion: the prompt continued as given."""
    return replace(options, raw_prompt=True)
