"""Training-only character card shapes beside third-person prose (see ``synthetic_prose``).

People write a character's description in several shapes, and a model that saw only one of
them in training reads the others poorly. Besides third-person prose, Character Card V2
descriptions and SillyTavern cards are commonly written as:

* ``first``: a first-person self-description ("I'm Mara. I work as a nurse, ...");
* ``second``: a second-person system prompt ("You are Mara, a 34-year-old woman. You work
  as a nurse, ... Stay in character as Mara.");
* ``sheet``: a semi-structured sheet, one ``Label: value`` per line ("Occupation: nurse");
* ``plist``: a one-line PList (``[Mara: nurse; likes knitting; ...]``) or a W++ block
  (``[character("Mara") { Occupation("nurse") ... }]``).

Each is drawn per *training* dialog only: the held-out prose file stays third-person prose
worded by its own templates. The tables below are therefore all training material; none of
them may reuse a held-out prose template's words (``tests/test_synthetic_prose.py`` checks).

Also here: third-person *statements* (whole sentences where the value sits inside a longer
phrase, in a subordinate clause, or before the character's name) and the connective
sentence frames that mix them into the training prose.
"""

from __future__ import annotations

import random
import re

from personachat.data.synthetic import naturalise, with_article
from personachat.data.synthetic_slots import PRONOUNS, PROPER_NOUNS, _texts

CARD_SHAPES: dict[str, float] = {
    "prose": 0.5,
    "first": 0.15,
    "second": 0.15,
    "sheet": 0.1,
    "plist": 0.1,
}
"""Training card shapes and their fixed weights: third-person prose stays the majority."""


def _table(**rows: str) -> dict[str, tuple[str, ...]]:
    """Per-slot templates, each written as one ``|``-separated list."""
    return {slot: _texts(text) for slot, text in rows.items()}


STATEMENTS = _table(
    job="{Who} spends {poss} working days as {av} and {poss} weekends recovering from them. | "
    "Long before anyone called {obj} {av} by profession, {subj} was the one fixing things "
    "for friends. | Ask around the neighborhood and people will point you to the {v} who "
    "never stops talking. | Being {av} was never the plan, but {subj} turned out to be good "
    "at it. | The regulars all know {obj} as the {v} with the terrible jokes. | Few people "
    "guess that {subj} is {av} until {subj} starts talking shop.",
    pet="You will rarely find {obj} without {poss} {v} somewhere close by. | At home, {subj} "
    "is outnumbered by exactly one {v} who runs the place. | Every photo on {poss} phone "
    "seems to feature {poss} {v} in some ridiculous pose. | {Who} once cancelled a date "
    "because {poss} {v} looked a little under the weather. | Nobody visits without being "
    "greeted by {poss} {v} at the door.",
    hobby="Whenever {subj} has a free hour, {subj} disappears into {v} for the rest of the "
    "afternoon. | Ever since {subj} was a child, {v} has been {poss} favorite way to unwind. "
    "| {Who} belongs to a small club devoted to {v} that meets on Saturdays. | If the "
    "weather allows it, {v} is how {subj} spends every weekend. | Friends joke that {subj} "
    "talks about {v} the way other people talk about romance.",
    city="Born and raised in {v}, {who} knows every shortcut in the old quarter. | These days "
    "home is a cramped flat in {v} with noisy neighbors. | Although {subj} travels for "
    "work, {v} is the place {subj} always comes back to. | {Who} has spent most of {poss} "
    "adult life in {v} and would not live anywhere else. | Ever since moving to {v} as a "
    "student, {subj} has never left.",
    food="Put a plate of {v} in front of {obj} and {subj} forgets all {poss} worries. | "
    "Whenever there is something to celebrate, {subj} insists on {v} for dinner. | Ever "
    "since {subj} was a child, {v} has been {poss} comfort food of choice. | {Who} "
    "judges every new restaurant by how well it does {v} above all else. | Friends know "
    "that the way to {poss} heart is a good plate of {v} and some honest conversation.",
    music="There is always some {v} music playing in {poss} kitchen when {subj} cooks. | "
    "Ever since {subj} was a teenager, {v} music has been the soundtrack of {poss} life. | "
    "{Who} can talk for hours about {v} music and the records that shaped it. | On long "
    "drives, {subj} sings along to {v} music at full volume. | Put on some {v} music and "
    "{subj} is on {poss} feet within a minute.",
    family="Growing up with {v} taught {obj} to share and to argue. | Holidays mean a full "
    "house, because {subj} has {v} and a dozen cousins besides. | {Who} grew up as the "
    "peacemaker of a household that included {v} and a lot of noise. | Being raised "
    "alongside {v} made {obj} patient, or so {subj} claims.",
    age="At {v} years old, {subj} still feels like {subj} is figuring everything out. | "
    "{Who} is {v} years old, though {subj} insists on acting much younger. | Having just "
    "turned {v}, {subj} has started taking {poss} health a little more seriously. | "
    "Despite being {v} years of age, {subj} has more energy than most teenagers.",
    color="Almost everything {subj} owns is {v}, from {poss} mugs to {poss} bicycle helmet. | "
    "Ask {obj} about {poss} favorite color and {subj} will say {v} without a second "
    "thought. | {Who} painted the front door {v} the week {subj} moved in. | If something "
    "comes in {v}, {subj} buys it, no questions asked.",
    sport="Every weekend {subj} is glued to the screen watching {v} with friends. | Ever since "
    "{subj} was a child, {v} has been the sport {subj} cares about most. | {Who} plays {v} "
    "twice a week at the club near {poss} flat. | Nothing ruins {poss} mood faster than "
    "{poss} {v} team losing on a Sunday.",
    drink="No morning starts until {subj} has had {poss} {v} at the kitchen table. | {Who} "
    "always keeps a spare bottle of {v} in the cupboard for guests. | Friends know better "
    "than to talk to {obj} before {poss} first {v} of the day. | Whenever {subj} eats out, "
    "{subj} orders {v} no matter what the menu says.",
    transport="Rain or shine, {subj} gets to work by {v} and arrives in a good mood. | {Who} "
    "refuses to go anywhere except by {v} if {subj} can help it. | Most of {poss} trips "
    "around town are made by {v}, which {subj} finds relaxing. | Ever since {subj} moved "
    "house, {subj} has been getting around by {v} every day.",
)
"""Per slot, whole third-person sentences stating a fact indirectly (the value inside a
longer phrase, in a subordinate clause, before the name, or in a backstory sentence).
``{who}``/``{Who}`` is the character's name or pronoun."""

FRAMES: tuple[str, ...] = (
    "{Who}, who {a}, {b}.",
    "Although {subj} {a}, {subj} also {b}.",
    "Besides the fact that {subj} {a}, {subj} {b}.",
    "When {subj} is not busy, {subj} {a}; {subj} also {b}.",
    "It is no secret that {subj} {a}.",
    "Everyone who meets {obj} soon learns that {subj} {a}.",
    "Those close to {obj} know that {subj} {a}.",
    "Ever since {poss} school days, people have said that {subj} {a}.",
)
"""Training sentence frames for the prose's verb phrases (``{a}``, ``{b}``): relative and
subordinate clauses, and facts reported as common knowledge."""

FIRST_PERSON = _table(
    job="I work as {av}, which keeps me busier than I would like. | By day I am {av}, and I "
    "take the job seriously. | I have been {av} for most of my adult life. | My job as {av} "
    "pays the bills and then some. | I became {av} because I wanted to help people.",
    pet="I share my place with {av} who thinks it owns me. | My {v} follows me from room to "
    "room all day. | I am never without my {v} for long. | I adopted {av} a while back and "
    "spoil it rotten.",
    hobby="In my spare time I am usually {v} somewhere quiet. | I got into {v} years ago and "
    "never stopped. | Nothing relaxes me like {v} on a slow afternoon. | My weekends "
    "mostly go to {v} with a few good friends.",
    city="I live in {v}, in a small flat above a bakery. | I grew up in {v} and never saw a "
    "reason to leave. | Home for me is {v}, noisy as it is. | I moved to {v} on a whim and "
    "stayed for good.",
    food="I could happily eat {v} for every meal of the week. | My favorite thing to eat is "
    "{v}, especially late at night. | I am a sucker for {v} on a cold evening. | Whenever "
    "I celebrate, I order {v} and nothing else.",
    music="I listen to {v} music almost every waking hour. | My playlists are full of {v} "
    "music from every decade. | I have loved {v} music since I was a kid. | I always have "
    "{v} music on in the background when I work.",
    family="I grew up with {v} in a house that was never quiet. | I have {v}, and family "
    "means the world to me. | Growing up with {v} taught me to stand my ground. | I have "
    "{v}, and I call home every week to hear the latest.",
    age="I am {v} years old and proud of every one of them. | I turned {v} this year, "
    "though I do not feel it. | At {v} years old, I still have a lot to learn.",
    color="My favorite color is {v}, and my wardrobe shows it. | I wear {v} nearly every day "
    "of the week. | I painted my whole bedroom {v} last summer. | Anything that comes in "
    "{v} ends up in my basket.",
    sport="I follow {v} religiously and never miss a match. | I play {v} with friends every "
    "weekend. | I have been a {v} fan since I was small. | Watching {v} is how I unwind on "
    "Sunday afternoons.",
    drink="I start every morning with {v} and the news. | I drink far too much {v}, or so "
    "people tell me. | There is always {v} in my fridge. | My drink of choice is {v}, hot "
    "or cold.",
    transport="I get around by {v} most days of the week. | I go everywhere by {v}, rain or "
    "shine. | My daily commute is by {v} through the city center. | Given the choice, I "
    "travel by {v} every time.",
)
"""Per slot, first-person sentences of a self-description; ``second`` cards rewrite them in
the second person (:func:`to_second_person`)."""

SHEET_LABELS = _table(
    job="Occupation | Job | Profession | Works as",
    pet="Pet | Pets | Animal companion | Lives with",
    hobby="Hobbies | Likes | Free time | Pastime",
    city="Lives in | Home | Location | Residence",
    food="Favorite food | Loves eating | Comfort food",
    music="Music | Music taste | Favorite music",
    family="Family | Siblings",
    age="Age",
    color="Favorite color | Color",
    sport="Sport | Favorite sport | Follows",
    drink="Drink | Favorite drink | Drinks",
    transport="Gets around by | Transport | Commute",
)
"""Per slot, the labels a character sheet may give the fact's line."""

PLIST_ITEMS = _table(
    job="{v} | works as {av} | job: {v} | occupation: {v}",
    pet="owns {av} | pet: {v} | lives with {av}",
    hobby="likes {v} | enjoys {v} | hobby: {v}",
    city="lives in {v} | from {v} | home: {v}",
    food="loves {v} | favorite food: {v} | eats {v} often",
    music="listens to {v} music | likes {v} music | music: {v}",
    family="has {v} | siblings: {v}",
    age="age {v} | {v} years old",
    color="favorite color: {v} | loves the color {v} | wears {v}",
    sport="fan of {v} | plays {v} | sport: {v}",
    drink="drinks {v} | favorite drink: {v}",
    transport="travels by {v} | commutes by {v} | gets around by {v}",
)
"""Per slot, the items of a one-line PList (``[Mara: nurse; likes knitting]``)."""

PERSONAL_TRAITS: tuple[str, ...] = (
    "I tend to overthink small decisions.",
    "I laugh too loudly at my own jokes.",
    "I would rather listen than talk.",
    "I am stubborn, but I apologize when I am wrong.",
    "I keep a notebook full of half-finished ideas.",
)
"""First-person sentences about character that state no fact."""

ROLEPLAY_RULES: tuple[str, ...] = (
    "Stay in character as {name} at all times.",
    "Reply as {name} would, warmly and briefly.",
    "Never break character.",
    "Speak casually, the way {name} talks to friends.",
)
"""Closing lines of a system-prompt card."""

_SECOND_PERSON = (
    (r"\bI am\b", "you are"),
    (r"\bI'm\b", "you're"),
    (r"\bI was\b", "you were"),
    (r"\bI\b", "you"),
    (r"\bmy\b", "your"),
    (r"\bme\b", "you"),
    (r"\bMy\b", "Your"),
)


def to_second_person(text: str) -> str:
    """``text`` (first person) addressed to the character: "I am a nurse" → "you are a
    nurse"; sentence starts are capitalised again by :func:`naturalise`."""
    for pattern, replacement in _SECOND_PERSON:
        text = re.sub(pattern, replacement, text)
    return naturalise(text)


FIRST_INTROS: tuple[str, ...] = ("I'm {name}.", "Hi, my name is {name}.", "My name is {name}.")
SECOND_INTROS: tuple[str, ...] = (
    "You are {name}.",
    "You are playing {name}.",
    "Your name is {name}.",
)


def _sentence(slot: str, value: str, rng: random.Random) -> str:
    return rng.choice(FIRST_PERSON[slot]).format(v=value, av=with_article(value))


def first_person_card(
    rng: random.Random, name: str, gender: str, facts: list[tuple[str, str]], second: bool
) -> list[str]:
    """A self-description ("I'm Mara. I work as ...") or, with ``second``, a system prompt
    addressed to the character ("You are Mara, a 34-year-old woman. You work as ...")."""
    ages = [value for slot, value in facts if slot == "age"]
    if ages and rng.random() < 0.5:  # the age in the introduction, before any other fact
        facts = [fact for fact in facts if fact[0] != "age"]
        noun = PRONOUNS[gender]["noun"]
        intro = f"{'You are' if second else 'I am'} {name}, a {ages[0]}-year-old {noun}."
    else:
        intro = rng.choice(SECOND_INTROS if second else FIRST_INTROS).format(name=name)
    sentences = [_sentence(slot, value, rng) for slot, value in facts]
    sentences.insert(rng.randint(1, len(sentences)), rng.choice(PERSONAL_TRAITS))
    body = " ".join(sentences)
    if not second:
        return [naturalise(f"{intro} {body}")]
    text = f"{intro} {to_second_person(body)}"
    rule = rng.choice(ROLEPLAY_RULES).format(name=name)
    return [text, rule] if rng.random() < 0.5 else [f"{text} {rule}"]


def _sheet_value(rng: random.Random, value: str) -> str:
    """A sheet's value as people type it: capitalised or not (proper nouns always are)."""
    return naturalise(value) if rng.random() < 0.5 else PROPER_NOUNS.get(value, value)


def sheet_card(
    rng: random.Random, name: str, gender: str, facts: list[tuple[str, str]], traits: list[str]
) -> list[str]:
    """A character sheet, one ``Label: value`` line per fact after the name (and sometimes
    the gender), with the personality line last or first among the facts."""
    lines = [f"Name: {name}"]
    if rng.random() < 0.5:
        lines.append(f"Gender: {'female' if gender == 'f' else 'male'}")
    facts_lines = [
        f"{rng.choice(SHEET_LABELS[slot])}: {naturalise(value)}" for slot, value in facts
    ]
    personality = f"Personality: {', '.join(traits)}"
    facts_lines.insert(rng.choice((0, len(facts_lines))), personality)
    return lines + facts_lines


def plist_card(
    rng: random.Random, name: str, facts: list[tuple[str, str]], traits: list[str]
) -> list[str]:
    """A one-line PList (``[Mara: nurse; likes knitting; ...]``) or a W++ block
    (``[character("Mara") { Occupation("nurse") ... }]``), the two bracketed shapes
    SillyTavern users write."""
    if rng.random() < 0.6:
        items = [rng.choice(PLIST_ITEMS[slot]).format(v=v, av=with_article(v)) for slot, v in facts]
        items.append(f"personality: {', '.join(traits)}")
        return [naturalise(f"[{name}: {'; '.join(items)}]")]
    fields = [f'{rng.choice(SHEET_LABELS[slot]).title()}("{value}")' for slot, value in facts]
    fields.append("Personality(" + " + ".join(f'"{trait}"' for trait in traits) + ")")
    return [naturalise(f'[character("{name}") {{ {" ".join(fields)} }}]')]
