"""hits@1 by the language model: rank an utterance's candidates by how likely the model finds
each reply after the context, for any causal LM (no multiple-choice head needed).

A candidate's score is the mean log-probability of its reply tokens, end-of-turn token
included: exactly the ``lm_labels`` positions of ``special.build(..., lm_labels=True)``. The
candidates of one utterance share everything before their first reply token (persona,
history, the reply's speaker token or assistant header), so that context runs through the
model once, keeping its keys and values (``use_cache``); then all candidates run as one
batch that continues from those keys and values, expanded to the batch. Compared with a
full forward pass per candidate (``full_scores``, the reference), the context is computed
once instead of ``num_candidates`` times: with a context of 200 tokens and 20 replies of 20
tokens, 600 token positions instead of 4,400.

Models without a KV cache in transformers (OpenAI GPT) are scored by ``full_scores``.
Which ranking ``eval_model`` uses is the ``eval_ranking`` option: ``"mc"`` the
multiple-choice head, ``"lm"`` this, ``"pmi"`` this less ``PMI_WEIGHT`` times the same
reply's score without persona and history (``pmi_scores``), ``"auto"`` the head only when
the model was trained with one (``choice_head_trained``).

Why ``"pmi"``: ranked by likelihood alone, short generic replies ("that sounds fun !") that
fit any conversation beat the gold reply, because they are likely everywhere. Subtracting
what a reply scores with no context keeps what the context adds: the pointwise mutual
information of reply and context when the weight is 1 (Li et al. 2016 use it against
generic replies). The weight 0.75 was chosen on training conversations the main job's mix
never drew, not on the held-out ones (weights 0.25 / 0.5 / 0.75 / 1: hits@1 among 20
0.65 / 0.74 / 0.78 / 0.72 on 74 replies; benchmarks/RESULTS.md, issue 21).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from personachat.data.candidates import add_distractors, normalise
from personachat.encoding.inputs import IGNORE_INDEX, InputFormat, reply_history, truncate_to_fit
from personachat.model.conventions import read_json
from personachat.model.device import autocast
from personachat.model.families import causal_lm, lm_head, run_body, saved_head_state

Row = dict[str, list[int]]  # special.build(..., lm_labels=True)
MAX_CANDIDATES_PER_PASS = 32  # candidates continued from one context in one forward pass
RANKINGS = ("auto", "mc", "lm", "pmi")  # eval_ranking's values
LM_RANKINGS = ("lm", "pmi")  # rankings by the language model: no multiple-choice head
PMI_WEIGHT = 0.75  # of a reply's context-free score "pmi" subtracts (chosen on training data)
RANKING_NAMES = {  # how reports name each ranking
    "mc": "multiple-choice head",
    "lm": "language model",
    "pmi": "language model, less the context-free score",
}


# ----------------------------------------------------------------------------- which ranking
def choice_head_trained(model_name: str | Path) -> bool:
    """Whether the model saved in folder ``model_name`` has a trained multiple-choice head:
    its weights hold the head and its ``model_args.json`` trained it (``mc_coef`` > 0 over at
    least two candidates); without that file, a folder that is not an untrained scratch
    checkpoint (simpletransformers' pickle folders and TransferTransfo checkpoints trained
    theirs). A hub id, a GGUF or ``smollm2`` get a freshly initialised head: False."""
    folder = Path(str(model_name)).expanduser()
    if not folder.is_dir():
        return False
    saved = read_json(folder / "model_args.json")
    if not isinstance(saved, dict):
        config = read_json(folder / "config.json")
        if isinstance(config, dict) and "scratch" in config:  # built here, never fine-tuned
            return False
    else:
        mc_coef, candidates = saved.get("mc_coef", 1.0), saved.get("num_candidates", 2)
        if not isinstance(mc_coef, int | float) or mc_coef <= 0:
            return False
        if not isinstance(candidates, int) or candidates < 2:
            return False
    return bool(saved_head_state(folder)) or (folder / "pytorch_model.bin").is_file()


def resolve_ranking(requested: str, head_trained: bool, candidates: int = 2) -> str | None:
    """``eval_ranking`` resolved: ``"auto"`` is ``"mc"`` with a trained head, else ``"lm"``;
    None with a single candidate (nothing to rank: no ranking figure is reported)."""
    if candidates < 2:
        return None
    if requested == "auto":
        return "mc" if head_trained else "lm"
    return requested


# ----------------------------------------------------------------------------- candidates
CONVAI2_CANDIDATES = 20  # hits@1 ranks the gold reply among 20 in ConvAI2


def distractor_capacity(dialogs: Sequence[dict]) -> int:
    """How many distractors every utterance can get from the other dialogs' gold replies
    (``add_distractors`` never takes a dialog's own replies)."""
    golds = [{normalise(u["candidates"][-1]) for u in d["utterances"]} - {""} for d in dialogs]
    pool = set().union(*golds) if golds else set()
    return min((len(pool - own) for own in golds), default=0)


def with_candidates_to_rank(
    dialogs: Sequence[dict], requested: int | None, seed: int = 0
) -> list[dict]:
    """A file of conversations (one candidate per utterance, the gold reply: a
    Synthetic-Persona-Chat CSV, chat logs) gets distractors to rank the gold reply among:
    ``requested`` candidates (``eval_num_candidates``), or, when None, 20 as ConvAI2 ranks
    them (fewer when the file has not 19 other replies to offer). They are other dialogs'
    gold replies, sampled with ``seed`` (``data.candidates.add_distractors``): the same file
    gives the same candidates every time. Dialogs that come with candidates, and
    ``requested`` 1, are returned as they are."""
    single = all(len(u["candidates"]) == 1 for d in dialogs for u in d["utterances"])
    if not single or requested == 1:
        return list(dialogs)
    count = requested or min(CONVAI2_CANDIDATES, 1 + distractor_capacity(dialogs))
    return add_distractors(dialogs, count, seed=seed)[0] if count > 1 else list(dialogs)


# ----------------------------------------------------------------------------- inputs
def candidate_rows(
    special: InputFormat,
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    max_tokens: int,
) -> list[Row]:
    """Each candidate laid out after one shared context: the persona and ``history`` cut
    (oldest history first) so that the longest candidate fits ``max_tokens``."""
    longest = max(candidates, key=len)
    persona, history, _ = truncate_to_fit(persona, history, longest, max_tokens, special.overheads)
    return [special.build(persona, history, c, lm_labels=True) for c in candidates]


def shared_context(rows: Sequence[Row]) -> int:
    """Where the replies start: the first labelled position, the same in every row (a
    ValueError otherwise: rows built for different contexts would be scored wrongly)."""
    starts = {next(i for i, t in enumerate(r["lm_labels"]) if t != IGNORE_INDEX) for r in rows}
    start = starts.pop()
    first = rows[0]
    for row in rows:
        same = all(row[k][:start] == first[k][:start] for k in ("input_ids", "token_type_ids"))
        if starts or not same:
            raise ValueError("the candidates' inputs do not share their context")
    return start


# ----------------------------------------------------------------------------- scoring
def cache_keyword(model) -> str | None:
    """The keyword the model's body takes its KV cache by (``cache`` from transformers 5.24,
    ``past_key_values`` before), or None for a model without one (OpenAI GPT)."""
    parameters = inspect.signature(causal_lm(model).base_model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in parameters), None)


@torch.inference_mode()
def shared_context_scores(
    model, rows: Sequence[Row], device: torch.device, dtype=None
) -> list[float]:
    """Mean log-probability of each row's labelled tokens, the shared context run once.

    ``rows``: one utterance's candidates (``candidate_rows``); ``dtype``: autocast dtype
    (None: full precision). Equal to ``full_scores`` up to float rounding."""
    keyword = cache_keyword(model)
    if keyword is None:
        return full_scores(model, rows, device, dtype)
    from transformers import DynamicCache

    start = shared_context(rows)
    ids = torch.tensor([rows[0]["input_ids"][:start]], device=device)
    types = torch.tensor([rows[0]["token_type_ids"][:start]], device=device)
    context_cache = DynamicCache()
    with autocast(device, dtype):
        out = run_body(model, ids, types, use_cache=True, **{keyword: context_cache})
        first = F.log_softmax(lm_head(model)(out.last_hidden_state[0, -1]).float(), dim=-1)
    layers = [tuple(entry)[:2] for entry in context_cache]
    scores: list[float] = []
    for at in range(0, len(rows), MAX_CANDIDATES_PER_PASS):
        chunk = rows[at : at + MAX_CANDIDATES_PER_PASS]
        scores += _continued_scores(model, chunk, start, layers, first, keyword, dtype, device)
    return scores


def _continued_scores(model, rows, start, layers, first, keyword, dtype, device) -> list[float]:
    """Scores of ``rows`` run as one right-padded batch after the context's keys and values
    ``layers`` (expanded to the batch, not copied); ``first``: the log-probabilities of the
    first reply token, read from the context's last position."""
    from transformers import DynamicCache

    n = len(rows)
    replies = [r["input_ids"][start:] for r in rows]
    width = max(map(len, replies))
    ids = torch.tensor([r + [r[-1]] * (width - len(r)) for r in replies], device=device)
    types = torch.tensor(
        [
            r["token_type_ids"][start:] + [0] * (width - len(t))
            for r, t in zip(rows, replies, strict=True)
        ],
        device=device,
    )
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys.expand(n, -1, -1, -1), values.expand(n, -1, -1, -1), index)
    positions = torch.arange(start, start + width, device=device).expand(n, -1)
    # Right padding and causal attention: no real token ever attends to the padding after it.
    with autocast(device, dtype):
        out = run_body(
            model, ids, types, position_ids=positions, use_cache=True, **{keyword: cache}
        )
        hidden = out.last_hidden_state[:, :-1]  # position t predicts token t + 1
        lengths = torch.tensor([len(r) for r in replies], device=device)
        mask = torch.arange(width - 1, device=device)[None] < (lengths[:, None] - 1)
        logits = lm_head(model)(hidden[mask]).float()
    nll = F.cross_entropy(logits, ids[:, 1:][mask], reduction="none")
    per_row = torch.zeros(n, device=device).index_add_(0, mask.nonzero()[:, 0], nll)
    per_row = per_row - first[ids[:, 0]]  # the first reply token, predicted by the context
    return (-per_row / lengths).tolist()


@torch.inference_mode()
def full_scores(model, rows: Sequence[Row], device: torch.device, dtype=None) -> list[float]:
    """The reference: each row's mean log-probability of its labelled tokens from one full
    forward pass over the right-padded rows (the context computed once per candidate)."""
    width = max(len(r["input_ids"]) for r in rows)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], device=device)

    ids, types = padded("input_ids", 0), padded("token_type_ids", 0)
    targets = padded("lm_labels", IGNORE_INDEX)[:, 1:]
    mask = targets != IGNORE_INDEX
    with autocast(device, dtype):
        hidden = run_body(model, ids, types).last_hidden_state[:, :-1]
        logits = lm_head(model)(hidden[mask]).float()
    nll = F.cross_entropy(logits, targets[mask], reduction="none")
    per_row = torch.zeros(len(rows), device=device).index_add_(0, mask.nonzero()[:, 0], nll)
    return (-per_row / mask.sum(1)).tolist()


# ----------------------------------------------------------------------------- hits@1
def candidate_scores(
    model,
    special: InputFormat,
    encode: Callable[[str], list[int]],
    dialogs: Sequence[dict],
    utterances: Sequence[tuple[int, int]],
    args,
    device: torch.device,
    max_tokens: int,
    num_candidates: int,
    *,
    dtype=None,
    silent: bool = True,
    scores_fn: Callable = shared_context_scores,
    context_free: bool = False,
) -> dict[tuple[int, int], tuple[list[float], list[float] | None]]:
    """Each utterance's (dialog, utterance index) scores of its last ``num_candidates``
    candidates after the context a reply reads (``reply_history``: ``max_history`` messages,
    or the newest within ``max_history_tokens`` for chat templates) and, with
    ``context_free``, their scores with neither persona nor history (else None). A reply's
    context-free score is the same wherever it is a distractor, so each distinct reply is
    scored once."""
    model.eval()
    budget = getattr(args, "max_history_tokens", 0)
    known: dict[tuple[int, ...], float] = {}
    scored: dict[tuple[int, int], tuple[list[float], list[float] | None]] = {}

    def alone(candidates: list[list[int]]) -> list[float]:
        new = list(dict.fromkeys(tuple(c) for c in candidates if tuple(c) not in known))
        if new:
            rows = candidate_rows(special, [], [], new, max_tokens)
            known.update(zip(new, scores_fn(model, rows, device, dtype), strict=True))
        return [known[tuple(c)] for c in candidates]

    for d, u in tqdm(utterances, desc="Ranking by the LM", disable=silent, leave=False):
        dialog = dialogs[d]
        utterance = dialog["utterances"][u]
        persona = [encode(s) for s in dialog["personality"]]
        history = [encode(h) for h in utterance["history"]]
        history = reply_history(history, special, args.max_history, budget)
        candidates = [encode(c) for c in utterance["candidates"][-num_candidates:]]
        rows = candidate_rows(special, persona, history, candidates, max_tokens)
        scores = scores_fn(model, rows, device, dtype)
        scored[d, u] = (scores, alone(candidates) if context_free else None)
    return scored


def pmi_pick(scores: Sequence[float], alone: Sequence[float] | None, weight: float) -> int:
    """The candidate ranked first by ``score - weight * context-free score`` (by the score
    alone when ``weight`` is 0 or there are no context-free scores)."""
    if weight and alone is not None:
        scores = [s - weight * a for s, a in zip(scores, alone, strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)


def lm_ranking(
    model,
    special: InputFormat,
    encode: Callable[[str], list[int]],
    dialogs: Sequence[dict],
    index: Sequence[tuple],
    args,
    device: torch.device,
    max_tokens: int,
    num_candidates: int,
    *,
    dtype=None,
    silent: bool = True,
    scores_fn: Callable = shared_context_scores,
    pmi_weight: float = 0.0,
) -> tuple[list[int], list[int]]:
    """(labels, preds) of every example of ``index`` (``(dialog, utterance, ...)`` each, as
    a dataset's index) when the language model ranks the last ``num_candidates`` candidates
    of its utterance (the gold one last, so the label is ``num_candidates - 1``), scored by
    ``candidate_scores``. ``pmi_weight`` > 0: each score less that weight times the
    candidate's score with neither persona nor history (``eval_ranking`` ``"pmi"``)."""
    utterances = list(dict.fromkeys((d, u) for d, u, *_ in index))
    scored = candidate_scores(
        model,
        special,
        encode,
        dialogs,
        utterances,
        args,
        device,
        max_tokens,
        num_candidates,
        dtype=dtype,
        silent=silent,
        scores_fn=scores_fn,
        context_free=bool(pmi_weight),
    )
    picks = {key: pmi_pick(*scored[key], pmi_weight) for key in scored}
    preds = [picks[d, u] for d, u, *_ in index]
    return [num_candidates - 1] * len(preds), preds
