"""Prose character descriptions: personas written the way people write character cards.

The persona of a dialog here is not a list of short first-person facts ("i work as a nurse .")
but a description in prose, third person, several sentences, with the facts in the middle of
sentences, as a SillyTavern card's description reads::

    Mara is a quiet woman who works as a nurse in a small town not far from the coast. She
    laughs easily and hates being late. On most evenings, she relaxes by knitting after a long
    day, and she shares her home with a parrot that she adores.

The facts are the bundled slots (:data:`personachat.data.synthetic_slots.SLOTS`) plus the
character's name, and the partner probes them as in the list-persona dialogs: "What do you do
for work?" → "I work as a nurse, it is fun." (first person, natural casing), annotated
``"probe": {"slot": "job", "value": "nurse"}`` with distractors that fill the gold reply's
template with other values of the slot. All text is natural-cased; the probe values are the
lowercase slot values, which ``personachat.evaluation.persona.mentions`` matches in any case.

Held-out file (``valid``) against training file (``train``), kept apart three ways:

* the clause templates that state each fact (:data:`PROSE`) come in two disjoint sets, so the
  held-out descriptions word every fact in a way training never showed;
* the slot values are the ``unseen`` ones of the persona benchmark (never in any training
  file) and the characters' names a held-out fifth of :data:`PERSON_NAMES`;
* the name questions and replies are disjoint sets as well.

Written by ``python -m personachat.data.synthetic --out-dir data --kind prose``.
"""

from __future__ import annotations

import random
from typing import Any

from personachat.data.synthetic import (
    _check_counts,
    _plan_turns,
    _small_talk_distractors,
    build_utterances,
    check_kind_split,
    fill,
    held_out_split,
    natural_probe,
    naturalise,
    pad_distractors,
    split_values,
    with_article,
)
from personachat.data.synthetic_slots import (
    PERSON_NAMES,
    PRONOUNS,
    SLOTS,
    SMALL_TALK,
    Phrasings,
    phrasings,
)

PROSE: dict[str, Phrasings] = {
    "job": phrasings(
        "works as {av} in a small town not far from the coast | has been {av} for almost ten "
        "years now | earns a living as {av} and takes the work seriously | trained as {av} "
        "after school and never looked back",
        "makes ends meet as {av} while saving up for a house | spends long weeks working as "
        "{av} and rarely complains",
    ),
    "pet": phrasings(
        "shares {poss} home with {av} that {subj} adores | spoils {poss} pet {v} with far too "
        "many treats | talks about {poss} {v} to anyone who will listen | never goes on a trip "
        "without arranging a sitter for {poss} {v} first",
        "adopted {av} from a shelter two years ago | keeps {av} as a pet and posts photos of "
        "it constantly",
    ),
    "hobby": phrasings(
        "spends most weekends {v} with old friends | took up {v} a few years ago and is still "
        "hooked | relaxes by {v} after a long day | loves {v} more than almost anything else",
        "finds peace in {v} whenever life gets hectic | has been quietly obsessed with {v} "
        "since college",
    ),
    "city": phrasings(
        "lives in {v} in a flat with a view of the rooftops | moved to {v} a few years ago and "
        "stayed | grew up in {v} and still lives there today | rents a tiny apartment in {v} "
        "near the river",
        "calls {v} home these days, though {subj} travels a lot | settled in {v} after years of "
        "moving around",
    ),
    "food": phrasings(
        "could eat {v} every single day without getting bored | considers {v} the best meal in "
        "the world | always orders {v} when eating out with friends | makes {v} every Sunday "
        "for the whole family",
        "has a weakness for {v} that everyone teases {obj} about | swears that nothing beats "
        "{v} after a long week",
    ),
    "music": phrasings(
        "listens to {v} music while cooking dinner | has loved {v} music since {subj} was a "
        "teenager | plays {v} records on a battered old turntable | goes to {v} concerts "
        "whenever {subj} can afford it",
        "hums {v} songs under {poss} breath all day | knows far too much about {v} music for "
        "{poss} own good",
    ),
    "family": phrasings(
        "grew up with {v} in a noisy little house | is very close to {v} back home | tells "
        "stories about {v} all the time | has {v} and sees the whole family every holiday",
        "spent {poss} childhood squabbling with {v} over everything | still talks on the phone "
        "with {v} most evenings",
    ),
    "age": phrasings(
        "is {v} years old and acts half that age | turned {v} last spring but still feels "
        "twenty | has just turned {v} and is planning a small party | is {v} years old, though "
        "nobody believes it",
        "will not admit it, but {subj} is {v} years old this year | celebrated turning {v} with "
        "a quiet dinner",
    ),
    "color": phrasings(
        "wears {v} almost every day because it is {poss} favorite color | painted {poss} "
        "bedroom {v} because {subj} loves the color | owns far too many {v} sweaters | picks {v} "
        "for everything from mugs to notebooks",
        "insists that {v} is the most beautiful color there is | fills {poss} closet with {v} "
        "clothes and nothing else",
    ),
    "sport": phrasings(
        "follows {v} closely and argues about it with friends | has been a huge {v} fan since "
        "childhood | watches {v} every weekend with a bowl of snacks | plays {v} with coworkers "
        "on Thursday nights",
        "gets far too excited about {v} during the season | learned to love {v} from {poss} "
        "grandfather",
    ),
    "drink": phrasings(
        "drinks {v} every morning before doing anything else | cannot get through the day "
        "without {v} at lunch | always keeps {v} in the kitchen | orders {v} wherever {subj} "
        "goes",
        "starts every single day with {v} and a crossword | claims that {v} fixes almost any "
        "problem",
    ),
    "transport": phrasings(
        "gets around by {v} most days | goes to work by {v} even when it rains | travels "
        "everywhere by {v} and loves it | commutes by {v} through the center of town",
        "prefers getting around town by {v} to anything else | uses {v} for almost every trip "
        "{subj} makes",
    ),
}
"""Per slot, verb phrases that state a fact in the third person with words after the value
(the fact sits mid-sentence): ``{v}``/``{av}`` the value, ``{subj}``/``{obj}``/``{poss}`` the
character's pronouns."""

TRAITS: tuple[str, ...] = (
    "quiet", "cheerful", "soft-spoken", "restless", "thoughtful", "warm", "sharp-witted",
    "easygoing", "shy", "talkative", "curious", "patient", "stubborn", "gentle", "energetic",
    "practical", "dreamy", "careful", "outgoing", "serious",
)  # fmt: skip
DECADES: tuple[str, ...] = ("twenties", "thirties", "forties", "fifties", "sixties")
ADVERBIALS: tuple[str, ...] = (
    "As friends will tell you", "Unsurprisingly", "Interestingly", "By all accounts",
    "Like many people", "To no one's surprise", "As it happens", "Oddly enough",
)  # fmt: skip
"""Sentence openers that fit any clause, whatever its tense."""
TRAIT_SENTENCES: tuple[str, ...] = (
    "{Subj} laughs easily and hates being late.",
    "{Subj} is kind to strangers but slow to trust.",
    "{Subj} speaks softly and listens more than {subj} talks.",
    "{Subj} has strong opinions and a stronger sense of humor.",
    "{Subj} keeps a notebook full of half-finished ideas.",
    "{Subj} tends to overthink small decisions.",
    "People say {subj} gives the best advice.",
    "{Subj} would rather stay in than go to a party.",
)
"""Sentences about character that state no fact: a description is more than its facts."""

# Many ways to ask for a name in training (direct, indirect, polite, terse), so that the bot
# learns the request and not three sentences; the held-out ones are never among them.
NAME_QUESTIONS = phrasings(
    "what is your name ? | who am i talking to ? | what should i call you ? | may i ask your "
    "name ? | do you have a name ? | what do your friends call you ? | how should i address "
    "you ? | tell me your name . | who are you ? | what's your name , if you don't mind me "
    "asking ? | i don't think we have been introduced . | remind me of your name ?",
    "sorry , i did not catch your name . | and you are ?",
)
NAME_REPLIES = phrasings(
    "my name is {v} . | i am {v} , nice to meet you . | call me {v} . | i'm {v} . | it is {v} . "
    "| {v} , nice to meet you . | the name is {v} .",
    "{v} . and you ? | people call me {v} .",
)

DEFAULT_NUM = {"train": 300, "valid": 40}
"""Default dialogs per file: a few hundred to train on; ~100 probes held out."""
VALID_PROBES = (2, 3)
"""Probes per held-out dialog (fewer than in training: more characters per probe)."""


def character_names(split: str) -> dict[str, tuple[str, ...]]:
    """The names, by pronoun, that characters of ``split`` may have (held out for "valid")."""
    return {
        gender: held_out_split(names, f"name:{gender}")[split == "valid"]
        for gender, names in PERSON_NAMES.items()
    }


def _clause(template: str, value: str, gender: str) -> str:
    """A fact's verb phrase for a character of ``gender`` (value not yet capitalised)."""
    words = PRONOUNS[gender]
    return template.format(
        v=value, av=with_article(value), subj=words["subj"], obj=words["obj"], poss=words["poss"]
    )


def _intro(rng: random.Random, name: str, gender: str, clauses: list[str], aged: bool) -> str:
    """The description's first sentence; it may take the first one or two clauses."""
    trait = with_article(rng.choice(TRAITS))
    noun = PRONOUNS[gender]["noun"]
    shape = rng.randrange(4)
    if shape == 0 and clauses:
        return f"{name} is {trait} {noun} who {clauses.pop(0)}."
    if shape == 1 and clauses:
        return f"Meet {name}, {trait} {noun} who {clauses.pop(0)}."
    if shape == 2 and len(clauses) >= 2:
        subj = PRONOUNS[gender]["subj"]
        return f"{name} {clauses.pop(0)}, and {subj} {clauses.pop(0)}."
    decade = "" if aged else f" in {PRONOUNS[gender]['poss']} {rng.choice(DECADES)}"
    return f"{name} is {trait} {noun}{decade}."


def _body_sentence(rng: random.Random, name: str, gender: str, clauses: list[str]) -> str:
    """One more sentence of the description, taking one or two clauses."""
    subj = PRONOUNS[gender]["subj"]
    who = name if rng.random() < 0.3 else subj.capitalize()
    shape = rng.randrange(3)
    if shape == 0 and len(clauses) >= 2:
        return f"{who} {clauses.pop(0)}, and {subj} {clauses.pop(0)}."
    if shape == 1:
        return f"{rng.choice(ADVERBIALS)}, {subj} {clauses.pop(0)}."
    return f"{who} {clauses.pop(0)}."


def prose_persona(
    rng: random.Random, name: str, gender: str, facts: list[tuple[str, str]], split: str
) -> list[str]:
    """A character description stating every fact: one or two paragraphs (one string each)."""
    clauses = [_clause(rng.choice(PROSE[slot].of(split)), value, gender) for slot, value in facts]
    aged = any(slot == "age" for slot, _ in facts)
    subj = PRONOUNS[gender]["subj"]
    fillers = [
        filler.format(Subj=subj.capitalize(), subj=subj)
        for filler in rng.sample(TRAIT_SENTENCES, rng.randint(1, 2))
    ]
    sentences = [_intro(rng, name, gender, clauses, aged)]
    while clauses:
        sentences.append(_body_sentence(rng, name, gender, clauses))
        if fillers and rng.random() < 0.4:
            sentences.append(fillers.pop())
    text = [naturalise(sentence) for sentence in sentences + fillers]
    if len(text) >= 5 and rng.random() < 0.4:
        cut = len(text) // 2
        return [" ".join(text[:cut]), " ".join(text[cut:])]
    return [" ".join(text)]


def _probe_turn(
    rng: random.Random,
    fact: tuple[str, str],
    pools: dict[str, tuple[str, ...]],
    split: str,
    names: tuple[str, ...],
    num_candidates: int,
) -> tuple[str, list[str], str, dict[str, str]]:
    """(question, distractors, gold reply, probe) for one fact of the character; a wrong
    reply to the name question is the gold's template with another name."""
    slot, value = fact
    if slot != "name":
        return natural_probe(rng, fact, pools, num_candidates)
    template = rng.choice(NAME_REPLIES.of(split))
    gold = naturalise(fill(template, value.capitalize()))
    others = [name for name in names if name.lower() != value]
    wrong = [naturalise(fill(template, name)) for name in rng.sample(others, len(others))]
    distractors = pad_distractors(rng, pools, wrong[: num_candidates - 1], gold, num_candidates)
    question = naturalise(rng.choice(NAME_QUESTIONS.of(split)))
    return question, distractors, gold, {"slot": "name", "value": value}


def _prose_turns(rng: random.Random, facts: list[tuple[str, str]], split: str) -> list:
    """The exchanges of a dialog: all facts and some small talk in training; in the held-out
    file a few probes, sometimes after a greeting."""
    if split == "train":
        return _plan_turns(rng, facts)
    turns: list = rng.sample(facts, rng.randint(*VALID_PROBES))
    return ["greeting", *turns] if rng.random() < 0.3 else turns


def _prose_dialog(
    rng: random.Random, split: str, pools: dict[str, tuple[str, ...]], num_candidates: int
) -> dict[str, Any]:
    """One dialog: a character description and the partner's turns (gold reply last)."""
    gender = rng.choice(sorted(PERSON_NAMES))
    names = character_names(split)
    name = rng.choice(names[gender])
    slots = rng.sample(sorted(SLOTS), rng.randint(4, 5))
    facts = [(slot, rng.choice(pools[slot])) for slot in slots]
    personality = prose_persona(rng, name, gender, facts, split)
    every_name = tuple(sorted(names["f"] + names["m"]))
    exchanges = []
    for turn in _prose_turns(rng, [*facts, ("name", name.lower())], split):
        if isinstance(turn, str):
            prompt = naturalise(rng.choice(SMALL_TALK[turn].prompts))
            gold = rng.choice(SMALL_TALK[turn].replies)
            wrong = _small_talk_distractors(rng, pools, turn, gold, num_candidates - 1)
            exchanges.append((prompt, [naturalise(t) for t in wrong], naturalise(gold), None))
        else:
            exchanges.append(_probe_turn(rng, turn, pools, split, every_name, num_candidates))
    utterances = build_utterances(exchanges)
    return {"personality": personality, "utterances": utterances}


def generate_prose_dialogs(
    num_dialogs: int, split: str = "train", num_candidates: int = 4, seed: int = 0
) -> list[dict[str, Any]]:
    """``num_dialogs`` dialogs whose persona is a prose character description, for ``split``
    ("train" or "valid"; see the module docstring for how they are kept apart). Every
    utterance has ``num_candidates`` candidates, gold last; the same arguments give the same
    dialogs."""
    check_kind_split(split)
    _check_counts({split: num_dialogs}, num_candidates)
    rng = random.Random(f"personachat-synthetic:prose:{split}:{seed}")
    pools = split_values("unseen" if split == "valid" else "train")
    return [_prose_dialog(rng, split, pools, num_candidates) for _ in range(num_dialogs)]
