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

Training cards come in more shapes than the held-out ones, because the product is judged on
cards written by real people, who state facts in many ways. Each training dialog's card has a
shape drawn with fixed weights (:data:`.synthetic_cards.CARD_SHAPES`): third-person prose
(50 %: the shapes below plus whole *statements* where the value sits inside a longer phrase,
in a subordinate clause, before the name or in a backstory sentence — "Born and raised in
Lisbon, Mara ...", "You will rarely find her without her parrot somewhere close by."), a
first-person self-description ("I'm Mara. I work as a nurse, ..."), a second-person system
prompt ("You are Mara, a 34-year-old woman. You work as ..."), a character sheet ("Name:
Mara", "Occupation: nurse", ...) and a PList or W++ line ("[Mara: nurse; likes knitting]"),
the shapes Character Card V2 descriptions and SillyTavern users write. The probe turns are
the same for every shape. The held-out file is third-person prose only, drawn exactly as
before the shapes were added (its bytes are pinned by ``tests/test_synthetic_prose.py``), so
held-out figures stay comparable across versions of the training tables.

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
from dataclasses import dataclass
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
from personachat.data.synthetic_cards import (
    CARD_SHAPES,
    FRAMES,
    STATEMENTS,
    first_person_card,
    plist_card,
    sheet_card,
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
        "after school and never looked back | "
        "has built a quiet career as {av} over the years | is {av} by profession and a "
        "storyteller by nature | clocks in as {av} five days a week without fail | went back to "
        "school later in life to become {av} at last | is known around town as the cheerful {v} "
        "with the loud laugh",
        "makes ends meet as {av} while saving up for a house | spends long weeks working as "
        "{av} and rarely complains",
    ),
    "pet": phrasings(
        "shares {poss} home with {av} that {subj} adores | spoils {poss} pet {v} with far too "
        "many treats | talks about {poss} {v} to anyone who will listen | never goes on a trip "
        "without arranging a sitter for {poss} {v} first | "
        "is rarely seen without {poss} {v} trotting along behind | dotes on a spoiled {v} that "
        "rules the household | lives with {av} that wakes {obj} at dawn every day | keeps a "
        "framed picture of {poss} {v} on the desk at work | would do anything for {poss} {v}, who "
        "is getting old now",
        "adopted {av} from a shelter two years ago | keeps {av} as a pet and posts photos of "
        "it constantly",
    ),
    "hobby": phrasings(
        "spends most weekends {v} with old friends | took up {v} a few years ago and is still "
        "hooked | relaxes by {v} after a long day | loves {v} more than almost anything else | "
        "spends every Saturday at the {v} club down the road | has a whole room set aside for {v} "
        "and its clutter | never misses a chance for some {v} with {poss} cousins | gets up early "
        "on Sundays just for {v} in the quiet | is teaching {poss} neighbor the basics of {v} "
        "this year",
        "finds peace in {v} whenever life gets hectic | has been quietly obsessed with {v} "
        "since college",
    ),
    "city": phrasings(
        "lives in {v} in a flat with a view of the rooftops | moved to {v} a few years ago and "
        "stayed | grew up in {v} and still lives there today | rents a tiny apartment in {v} "
        "near the river | "
        "has an apartment in {v} with a tiny balcony full of plants | was born in {v} and knows "
        "its streets by heart | commutes across {v} every morning and loves the bustle | shares a "
        "cramped flat in {v} with two roommates | spent the last decade in {v} and feels at home "
        "there",
        "calls {v} home these days, though {subj} travels a lot | settled in {v} after years of "
        "moving around",
    ),
    "food": phrasings(
        "could eat {v} every single day without getting bored | considers {v} the best meal in "
        "the world | always orders {v} when eating out with friends | makes {v} every Sunday "
        "for the whole family | "
        "cooks {v} from scratch whenever friends come over | has tried the {v} at every "
        "restaurant in the neighborhood | keeps a secret recipe for {v} that nobody else knows | "
        "would pick {v} as a last meal without hesitation | treats {obj}self to {v} at the end of "
        "every month",
        "has a weakness for {v} that everyone teases {obj} about | swears that nothing beats "
        "{v} after a long week",
    ),
    "music": phrasings(
        "listens to {v} music while cooking dinner | has loved {v} music since {subj} was a "
        "teenager | plays {v} records on a battered old turntable | goes to {v} concerts "
        "whenever {subj} can afford it | "
        "fell in love with {v} music at a festival as a teenager | plays {v} music in the car on "
        "every trip | collects {v} albums on vinyl and cassette | sings {v} songs in the shower "
        "every morning | drags friends to {v} gigs at small bars downtown",
        "hums {v} songs under {poss} breath all day | knows far too much about {v} music for "
        "{poss} own good",
    ),
    "family": phrasings(
        "grew up with {v} in a noisy little house | is very close to {v} back home | tells "
        "stories about {v} all the time | has {v} and sees the whole family every holiday | "
        "is the loudest at every reunion with {v} and the cousins | shares a group chat with "
        "{v} that never "
        "goes quiet | was raised alongside {v} on a farm outside town | visits {v} at least once "
        "a month | misses {v} now that the family lives far apart",
        "spent {poss} childhood squabbling with {v} over everything | still talks on the phone "
        "with {v} most evenings",
    ),
    "age": phrasings(
        "is {v} years old and acts half that age | turned {v} last spring but still feels "
        "twenty | has just turned {v} and is planning a small party | is {v} years old, though "
        "nobody believes it | "
        "is a lively {v} years old with plenty of plans | has been {v} years old since the spring "
        "and hates birthdays | reached the age of {v} without learning to cook | is {v} years "
        "young, as {subj} likes to put it",
        "will not admit it, but {subj} is {v} years old this year | celebrated turning {v} with "
        "a quiet dinner",
    ),
    "color": phrasings(
        "wears {v} almost every day because it is {poss} favorite color | painted {poss} "
        "bedroom {v} because {subj} loves the color | owns far too many {v} sweaters | picks {v} "
        "for everything from mugs to notebooks | "
        "chose {v} curtains for every window in the house | drives a battered {v} hatchback "
        "everywhere | has a {v} umbrella that everyone recognizes | decorates {poss} desk with "
        "{v} sticky notes and pens | cannot resist anything {v} in a shop window",
        "insists that {v} is the most beautiful color there is | fills {poss} closet with {v} "
        "clothes and nothing else",
    ),
    "sport": phrasings(
        "follows {v} closely and argues about it with friends | has been a huge {v} fan since "
        "childhood | watches {v} every weekend with a bowl of snacks | plays {v} with coworkers "
        "on Thursday nights | "
        "has season tickets for {v} and goes to every home game | coaches a kids' {v} team on "
        "weekends | dreamed of playing {v} professionally as a child | keeps old {v} trophies on "
        "a shelf in the hallway | wakes up at odd hours to follow {v} matches abroad",
        "gets far too excited about {v} during the season | learned to love {v} from {poss} "
        "grandfather",
    ),
    "drink": phrasings(
        "drinks {v} every morning before doing anything else | cannot get through the day "
        "without {v} at lunch | always keeps {v} in the kitchen | orders {v} wherever {subj} "
        "goes | "
        "brews {v} the slow way every morning before work | carries a flask of {v} in {poss} bag "
        "wherever {subj} goes | is fussy about {v} and only buys the good stuff | shares {v} with "
        "the neighbors on the porch in summer | has a shelf of fancy {v} gifts from friends",
        "starts every single day with {v} and a crossword | claims that {v} fixes almost any "
        "problem",
    ),
    "transport": phrasings(
        "gets around by {v} most days | goes to work by {v} even when it rains | travels "
        "everywhere by {v} and loves it | commutes by {v} through the center of town | "
        "goes to the office and back by {v} on most days | takes the {v} across town even on cold "
        "days | has relied on {v} to get around for years now | would choose a trip by {v} over a "
        "plane any day | spends an hour a day getting around by {v} and reads on the way",
        "prefers getting around town by {v} to anything else | uses {v} for almost every trip "
        "{subj} makes",
    ),
}
"""Per slot, verb phrases that state a fact in the third person with words after the value
(the fact sits mid-sentence): ``{v}``/``{av}`` the value, ``{subj}``/``{obj}``/``{poss}`` the
character's pronouns. The training set (first) has many more than the held-out one: the
training cards should cover the ways people write, the held-out ones measure the rest."""

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
    return _paragraphs(rng, sentences + fillers)


def _train_sentence(rng: random.Random, name: str, gender: str, items: list) -> str:
    """One sentence of a training description, taking one or two items from ``items``: a
    whole statement (its ``{who}`` the name or a pronoun), a frame around one or two verb
    phrases (a relative or subordinate clause, a fact told as common knowledge), or one of
    the sentence shapes the held-out file shares."""
    if isinstance(items[0], Statement):
        return items.pop(0).render(name if rng.random() < 0.4 else PRONOUNS[gender]["subj"])
    pairs = len(items) >= 2 and isinstance(items[1], str)
    if rng.random() < 0.5:  # the held-out shapes, on the leading verb phrase(s) only
        clauses = items[:2] if pairs else items[:1]
        count = len(clauses)
        sentence = _body_sentence(rng, name, gender, clauses)
        del items[: count - len(clauses)]
        return sentence
    frames = [frame for frame in FRAMES if pairs or "{b}" not in frame]
    frame = rng.choice(frames)
    a = items.pop(0)
    b = items.pop(0) if "{b}" in frame else ""
    return frame.format(a=a, b=b, Who=name, **_pronouns(gender))


def _pronouns(gender: str) -> dict[str, str]:
    words = PRONOUNS[gender]
    return {"subj": words["subj"], "obj": words["obj"], "poss": words["poss"]}


@dataclass(frozen=True)
class Statement:
    """A whole training sentence stating one fact: its template and the words that fill it
    but ``{who}``, which the sentence it lands in decides (the name, or a pronoun)."""

    template: str
    words: tuple[tuple[str, str], ...]

    @property
    def names_who(self) -> bool:
        """Whether the sentence names its subject (so it can open a description)."""
        return "{who}" in self.template.lower()

    def render(self, who: str) -> str:
        return self.template.format(who=who, Who=who, **dict(self.words))


def training_prose(
    rng: random.Random, name: str, gender: str, facts: list[tuple[str, str]]
) -> list[str]:
    """A third-person training description: the held-out file's sentence shapes plus whole
    statements (:data:`.synthetic_cards.STATEMENTS`) and clause frames, the facts in a
    random order, so that a fact may come before the name, inside a subordinate clause or in
    a backstory sentence."""
    items: list = []
    for slot, value in facts:
        if rng.random() < 0.4:
            template = rng.choice(STATEMENTS[slot])
            words = {"v": value, "av": with_article(value), **_pronouns(gender)}
            items.append(Statement(template, tuple(words.items())))
        else:
            items.append(_clause(rng.choice(PROSE[slot].train), value, gender))
    aged = any(slot == "age" for slot, _ in facts)
    fillers = [
        filler.format(Subj=PRONOUNS[gender]["subj"].capitalize(), subj=PRONOUNS[gender]["subj"])
        for filler in rng.sample(TRAIT_SENTENCES, rng.randint(1, 2))
    ]
    clauses = [item for item in items if isinstance(item, str)]
    statements = [item for item in items if isinstance(item, Statement)]
    named = [item for item in statements if item.names_who]
    if named and rng.random() < 0.3:  # open with a statement: "Born in Paris, Mara ..."
        statements.remove(named[0])
        sentences = [named[0].render(name)]
    else:
        sentences = [_intro(rng, name, gender, clauses, aged)]
    rest: list = clauses + statements
    rng.shuffle(rest)
    while rest:
        sentences.append(_train_sentence(rng, name, gender, rest))
        if fillers and rng.random() < 0.4:
            sentences.append(fillers.pop())
    return _paragraphs(rng, sentences + fillers)


def _paragraphs(rng: random.Random, sentences: list[str]) -> list[str]:
    """The sentences, naturalised, as one paragraph or (sometimes, when there are 5 or more)
    two: a card's description is a string per paragraph."""
    text = [naturalise(sentence) for sentence in sentences]
    if len(text) >= 5 and rng.random() < 0.4:
        cut = len(text) // 2
        return [" ".join(text[:cut]), " ".join(text[cut:])]
    return [" ".join(text)]


def training_card(
    rng: random.Random, name: str, gender: str, facts: list[tuple[str, str]]
) -> tuple[str, list[str]]:
    """(shape, personality) of a training dialog's card, its shape drawn with the fixed
    weights of :data:`.synthetic_cards.CARD_SHAPES`."""
    shape = rng.choices(list(CARD_SHAPES), weights=list(CARD_SHAPES.values()))[0]
    if shape in ("first", "second"):
        return shape, first_person_card(rng, name, gender, facts, second=shape == "second")
    traits = rng.sample(TRAITS, 2)
    if shape == "sheet":
        return shape, sheet_card(rng, name, gender, facts, traits)
    if shape == "plist":
        return shape, plist_card(rng, name, facts, traits)
    return shape, training_prose(rng, name, gender, facts)


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
    if split == "train":
        _, personality = training_card(rng, name, gender, facts)
    else:  # the held-out file: third-person prose worded by the held-out templates only
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
