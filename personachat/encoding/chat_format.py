"""The ``chat_template`` input format: the tokenizer's own chat template as the input layout.

The persona is the system message (one sentence per line), the history alternates user and
assistant turns counting back from the reply (the reply is always the assistant's), and LM
labels cover only the reply's tokens and its end-of-turn token. A model trained this way is a
plain chat model: any engine that applies the same template serves it.

Like the TransferTransfo layout, inputs are assembled from token ids per sentence, so each
distinct string is tokenized once. The template's fixed text around each message (the
"pieces") is found once by rendering the template around sentinel contents; byte-level BPE
splits at every newline and special token, so piecewise ids equal the ids of the rendered
conversation (``tests/test_chat_format.py`` checks it on every tokenizer we ship tests for).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from personachat.bounded import BudgetExceeded, render_bounded
from personachat.encoding.inputs import IGNORE_INDEX, Overheads, layout_length
from personachat.errors import PersonachatError

_SENTINEL = "\x1fPERSONACHAT{}\x1f"
# A template renders a four-message conversation in milliseconds and a few hundred characters.
TEMPLATE_SECONDS = 5.0
TEMPLATE_MAX_CHARS = 100_000


class ChatTemplateError(PersonachatError, ValueError):
    """The tokenizer has no usable chat template for the ``chat_template`` input format."""


@dataclass(frozen=True)
class RolePieces:
    """Token ids a template writes before and after one message of a role."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]


@dataclass(frozen=True)
class ChatFormat:
    """Token-id pieces of a chat template, and the layout built from them.

    ``end_of_turn``: the token that closes the assistant's reply (labelled, and where the
    multiple-choice head reads); ``newline``: ids between persona sentences.
    """

    system: RolePieces
    user: RolePieces
    assistant: RolePieces
    end_of_turn: int
    newline: tuple[int, ...]
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ChatFormat:
        return chat_format_from_tokenizer(tokenizer)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end a generated reply: the end of turn, padding, and the first token
        of a message header (a model that starts a new message has finished its reply)."""
        headers = {p.prefix[0] for p in (self.system, self.user, self.assistant) if p.prefix}
        return frozenset({self.end_of_turn, self.pad, *headers})

    @property
    def reply_enders(self) -> frozenset[int]:
        return frozenset({self.end_of_turn})

    @property
    def reply_type(self) -> int:
        return 0

    @property
    def window_by_tokens(self) -> bool:
        """True: replies read the whole conversation within ``max_history_tokens``."""
        return True

    @property
    def overheads(self) -> Overheads:
        return Overheads(
            fixed=len(self.system.prefix)
            + len(self.system.suffix)
            + len(self.assistant.prefix)
            + 1,
            between_sentences=len(self.newline),
            user_turn=len(self.user.prefix) + len(self.user.suffix),
            assistant_turn=len(self.assistant.prefix) + len(self.assistant.suffix),
        )

    def prefix_length(self, persona: Sequence[Sequence[int]]) -> int:
        """Tokens of the input's start that depend on the persona alone: the system message."""
        return len(self.system.prefix) + len(self.persona_ids(persona)) + len(self.system.suffix)

    def persona_ids(self, persona: Sequence[Sequence[int]]) -> list[int]:
        """Persona sentences joined by newlines: one sentence per line."""
        ids: list[int] = []
        for i, sentence in enumerate(persona):
            ids += [*self.newline, *sentence] if i else sentence
        return ids

    def build(
        self,
        persona: Sequence[Sequence[int]],
        history: Sequence[Sequence[int]],
        reply: Sequence[int],
        lm_labels: bool = False,
        with_eos: bool = True,
        history_labels: bool = False,
    ) -> dict[str, list[int]]:
        """One (persona, history, reply) as the model sees it; keys as the TransferTransfo
        layout's (``token_type_ids`` are zeros: this format has no speaker embedding).

        ``with_eos=False`` ends the input right after the reply's own tokens: the prompt a
        reply is generated from (with an empty ``reply``). ``history_labels`` (with
        ``lm_labels``) also labels the bot's own earlier turns in the history, each with its
        end of turn: one input then teaches every reply of a conversation.
        """
        ids = [*self.system.prefix, *self.persona_ids(persona), *self.system.suffix]
        labels = [IGNORE_INDEX] * len(ids)
        for i, turn in enumerate(history):
            bot = (len(history) - 1 - i) % 2 == 1
            role = self.assistant if bot else self.user
            ids += [*role.prefix, *turn, *role.suffix]
            labels += [IGNORE_INDEX] * len(role.prefix)
            if bot and history_labels and lm_labels:
                closed = role.suffix[:1] == (self.end_of_turn,)
                labels += [*turn, *role.suffix[:1]] if closed else list(turn)
                labels += [IGNORE_INDEX] * (len(role.suffix) - (1 if closed else 0))
            else:
                labels += [IGNORE_INDEX] * (len(turn) + len(role.suffix))
        ids += self.assistant.prefix
        labels += [IGNORE_INDEX] * len(self.assistant.prefix)
        reply_segment = [*reply, self.end_of_turn] if with_eos else list(reply)
        ids += reply_segment
        labels += list(reply_segment) if lm_labels else [IGNORE_INDEX] * len(reply_segment)
        return {
            "input_ids": ids,
            "token_type_ids": [0] * len(ids),
            "mc_token_ids": len(ids) - 1,
            "lm_labels": labels,
        }

    def length(self, persona: Sequence[int], history: Sequence[int], reply: int) -> int:
        """Tokens of ``build``'s input (with end of turn), from token *counts* alone."""
        return layout_length(self.overheads, persona, history, reply)


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    """The template applied to ``messages``, under a time and output budget: the template
    comes with the model file, and the sandbox bounds what it reaches, not how long it runs."""
    try:
        return render_bounded(
            lambda: tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            ),
            "the tokenizer's chat template",
            seconds=TEMPLATE_SECONDS,
            max_chars=TEMPLATE_MAX_CHARS,
        )
    except BudgetExceeded as err:
        raise ChatTemplateError(
            f"{err}; the model's template is broken or hostile: use input_format "
            "'transfertransfo', or a model with a sound chat template"
        ) from None
    except Exception as err:  # jinja errors: the template refuses this conversation
        raise ChatTemplateError(
            f"the tokenizer's chat template cannot render a persona conversation ({err}); "
            "use input_format 'transfertransfo' for this model"
        ) from err


def _between(text: str, left: str, right: str) -> str:
    start = text.index(left) + len(left)
    return text[start : text.index(right, start)]


def chat_format_from_tokenizer(tokenizer) -> ChatFormat:
    """Find the template's pieces by rendering it around sentinel contents.

    ``[system, user]`` without and with the generation prompt gives the user's suffix and the
    assistant's prefix; ``[system, user, assistant, user]`` the rest: a message's suffix is
    what follows it up to where the user's suffix and the text before the next message part.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(
            f"input_format 'chat_template' needs a tokenizer with a chat template, and "
            f"{name!r} has none; use input_format 'transfertransfo' (speaker tokens), or a "
            "model whose tokenizer_config.json has a chat_template"
        )
    s, u, a, v = (_SENTINEL.format(k) for k in "SUAV")
    convo = [
        {"role": "system", "content": s},
        {"role": "user", "content": u},
        {"role": "assistant", "content": a},
        {"role": "user", "content": v},
    ]
    full = _render(tokenizer, convo)
    two = _render(tokenizer, convo[:2])
    prompt = _render(tokenizer, convo[:2], generation_prompt=True)
    if not prompt.startswith(two) or any(x not in full for x in (s, u, a, v)):
        raise ChatTemplateError(
            "the tokenizer's chat template does not write messages in order with a "
            "generation prompt; use input_format 'transfertransfo' for this model"
        )
    user_suffix = two[two.index(u) + len(u) :]
    sys_to_user, assistant_to_user = _between(full, s, u), _between(full, a, v)
    system_suffix = os.path.commonprefix([sys_to_user, user_suffix])
    user_prefix = sys_to_user[len(system_suffix) :]
    if not assistant_to_user.endswith(user_prefix):
        raise ChatTemplateError(
            "the tokenizer's chat template writes user messages differently after a system "
            "and an assistant message; use input_format 'transfertransfo' for this model"
        )
    return _encode_pieces(
        tokenizer,
        system=(full[: full.index(s)], system_suffix),
        user=(user_prefix, user_suffix),
        assistant=(
            prompt[len(two) :],
            assistant_to_user[: len(assistant_to_user) - len(user_prefix)],
        ),
    )


def _encode_pieces(tokenizer, system, user, assistant) -> ChatFormat:
    def enc(text: str) -> tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

    assistant_suffix = enc(assistant[1])
    if not assistant_suffix:
        raise ChatTemplateError(
            "the tokenizer's chat template writes nothing after an assistant message, so a "
            "reply has no end-of-turn token; use input_format 'transfertransfo'"
        )
    pad = tokenizer.pad_token_id
    return ChatFormat(
        system=RolePieces(enc(system[0]), enc(system[1])),
        user=RolePieces(enc(user[0]), enc(user[1])),
        assistant=RolePieces(enc(assistant[0]), assistant_suffix),
        end_of_turn=assistant_suffix[0],
        newline=enc("\n"),
        pad=assistant_suffix[0] if pad is None else pad,
    )
