"""``personachat export MODEL OUT``: a plain ``*ForCausalLM`` folder any engine serves.

A personachat model folder holds more than standard engines expect: GPT-2's weights are a
``GPT2DoubleHeadsModel``, other families carry the multiple-choice head inside
``model.safetensors``, and a LoRA model in memory is a peft wrapper. The export is the
language model alone (GPT-2 → ``GPT2LMHeadModel``, others their own ``*ForCausalLM``; LoRA
merged; personachat's config keys dropped), with the tokenizer and its chat template,
``generation_config.json`` and a model card (``conventions``), written atomically. Decoded
greedily with ``apply_chat_template`` + ``generate`` it gives personachat's greedy reply.

A model trained with token types (``token_types: embed``, GPT-2's TransferTransfo default)
adds a speaker embedding to every input position. No standard engine passes token types, so
such a model cannot be exported exactly: the export refuses (``--allow-inexact`` exports it
anyway and says what is lost). ``--gguf`` adds a llama.cpp file (``gguf_export``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from personachat.args import ConvAIArgs
from personachat.config import RUN_OPTIONS
from personachat.errors import PersonachatError
from personachat.fs import write_folder_atomic
from personachat.model.conventions import (
    MAX_INCLUDED_BYTES,
    chat_template_for_saving,
    input_format,
    write_conventions,
)
from personachat.model.device import use_cpu_bf16
from personachat.model.families import (
    HEAD_PREFIX,
    TOKEN_TYPES_KEY,
    causal_lm,
    family,
    is_double_heads,
    uses_token_types,
)
from personachat.model.gguf_quants import FORMATS, Q4_1, finetune_in_4bit, stored_weight
from personachat.model.loading import (
    load_model_and_tokenizer,
    make_input_format,
    resolve_input_format,
    unwrap,
)
from personachat.model.lora import base_state, merged
from personachat.progress import reporting, step

PERSONACHAT_CONFIG_KEYS = (TOKEN_TYPES_KEY, "scratch")
REPORT_COMPANIONS = ("training_curves.png", "samples.md")
# Written into every exported folder: --overwrite replaces only a folder that holds it.
EXPORT_MARKER = ".personachat-export.json"
TOKEN_TYPES_LOSS = (
    "exported inexactly: the speaker embeddings (token types) this model adds to every input "
    "position are dropped, so the exported model's replies differ from personachat's"
)


class ExportError(PersonachatError, ValueError):
    """The model cannot be exported as asked; the message says why and what to do."""


def token_types_refusal(name: str) -> str:
    """Why a model trained with token types is not exported, and how to train one that is."""
    return (
        f"{name} was trained with token types (token_types: embed, GPT-2's TransferTransfo "
        "default): every input position also gets the embedding of its speaker token. "
        "Standard engines (transformers' generate with a chat template, vLLM, TGI, llama.cpp) "
        "never pass token_type_ids, so the exported model would see different inputs and "
        "give different replies than personachat. Train a model that exports exactly with "
        "`--set token_types=none` (the speaker tokens stay in the text; no extra embedding) "
        "or `--set input_format=chat_template` (a model whose tokenizer has a chat "
        "template), or pass --allow-inexact to export this one without its token types."
    )


def plain_causal_lm(model) -> torch.nn.Module:
    """The language model alone, on the CPU: GPT-2 / OpenAI GPT double heads as their
    ``*LMHeadModel``, other families without ``multiple_choice_head``; LoRA merged. The
    model passed in is left as it was."""
    import transformers

    lora = hasattr(unwrap(model), "merge_and_unload")
    lm = causal_lm(merged(unwrap(model)))  # a merged copy for LoRA, else the model itself
    config = copy.deepcopy(lm.config)
    for key in PERSONACHAT_CONFIG_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    if is_double_heads(lm):
        plain = getattr(transformers, family(config.model_type).lm_class)(config)
        state = {k: v for k, v in lm.state_dict().items() if not k.startswith(HEAD_PREFIX)}
        plain.load_state_dict(state, strict=True)
        plain.to(next(lm.parameters()).dtype)
    else:
        plain = lm if lora else copy.deepcopy(lm)
        if hasattr(plain, "multiple_choice_head"):
            del plain.multiple_choice_head
        plain.config = config
    return plain.to("cpu").eval()


def export_model(
    model,
    tokenizer,
    args: ConvAIArgs,
    out: str | os.PathLike,
    *,
    gguf: bool = False,
    gguf_half: bool = False,
    gguf_format: str | None = None,
    overwrite: bool = False,
    allow_inexact: bool = False,
    source: str | os.PathLike | None = None,
) -> tuple[Path, list[str]]:
    """Write the plain folder of a loaded model (``ConvAIModel``'s ``model``, ``tokenizer``
    and ``args``) to ``out``; ``source``: the folder whose report and evaluation results the
    card shows. ``gguf_format``: the GGUF file's matrices (``gguf_export.FORMATS``; default
    float32, or float16 with ``gguf_half``). Returns the folder and the notes about what was
    lost (empty when exact)."""
    out = Path(out)
    kind = gguf_format or ("f16" if gguf_half else "f32")
    if kind not in FORMATS:
        raise ExportError(f"GGUF format {kind!r}: choose one of {', '.join(FORMATS)}")
    gguf = gguf or gguf_format is not None
    check_target(out, overwrite, source)
    notes = []
    if uses_token_types(model):
        if not allow_inexact:
            raise ExportError(token_types_refusal(str(source or "this model")))
        notes.append(TOKEN_TYPES_LOSS)
    layout = resolve_input_format(args.input_format, model, tokenizer)
    with step("preparing the language model"):
        plain = plain_causal_lm(model)
    precision = precision_record(args, next(plain.parameters()).dtype)
    if gguf:
        from personachat.model.gguf_export import check_gguf_exportable

        check_gguf_exportable(plain.config)  # before anything is written
        if kind == Q4_1:
            notes.append(check_finetune_survives_4bit(model, plain, args, source))

    def fill(tmp: Path) -> None:
        with step("writing weights"):
            plain.save_pretrained(tmp, safe_serialization=True)
        with chat_template_for_saving(tokenizer, layout, args):
            tokenizer.save_pretrained(tmp)
            if gguf:
                with step("writing the GGUF file and reading it back"):
                    write_checked_gguf(tmp / f"{out.name}.gguf", plain, tokenizer, layout, kind)
        write_conventions(tmp, tokenizer, args, layout, source, name=out.name, exported=True)
        with open(tmp / "README.md", "a", encoding="utf-8") as card:
            if notes:
                card.write("\n## Export\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
            card.write(precision_section(precision))
        if source is not None and Path(source).is_dir():
            include_files(Path(source), tmp, REPORT_COMPANIONS)
        marker = {"exported_from": str(source) if source else None, "precision": precision}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker) + "\n")

    write_folder_atomic(out, fill)
    return out, notes


def precision_record(args: ConvAIArgs, weights: torch.dtype = torch.float32) -> dict:
    """The precision personachat trains and decodes the model in (its options, and what they
    mean on this machine's CPU) beside the export's ``weights`` dtype: greedy replies of the
    export in float32 equal personachat's only where personachat decodes in float32 too."""
    decoded = "bfloat16" if use_cpu_bf16(args.cpu_bf16) else "float32"
    return {
        "weights": str(weights).removeprefix("torch."),
        "cpu_bf16": args.cpu_bf16,
        "fp16": bool(args.fp16),
        "personachat_decodes_here_in": decoded,
        "greedy_equal_in_float32": decoded == "float32",
    }


def precision_section(record: dict) -> str:
    """The card's account of ``precision_record``."""
    options = f"`cpu_bf16: {str(record['cpu_bf16']).lower()}`"
    if record["fp16"]:
        options += " (and `fp16: true`: mixed precision on CUDA)"
    lines = [
        f"- Weights: {record['weights']}. personachat trains and decodes this model with {options}: on "
        f"the CPU of the machine that exported it, it decodes in {record['personachat_decodes_here_in']} "
        "(bfloat16 only where the CPU has it in hardware for `auto`). The training report "
        "above says the precision its training ran in.",
        "- transformers' `generate` on this folder (float32) gives personachat's greedy replies "
        "when personachat decodes in float32 too (`cpu_bf16: false`, or `auto` on a CPU "
        "without bf16 in hardware). "
        + (
            "Here it does."
            if record["greedy_equal_in_float32"]
            else "Here personachat decodes in bfloat16, so a greedy reply can differ where two "
            "tokens score almost the same; compare with `--set cpu_bf16=false`."
        ),
    ]
    return "\n## Precision\n\n" + "\n".join(lines) + "\n"


def write_checked_gguf(path: Path, plain, tokenizer, layout: str, kind: str) -> None:
    """The GGUF file, kept only if it reads back as ``plain`` (``gguf_export.verify_gguf``):
    compared on chat prompts rendered with the exported template, and on random ids."""
    from personachat.model.gguf_export import verify_gguf, write_gguf

    special = input_format(layout, tokenizer)
    ends = sorted(special.reply_enders)
    prompts = [
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        for messages in SAMPLE_CONVERSATIONS
    ]
    reference = as_stored(plain, kind)
    try:
        write_gguf(path, plain, tokenizer, eos_id=ends[0], kind=kind)
        verify_gguf(path, reference, tokenizer, prompts)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


SAMPLE_CONVERSATIONS = (
    [
        {"role": "system", "content": "i have a cat named tom .\ni work as a nurse ."},
        {"role": "user", "content": "hi , what do you do ?"},
    ],
    [
        {"role": "system", "content": "i love pizza ."},
        {"role": "user", "content": "hello !"},
        {"role": "assistant", "content": "hi there , how are you ?"},
        {"role": "user", "content": "fine . any pets ?"},
    ],
)


def as_stored(model, kind: str) -> torch.nn.Module:
    """``model`` with its weights as a ``kind`` GGUF file stores them (float16, or 8/4-bit
    blocks, read back to float32): the model the written file must equal."""
    if kind == "f32":
        return model
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for param in rounded.parameters():
            weight = stored_weight(param.detach().float().numpy(), kind)
            param.copy_(torch.from_numpy(weight).to(param.dtype))
    return rounded


def check_finetune_survives_4bit(model, plain, args: ConvAIArgs, source) -> str:
    """Refuse a 4-bit file that would give back the base model: compare the fine-tune's Q4_1
    blocks with its base's (a LoRA model's weights under the adapters, else the model its
    options name, ``model_name``). Returns the measurement for the card when it is kept."""
    base = base_weights(model, args, source)
    if base is None:
        return "4-bit (Q4_1) GGUF: no base model to compare with; the model is its own base"
    tuned = {name: t.detach().float().numpy() for name, t in plain.state_dict().items()}
    measured = finetune_in_4bit(base, tuned)
    if not measured.blocks:
        return "4-bit (Q4_1) GGUF: the weights equal those of the base model they name"
    if measured.mostly_base:
        raise ExportError(
            f"a 4-bit (Q4_1) GGUF of this fine-tune would be its base model again: "
            f"{measured.describe()}. Export with --gguf-q8_0 (8-bit blocks keep the "
            "fine-tune; the file is about 1.9x larger) or --gguf-f16"
        )
    return f"4-bit (Q4_1) GGUF: {measured.describe()}"


def base_weights(model, args: ConvAIArgs, source) -> dict | None:
    """The float32 weights (plain names) of the model ``model`` was fine-tuned from, or None
    when there is none to load (a model exported as it was downloaded)."""
    lm = unwrap(model)
    if hasattr(lm, "merge_and_unload"):
        state = base_state(lm)
    else:
        name = args.model_name
        if not name or (source is not None and same_model(name, source)):
            return None
        try:
            base, _ = load_model_and_tokenizer("auto", name, cache_dir=args.cache_dir)
        except (OSError, ValueError, PersonachatError) as err:
            raise ExportError(
                f"a 4-bit (Q4_1) GGUF is checked against the base model {name!r} (does the "
                f"fine-tune survive 4-bit rounding?), which cannot be loaded here ({err}); "
                "export with --gguf-q8_0 instead"
            ) from err
        state = causal_lm(base).state_dict()
    return {
        name: tensor.detach().float().numpy()
        for name, tensor in state.items()
        if not name.startswith(HEAD_PREFIX)
    }


def same_model(name: str, source) -> bool:
    """Whether ``name`` and ``source`` name the same folder (or the same hub id)."""
    if Path(name).is_dir() and Path(source).is_dir():
        return Path(name).resolve() == Path(source).resolve()
    return str(name) == str(source)


def check_target(out: Path, overwrite: bool, source: str | os.PathLike | None = None) -> None:
    """OUT must be a new or empty folder, or one personachat exported before (its
    ``EXPORT_MARKER``) with ``overwrite``: the export replaces OUT whole, so it never
    replaces a folder it did not write. Around a local MODEL folder, OUT may not be MODEL,
    hold MODEL, or be a folder already inside MODEL (only a fresh one there)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; name a folder to export into")
    if source is not None and Path(source).expanduser().is_dir():
        check_apart(out, Path(source).expanduser())
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ExportError(
            f"{out} is not empty; choose a new folder, or pass --overwrite to replace a "
            "folder personachat exported before"
        )
    if not (out / EXPORT_MARKER).is_file():
        raise ExportError(
            f"{out} is not empty and was not written by personachat export (it has no "
            f"{EXPORT_MARKER}); --overwrite only replaces a folder personachat exported, so "
            "nothing of yours is deleted: choose a new folder, or empty this one yourself"
        )


def check_apart(out: Path, model: Path) -> None:
    """Refuse an OUT that is the model folder, holds it, or already exists inside it."""
    out_real, model_real = out.resolve(), model.resolve()
    if out_real == model_real:
        raise ExportError(f"OUT {str(out)!r} is the model folder itself; export into another")
    if out_real in model_real.parents:
        raise ExportError(
            f"OUT {str(out)!r} holds the model folder {str(model)!r}: exporting there would "
            "replace the model it reads; export into a new folder beside it"
        )
    if model_real in out_real.parents and out.exists() and any(out.iterdir()):
        raise ExportError(
            f"OUT {str(out)!r} is a folder inside the model folder {str(model)!r} that holds "
            "files already; export into a new folder"
        )


def load_for_export(name: str):
    """Model, tokenizer and options of a saved model (its ``model_args.json``), loaded on
    the CPU the way personachat runs it."""
    args = ConvAIArgs()
    if Path(name).is_dir():
        args.load(name, exclude=RUN_OPTIONS)
    args.model_name = args.model_name or name
    model, tokenizer = load_model_and_tokenizer(
        "auto", name, cache_dir=args.cache_dir, input_format=args.input_format
    )
    if args.token_types == "auto":  # a folder without model_args.json: its config says
        args.token_types = getattr(causal_lm(model).config, TOKEN_TYPES_KEY, "auto")
    make_input_format(args, model, tokenizer)
    return model, tokenizer, args


def export_folder(
    name: str | os.PathLike, out: str | os.PathLike, **options
) -> tuple[Path, list[str]]:
    """Export the saved model ``name`` (a folder, or any name personachat loads) to ``out``
    (options as ``export_model``'s)."""
    check_target(Path(out), options.get("overwrite", False), source=name)
    with step(f"loading {name}", bars=True):
        model, tokenizer, args = load_for_export(str(name))
    return export_model(model, tokenizer, args, out, source=name, **options)


def add_export_command(sub: argparse._SubParsersAction) -> None:
    """The ``export`` subcommand of the CLI."""
    p = sub.add_parser("export", help="write a plain causal-LM folder that standard engines serve")
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a model folder saved by personachat (or any model it loads: a hub id, smollm2)",
    )
    p.add_argument("out", metavar="OUT", help="the folder to write (new or empty)")
    p.add_argument(
        "--gguf",
        action="store_true",
        help="also write OUT/NAME.gguf (NAME: OUT's folder name) for llama.cpp / Ollama "
        "(Llama and Qwen2 models; float32)",
    )
    p.add_argument("--gguf-f16", action="store_true", help="the GGUF file's matrices in float16")
    p.add_argument(
        "--gguf-q8_0",
        action="store_true",
        help="the GGUF file's matrices in llama.cpp's 8-bit Q8_0 blocks (keeps a fine-tune)",
    )
    p.add_argument(
        "--gguf-q4_1",
        action="store_true",
        help="the GGUF file's matrices in llama.cpp's 4-bit Q4_1 blocks (refused for a "
        "fine-tune that 4-bit rounding would turn back into its base model)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an OUT that personachat exported before (never any other folder)",
    )
    p.add_argument(
        "--allow-inexact",
        action="store_true",
        help="export a model trained with token types anyway (its replies will differ)",
    )
    p.add_argument("--quiet", action="store_true", help="no status lines while it works")


def run_export_command(options: argparse.Namespace) -> int:
    """``personachat export``: write the folder, print where and what was lost (if anything)."""
    formats = [k for k in ("f16", "q8_0", "q4_1") if getattr(options, f"gguf_{k}")]
    if len(formats) > 1:
        raise ExportError(
            f"choose one GGUF format; --gguf-{' and --gguf-'.join(formats)} were all given"
        )
    fmt = formats[0] if formats else ("f32" if options.gguf else None)
    with reporting("personachat export", quiet=options.quiet):
        out, notes = export_folder(
            options.model,
            options.out,
            gguf_format=fmt,
            overwrite=options.overwrite,
            allow_inexact=options.allow_inexact,
        )
    for note in notes:
        level = "note" if note.startswith("4-bit") else "warning"
        print(f"personachat export: {level}: {note}", file=sys.stderr)
    gguf = f" and {out.name}.gguf ({fmt})" if fmt else ""
    print(f"Exported {options.model} to {out} (a plain causal-LM folder{gguf})")
    return 0


def include_files(source: Path, target: Path, names: Sequence[str]) -> None:
    """Copy the report's companion files (curves, samples) that exist in ``source``."""
    for name in names:
        path = source / name
        if path.is_file() and path.stat().st_size <= 16 * MAX_INCLUDED_BYTES:
            (target / name).write_bytes(path.read_bytes())
