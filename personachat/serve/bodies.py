"""The JSON bodies the API accepts, as pydantic models (FastAPI checks them and /docs shows them).

Every string in a body is a ``Text``: valid Unicode. JSON may escape a lone surrogate
(``"\\ud800"``), which Python decodes to a ``str`` that cannot be encoded as UTF-8: the
tokenizer and SQLite fail on it. It is refused here, where it enters, as a 422 naming the
field, so it never reaches a batch of other users' requests or the database.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from personachat.serve.settings import unicode_problem


def valid_unicode(text: str) -> str:
    """``text`` unchanged, or a validation error of type ``invalid_unicode`` saying where."""
    problem = unicode_problem(text)
    if problem:
        raise PydanticCustomError("invalid_unicode", problem)
    return text


Text = Annotated[StrictStr, AfterValidator(valid_unicode)]
ClientId = Annotated[
    StrictStr, StringConstraints(min_length=1, max_length=100), AfterValidator(valid_unicode)
]


class Options(BaseModel):
    """Decoding options of one reply; each within the server's bounds (see /health)."""

    model_config = ConfigDict(extra="forbid")
    max_length: StrictInt | None = Field(None, description="most tokens in the reply")
    min_length: StrictInt | None = Field(None, description="fewest tokens in the reply")
    temperature: float | None = Field(None, strict=True, description="sampling temperature")
    top_p: float | None = Field(None, strict=True, description="nucleus sampling (0: off)")
    top_k: StrictInt | None = Field(None, description="top-k sampling (0: off)")
    do_sample: StrictBool | None = Field(None, description="false: greedy decoding")
    repetition_penalty: float | None = Field(
        None, strict=True, description=">1 discourages the bot's own words"
    )
    no_repeat_ngram_size: StrictInt | None = Field(None, description="ban repeated n-grams")


class PersonaBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    personality: list[Text] | None = Field(
        None,
        description="persona sentences; none or empty: a persona from the model's data",
        examples=[["i work as a nurse .", "i have two cats ."]],
    )
    card: dict | None = Field(
        None,
        description="instead of a personality: a Character Card V2 JSON object; its "
        "description and personality become the persona, and on POST its first message is "
        "the bot's opening line, stored as the session's first message",
    )


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Text = Field(description="the user's message", examples=["hi , what do you do ?"])
    options: Options | None = None
    client_id: ClientId | None = Field(
        None,
        description="the client's id for this message: sending it again returns the stored "
        "reply instead of a second turn (safe retries)",
    )

    def decoding(self) -> dict | None:
        """The options the client set (for ``ChatService.start_turn``); None: none set."""
        return self.options.model_dump(exclude_none=True) if self.options else None
