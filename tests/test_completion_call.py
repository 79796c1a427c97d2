"""``ConvAIModel.complete``: the one call every front end decodes through (the Python API,
the session routes and both OpenAI routes), returning each reply's text, token ids and
token counts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from personachat import ConvAIModel
from personachat.generation.completion import PromptError
from personachat.generation.generate import DecodingOptions

from .conftest import PERSONA

CONVERSATIONS = [(PERSONA, ["hi , what do you do ?"]), (PERSONA[:1], ["any pets ?"])]


@pytest.fixture(scope="module")
def bot(tiny_checkpoint) -> ConvAIModel:
    args = {"do_sample": False, "max_length": 8, "min_length": 3}
    return ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)


def test_each_completion_has_the_reply_its_ids_and_both_token_counts(bot):
    completions = bot.complete(CONVERSATIONS)
    assert [c.text for c in completions] == bot.generate_replies(CONVERSATIONS)
    for completion, (persona, history) in zip(completions, CONVERSATIONS, strict=True):
        decoded = bot.tokenizer.decode(completion.ids, skip_special_tokens=True).strip()
        assert decoded == completion.text
        assert 3 <= completion.reply_tokens == len(completion.ids) <= 8
        # A short conversation is read whole: the prompt is the input format's own build.
        encode = bot.tokenizer.encode
        prompt = bot.special.build(
            [encode(s) for s in persona], [encode(h) for h in history], [], with_eos=False
        )
        assert completion.prompt_tokens == len(prompt["input_ids"])
    assert completions[0].prompt_tokens > completions[1].prompt_tokens  # the longer persona


def test_a_greedy_reply_is_the_same_in_a_batch_and_alone(bot):
    together = bot.complete(CONVERSATIONS)
    alone = [bot.complete([conversation])[0] for conversation in CONVERSATIONS]
    assert together == alone


def test_a_raw_prompt_is_continued_as_given(bot):
    raw = replace(DecodingOptions.from_args(bot.args), raw_prompt=True)
    prompt = "i like to ski . what do you"
    [completion] = bot.complete([prompt], raw)
    assert completion.prompt_tokens == len(bot.tokenizer(prompt)["input_ids"])
    # the text keeps its leading space: it continues the prompt, not a speaker's turn
    assert completion.text == bot.tokenizer.decode(completion.ids, skip_special_tokens=True)
    assert bot.complete([([], [prompt])], raw) == [completion]
    as_reply = bot.complete([prompt])[0]  # the same text as a message gets a persona turn
    assert as_reply.prompt_tokens > completion.prompt_tokens


def test_a_conversation_is_refused_where_a_raw_prompt_is_asked_for(bot):
    raw = replace(DecodingOptions.from_args(bot.args), raw_prompt=True)
    with pytest.raises(PromptError, match="raw_prompt") as refused:
        bot.complete([(PERSONA, ["hi"])], raw)
    assert isinstance(refused.value, ValueError)  # the server answers it with a 422


def test_a_seed_gives_the_same_sample_in_any_batch_and_leaves_torchs_generator_alone(bot):
    sampling = DecodingOptions.from_args(bot.args, do_sample=True, top_k=0, temperature=5.0)
    seeded = replace(sampling, seed=11)
    before = torch.get_rng_state()
    together = bot.complete(CONVERSATIONS, seeded)
    assert torch.equal(torch.get_rng_state(), before)
    alone = [bot.complete([conversation], seeded)[0] for conversation in CONVERSATIONS]
    assert together == alone
    others = {
        tuple(bot.complete(CONVERSATIONS[:1], replace(sampling, seed=s))[0].ids)
        for s in (1, 2, 3, 4)
    }
    assert len(others | {tuple(together[0].ids)}) > 1  # the seed does choose the sample


def test_streamed_texts_grow_to_the_completions_text(bot):
    seen: dict[int, list[str]] = {0: [], 1: []}
    completions = bot.complete(CONVERSATIONS, on_token=lambda i, text: seen[i].append(text))
    for index, completion in enumerate(completions):
        assert seen[index][-1] == completion.text
