"""Decoding a reply (personachat.generation.generate) and loading the model that decodes it.

Generation runs on the tiny random GPT-2 from conftest (context of 128 tokens): its replies
are gibberish, but every property tested here (cache equivalence, lengths, stop tokens,
seeding) holds for any weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2DoubleHeadsModel

from personachat.encoding.inputs import SpecialIds, build_input_from_segments
from personachat.generation.generate import (
    DecodingOptions,
    generate_replies,
    generate_reply,
    intra_op_threads,
    sample_rows,
    top_filtering,
)
from personachat.generation.prefix_cache import PrefixCache
from personachat.model.loading import (
    ModelLoadError,
    add_special_tokens_,
    load_model_and_tokenizer,
    model_class,
    resolve_device,
)
from personachat.model.scratch import train_tokenizer

from .conftest import PERSONA


@pytest.fixture(scope="module")
def chat(tiny_checkpoint):
    """(model, tokenizer, special ids) of the tiny checkpoint, loaded the way users load gpt2."""
    model, tokenizer = load_model_and_tokenizer("gpt2", tiny_checkpoint)
    model.eval()
    return model, tokenizer, SpecialIds.from_tokenizer(tokenizer)


def encode(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


HISTORY = ["hi , what do you do ?", "i am a nurse .", "any pets ?"]


# --- top_filtering --------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 3, 7, 10])
def test_top_k_keeps_exactly_the_k_best_logits(top_k):
    torch.manual_seed(0)
    logits = torch.randn(10)

    filtered = top_filtering(logits, top_k=top_k)

    kept = torch.isfinite(filtered)
    assert int(kept.sum()) == top_k
    assert set(torch.nonzero(kept).flatten().tolist()) == set(torch.topk(logits, top_k)[1].tolist())
    assert torch.equal(filtered[kept], logits[kept])  # survivors are not rescaled


def test_top_k_0_and_top_p_0_keep_everything_and_leave_the_input_alone():
    logits = torch.tensor([0.5, -1.0, 2.0])
    original = logits.clone()

    assert torch.equal(top_filtering(logits, top_k=0, top_p=0.0), original)
    top_filtering(logits, top_k=1, top_p=0.5)
    assert torch.equal(logits, original)


# Probabilities in a scrambled order, so ranks differ from positions:
# sorted: 0.5 (index 2), 0.3 (index 0), 0.15 (index 3), 0.05 (index 1).
NUCLEUS_PROBS = torch.tensor([0.3, 0.05, 0.5, 0.15])


@pytest.mark.parametrize(
    ("top_p", "expected_kept"),
    [
        (0.1, {2}),  # the best token alone already exceeds p
        (0.45, {2}),
        (0.55, {2, 0}),  # 0.5 <= p, 0.8 > p
        (0.79, {2, 0}),
        (0.81, {2, 0, 3}),  # 0.95 > p
        (0.99, {2, 0, 3, 1}),
    ],
)
def test_top_p_keeps_the_smallest_prefix_whose_mass_exceeds_p(top_p, expected_kept):
    filtered = top_filtering(NUCLEUS_PROBS.log(), top_p=top_p)

    assert set(torch.nonzero(torch.isfinite(filtered)).flatten().tolist()) == expected_kept


@pytest.mark.parametrize("seed", range(5))
def test_top_p_always_keeps_the_best_token_even_when_it_dominates(seed):
    torch.manual_seed(seed)
    logits = torch.randn(50)
    logits[seed] = 30.0  # nearly all of the mass

    filtered = top_filtering(logits, top_p=0.9)

    assert torch.nonzero(torch.isfinite(filtered)).flatten().tolist() == [seed]


def test_top_k_then_top_p_work_on_the_k_survivors():
    # After top_k=2 the renormalised mass is 0.625 / 0.375, so top_p=0.5 keeps only the best.
    logits = torch.tensor([0.5, 0.3, 0.2]).log()

    filtered = top_filtering(logits, top_k=2, top_p=0.5)

    assert torch.isfinite(filtered).tolist() == [True, False, False]


# --- generate_reply -------------------------------------------------------------------------


def reference_greedy(model, persona, history, special, options):
    """The slow, obvious greedy decoder: re-encode the whole sequence at every step."""
    prompt = build_input_from_segments(persona, history, [], special, with_eos=False)
    input_ids, token_types = list(prompt["input_ids"]), list(prompt["token_type_ids"])
    never_inside = [special.bos, special.pad, special.speaker1]
    reply = []
    for step in range(options.max_length):
        out = model(torch.tensor([input_ids]), token_type_ids=torch.tensor([token_types]))
        logits = out.logits[0, -1].clone()
        logits[never_inside] = -float("inf")
        if step < options.min_length:
            logits[sorted(special.stop_ids)] = -float("inf")
        token = int(logits.argmax())
        if token in special.stop_ids:
            break
        reply.append(token)
        input_ids.append(token)
        token_types.append(special.speaker2)
    return reply


@pytest.fixture(scope="module")
def lively_model(chat):
    """The tiny model with large random weights: greedy decoding then varies from token to
    token instead of repeating one, so a wrong position or token type changes the reply."""
    model = copy.deepcopy(chat[0])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5, generator=generator)
    return model


@pytest.mark.parametrize("history_turns", [1, 3])
def test_greedy_with_kv_cache_matches_re_encoding_every_step(chat, lively_model, history_turns):
    _, tokenizer, special = chat
    persona = encode(tokenizer, PERSONA)
    history = encode(tokenizer, HISTORY[-history_turns:])
    options = DecodingOptions.from_args(do_sample=False, max_length=15, min_length=5)

    with torch.no_grad():
        expected = reference_greedy(lively_model, persona, history, special, options)
    reply = generate_reply(lively_model, persona, history, special, options)

    assert len(set(expected)) >= 3  # a reply that says something, not one repeated token
    assert reply == expected


def test_batched_greedy_replies_equal_replies_decoded_alone(chat, lively_model):
    _, tokenizer, special = chat
    # Prompts of very different lengths: the short ones are left-padded in the batch.
    conversations = [
        (encode(tokenizer, PERSONA), encode(tokenizer, HISTORY)),
        (encode(tokenizer, PERSONA[:1]), encode(tokenizer, HISTORY[-1:])),
        ([], encode(tokenizer, ["any pets ?"])),
    ]
    options = DecodingOptions.from_args(do_sample=False, max_length=10, min_length=4)

    together = generate_replies(lively_model, conversations, special, options)
    alone = [generate_reply(lively_model, p, h, special, options) for p, h in conversations]

    assert together == alone
    assert len({tuple(r) for r in alone}) == 3  # three different replies, not one repeated


def test_replies_with_the_persona_cache_equal_replies_without_it(chat, lively_model):
    _, tokenizer, special = chat
    persona = encode(tokenizer, PERSONA)
    conversations = [
        (persona, encode(tokenizer, HISTORY)),
        (persona, encode(tokenizer, HISTORY[-1:])),  # same persona, other turn
        (persona[:1], encode(tokenizer, HISTORY[-1:])),
        ([], encode(tokenizer, ["any pets ?"])),
    ]
    options = DecodingOptions.from_args(do_sample=False, max_length=10, min_length=4)
    cache = PrefixCache()

    plain = generate_replies(lively_model, conversations, special, options)
    first = generate_replies(lively_model, conversations, special, options, prefix_cache=cache)
    again = generate_replies(lively_model, conversations, special, options, prefix_cache=cache)

    assert first == plain and again == plain
    assert len(cache) == 3 and cache.hits == 3  # three distinct personas, encoded once each
    assert len({tuple(r) for r in plain}) >= 3


def test_a_persona_cut_to_fit_the_context_is_cached_as_cut(chat):
    model, tokenizer, special = chat
    long_persona = encode(tokenizer, [f"i have {n} cats and {n} dogs ." for n in range(30)])
    conversation = [(long_persona, encode(tokenizer, HISTORY))]
    options = DecodingOptions.from_args(do_sample=False, max_length=6)
    cache = PrefixCache()
    plain = generate_replies(model, conversation, special, options)
    assert generate_replies(model, conversation, special, options, prefix_cache=cache) == plain
    assert generate_replies(model, conversation, special, options, prefix_cache=cache) == plain


def test_prefill_threads_change_no_reply_and_are_given_back(chat, lively_model):
    _, tokenizer, special = chat
    # 32 conversations: enough prompt tokens for the prompts to be encoded on more threads.
    conversations = [
        (encode(tokenizer, PERSONA[: 1 + i % 3]), encode(tokenizer, HISTORY)) for i in range(32)
    ]
    options = DecodingOptions.from_args(do_sample=False, max_length=5)
    before = torch.get_num_threads()
    plain = generate_replies(lively_model, conversations, special, options)
    threaded = generate_replies(
        lively_model, conversations, special, options, prefill_threads=before + 1
    )
    assert threaded == plain and torch.get_num_threads() == before


def test_intra_op_threads_restores_the_setting_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(KeyError), intra_op_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise KeyError("boom")
    assert torch.get_num_threads() == before


def test_sample_rows_draws_each_token_as_often_as_its_probability():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]] * 20_000)
    torch.manual_seed(0)
    counts = torch.bincount(sample_rows(probs), minlength=5) / 20_000
    assert counts[1] == 0 and counts[4] == 0  # a filtered-out token is never drawn
    torch.testing.assert_close(counts, probs[0], atol=0.015, rtol=0)


def test_sample_rows_refuses_nan_scores_with_a_clear_error():
    probs = torch.tensor([[0.5, 0.5], [float("nan"), 0.5]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        sample_rows(probs)


def test_sample_rows_never_draws_past_the_last_token_with_mass():
    # Mass only at the front, as after top-k; rounding must not push a draw into the zeros.
    probs = torch.zeros(1000, 50)
    probs[:, :3] = torch.tensor([0.2, 0.3, 0.5])
    assert int(sample_rows(probs).max()) <= 2


def eos_loving(model, special):
    """A copy of model whose LM head strongly prefers <eos>: it would stop at once if allowed."""
    model = copy.deepcopy(model)
    bias = torch.zeros(model.config.vocab_size)
    bias[special.eos] = 100.0
    head = model.lm_head

    class BiasedHead(torch.nn.Module):
        def forward(self, hidden):
            return head(hidden) + bias

    model.lm_head = BiasedHead()
    return model


def test_without_min_length_an_eos_loving_model_says_nothing(chat):
    model, tokenizer, special = chat
    model = eos_loving(model, special)
    options = DecodingOptions.from_args(do_sample=False, max_length=10, min_length=0)

    assert (
        generate_reply(
            model, encode(tokenizer, PERSONA), encode(tokenizer, HISTORY), special, options
        )
        == []
    )


@pytest.mark.parametrize("min_length", [1, 4, 9])
def test_min_length_forces_that_many_ordinary_tokens(chat, min_length):
    model, tokenizer, special = chat
    model = eos_loving(model, special)

    for do_sample in (False, True):
        torch.manual_seed(0)
        options = DecodingOptions.from_args(
            do_sample=do_sample, max_length=12, min_length=min_length
        )
        reply = generate_reply(
            model, encode(tokenizer, PERSONA), encode(tokenizer, HISTORY), special, options
        )

        # <eos> wins as soon as it is allowed, so the reply is exactly min_length long.
        assert len(reply) == min_length
        assert not set(reply) & special.stop_ids


def test_min_length_above_max_length_stops_at_max_length(chat):
    model, tokenizer, special = chat
    options = DecodingOptions.from_args(do_sample=False, max_length=3, min_length=8)

    reply = generate_reply(
        model, encode(tokenizer, PERSONA), encode(tokenizer, HISTORY), special, options
    )

    assert len(reply) == 3
    assert not set(reply) & special.stop_ids


@pytest.mark.parametrize("max_length", [1, 2, 6])
def test_max_length_is_honoured(chat, max_length):
    model, tokenizer, special = chat
    # min_length = max_length: no early stop, so the limit itself must end the reply.
    options = DecodingOptions.from_args(
        do_sample=True, max_length=max_length, min_length=max_length, top_p=0.9, temperature=0.7
    )

    torch.manual_seed(1)
    reply = generate_reply(
        model, encode(tokenizer, PERSONA), encode(tokenizer, HISTORY), special, options
    )

    assert len(reply) == max_length


def test_sampling_with_the_same_seed_gives_the_same_reply(chat):
    model, tokenizer, special = chat
    persona, history = encode(tokenizer, PERSONA), encode(tokenizer, HISTORY)
    options = DecodingOptions.from_args(
        do_sample=True, max_length=12, min_length=12, temperature=1.0, top_p=0.0, top_k=0
    )

    torch.manual_seed(123)
    first = generate_reply(model, persona, history, special, options)
    torch.manual_seed(123)
    second = generate_reply(model, persona, history, special, options)
    replies = set()
    for seed in range(3):
        torch.manual_seed(seed)
        replies.add(tuple(generate_reply(model, persona, history, special, options)))

    assert first == second
    assert len(replies) > 1  # sampling really samples: other seeds give other replies


def test_a_conversation_longer_than_the_context_does_not_crash(chat):
    model, tokenizer, special = chat
    assert model.config.n_positions == 128
    persona = encode(tokenizer, PERSONA * 20)  # hundreds of tokens
    history = encode(tokenizer, [" ".join(HISTORY * 10)] * 5)
    options = DecodingOptions.from_args(
        do_sample=False, max_length=20, min_length=20, max_history=10
    )

    reply = generate_reply(model, persona, history, special, options)

    assert len(reply) == 20


def test_max_length_that_fills_the_context_is_refused(chat):
    model, tokenizer, special = chat

    with pytest.raises(ValueError, match="lower max_length"):
        generate_reply(
            model,
            encode(tokenizer, PERSONA),
            encode(tokenizer, HISTORY),
            special,
            DecodingOptions.from_args(max_length=125, do_sample=False),
        )


# --- loading the model ----------------------------------------------------------------------


def test_add_special_tokens_is_idempotent():
    tokenizer = train_tokenizer(["i have a cat .", "i work as a nurse ."], vocab_size=300)
    model = GPT2DoubleHeadsModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    )
    base = len(tokenizer)

    assert add_special_tokens_(model, tokenizer) == 5
    assert len(tokenizer) == base + 5
    embeddings = model.get_input_embeddings()
    assert embeddings.num_embeddings == base + 5

    resizes = []
    resize = model.resize_token_embeddings
    model.resize_token_embeddings = lambda *a, **kw: resizes.append(a) or resize(*a, **kw)
    assert add_special_tokens_(model, tokenizer) == 0
    assert resizes == []
    assert len(tokenizer) == base + 5
    assert model.get_input_embeddings() is embeddings
    assert embeddings.num_embeddings == base + 5
    SpecialIds.from_tokenizer(tokenizer)  # all five now resolve


def test_loaded_checkpoint_has_the_special_tokens_once(chat, tiny_checkpoint):
    model, tokenizer, _ = chat

    assert tokenizer.convert_ids_to_tokens(
        tokenizer.convert_tokens_to_ids(["<bos>", "<eos>", "<speaker1>", "<speaker2>", "<pad>"])
    ) == ["<bos>", "<eos>", "<speaker1>", "<speaker2>", "<pad>"]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_use_cuda_without_cuda_is_an_error_that_says_what_to_do():
    with pytest.raises(ModelLoadError, match="use_cuda=False"):
        resolve_device(True)


def test_cpu_and_auto_devices():
    assert resolve_device(False) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_unknown_model_type_is_a_model_load_error(tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="'bert'"):
        model_class("bert")
    with pytest.raises(ModelLoadError, match="Unknown model_type"):
        load_model_and_tokenizer("gpt3", tiny_checkpoint)


def test_model_types_of_simpletransformers_map_to_double_heads_models():
    assert model_class("gpt2") is GPT2DoubleHeadsModel
    assert model_class("gpt").__name__ == "OpenAIGPTDoubleHeadsModel"


def test_a_missing_local_folder_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_and_tokenizer("gpt2", str(tmp_path / "nowhere"))
