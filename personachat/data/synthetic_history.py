"""History recall: dialogs whose answer is in the conversation, not in the persona.

Each dialog has a short persona (natural-cased list sentences) and conversation *events*; an
event is a fact stated in one message and asked back 3-6 messages later:

* the **user's fact** (``speaker`` "user"): the partner says something about themselves ("My
  dog Biscuit chewed up my favorite shoes this morning"), the bot acknowledges it without
  repeating it, and one or two exchanges later the partner asks "What was my dog's name
  again?" → "Your dog's name is Biscuit." The fact is 4 or 6 messages back.
* the **bot's own words** (``speaker`` "bot"): the bot stated a plan or an opinion in its reply
  ("I'm going to cook lasagna tonight") or a persona fact when asked, and the partner later
  asks "What did you say you're cooking tonight?". The fact is 3 or 5 messages back.
* the **first question**: the partner's first message asks about a topic, and 4 or 6 messages
  later "What did I ask you first?" → "You asked me about rock climbing."

The exchanges in between are small talk, persona questions, or other events (facts of
different kinds interleave, as in real talk). The question is annotated
``"probe": {"slot": "user_pet_name", "value": "biscuit", "from": "history"}``; the slot's
prefix (``user_``, ``bot_``, ``first_``) says whose message holds the value (:func:`speaker`).
A dialog is redrawn until every event's value occurs in its source message and in no other
message before the question, nor in the persona unless the bot is asked about its own
persona fact, so every answer is unambiguous. Distractors are the gold answer's template
filled with other values (and, where it exists, the persona's own value of the same kind:
"You work as a nurse." when the bot is the nurse and the user the teacher), so ``hits@1`` on
these probes means reading the history.

Held-out file (``valid``) against training file (``train``), kept apart three ways:

* every statement, question, answer and prompting line of an event comes in two disjoint
  sets of phrasings (:class:`~personachat.data.synthetic_slots.Phrasings`); only a bot's
  persona fact is stated as in every file, by the slot's own question and reply, while the
  question asking it back and the answer's opening are held out;
* every value is held out: the ``unseen`` slot values of the persona benchmark (the personas
  too), and a held-out fifth of the names, topics and numbers;
* ``valid`` dialogs carry only the history probes (about two per dialog), persona questions
  in them are not annotated, so the file is a pure history-recall set.

All text is natural-cased; probe values are lowercase and
``personachat.evaluation.persona.mentions`` matches them in any case. Written by
``python -m personachat.data.synthetic --out-dir data --kind history``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personachat.data.synthetic import (
    Fact,
    _check_counts,
    _sample_facts,
    build_utterances,
    check_kind_split,
    fill,
    held_out_split,
    natural_probe,
    naturalise,
    pad_distractors,
    split_values,
    states,
    with_article,
)
from personachat.data.synthetic_prose import character_names
from personachat.data.synthetic_slots import (
    PERSON_NAMES,
    SLOTS,
    SMALL_TALK,
    Phrasings,
    SmallTalk,
    _texts,
    _values,
    phrasings,
)


@dataclass(frozen=True)
class Recall:
    """A kind of fact stated in one message and asked back later.

    Templates take ``{v}`` (the value), ``{av}`` (with its article) and ``{x}`` (the event's
    extra word: the kind of pet, the relative). For a bot's persona fact (``persona_slot``
    set) the statement and its prompt are the slot's own question and reply.
    """

    name: str
    values: str
    """A :data:`SLOTS` name or a key of :data:`VALUE_TABLES`: where the values come from."""
    questions: Phrasings
    answers: Phrasings
    statements: Phrasings = Phrasings((), ())
    prompts: Phrasings = Phrasings((), ())
    """For the bot's statements: the partner's line that draws the statement out."""
    acks: tuple[str, ...] = ()
    """For the user's statements: the bot's reply, which never repeats the value."""
    extras: tuple[str, ...] = ("",)
    related: str | None = None
    """A :data:`SLOTS` name whose persona value is a confusable distractor."""
    persona_slot: str | None = None


ANIMALS = ("dog", "cat", "puppy", "kitten", "rabbit")
RELATIVES = ("sister", "brother", "cousin", "best friend", "aunt", "uncle")

VALUE_TABLES: dict[str, tuple[str, ...]] = {
    "pet_names": _values(
        "Biscuit, Pepper, Maple, Waffles, Ziggy, Noodle, Pickles, Mochi, Luna, Bruno, Oscar, "
        "Peanut, Hazel, Rocket, Pumpkin, Scout, Juniper, Clover, Bandit, Sprout, Nugget, "
        "Olive, Marble, Truffle, Chester, Domino, Pretzel, Fudge, Poppy, Buttons"
    ),
    "person_names": tuple(name for names in PERSON_NAMES.values() for name in names),
    "numbers": tuple(str(n) for n in range(2, 18)),  # below every age (18-70)
    "topics": _values(
        "rock climbing, scuba diving, sourdough bread, salsa lessons, ice skating, beekeeping, "
        "calligraphy, marathon training, home brewing, crossword puzzles, tai chi, kite "
        "flying, stand-up comedy, vintage cars, bonsai trees, pickling vegetables, sign "
        "language, hot air balloons, magic tricks, podcasting, composting, mountain biking, "
        "cross-stitch, birdhouses, sea kayaking, improv theater, cheese making, tarot cards, "
        "tiny houses, solar panels"
    ),
}
"""Values of the events that are not persona slots; a fifth of each is held out."""

USER_RECALLS: tuple[Recall, ...] = (
    Recall(
        name="user_pet_name",
        values="pet_names",
        extras=ANIMALS,
        statements=phrasings(
            "My {x} {v} chewed up my favorite shoes this morning, so I'm a bit grumpy. | "
            "Sorry if I reply slowly, my {x} {v} keeps sitting on my keyboard. | We named our "
            "new {x} {v}, and the name really suits it. | I spent the morning at the vet with "
            "my {x}, {v}. Just a checkup, thankfully.",
            "I can't stop laughing, my {x} {v} just fell off the couch again. | Guess what, I "
            "adopted a {x} yesterday and called it {v}!",
        ),
        acks=_texts(
            "Aww, that sounds adorable! | Ha, pets really do run the house. | I love that, "
            "pets make everything better. | That made me smile, give it a scratch from me."
        ),
        questions=phrasings(
            "Wait, what was my {x}'s name again? | Do you remember what my {x} is called? | "
            "What did I say my {x}'s name was?",
            "Quick test: what's the name of my {x}? | Can you remind me what I call my {x}?",
        ),
        answers=phrasings(
            "Your {x}'s name is {v}. | You said your {x} is called {v}. | {v}! You mentioned "
            "your {x} earlier.",
            "It's {v}, your {x}. | Your {x} is {v}, right?",
        ),
    ),
    Recall(
        name="user_city",
        values="city",
        related="city",
        statements=phrasings(
            "I just moved to {v} for a new job, so everything is still in boxes. | I've lived "
            "in {v} my whole life and I still get lost downtown. | It's freezing in {v} today, "
            "I can barely feel my hands. | I live in {v} now, my sister helped me find a place.",
            "Honestly, living in {v} is more expensive than I expected. | I'm writing from "
            "{v}, we just had a huge storm here.",
        ),
        acks=_texts(
            "Oh, I've heard good things about it. | Ha, every city has its quirks. | That "
            "sounds like quite an adventure. | Oh nice, thanks for telling me."
        ),
        questions=phrasings(
            "Do you remember which city I live in? | Where did I say I live? | So, which city "
            "am I in, remember?",
            "Quick, what city did I tell you I'm in? | Can you remember where I'm living these "
            "days?",
        ),
        answers=phrasings(
            "You live in {v}. | You said you're in {v}. | {v}, if I remember right.",
            "You're in {v}, aren't you? | You told me you live in {v}.",
        ),
    ),
    Recall(
        name="user_job",
        values="job",
        related="job",
        statements=phrasings(
            "I work as {av}, so my weeks are pretty long. | Being {av} is tiring, but I really "
            "like it. | I just got home from work, being {av} is no joke. | My boss let me go "
            "early today, which never happens when you're {av}.",
            "I've been {av} for six years and I still learn something every day. | Funny "
            "thing about working as {av}: nobody believes how hard it is.",
        ),
        acks=_texts(
            "That sounds like demanding work. | Wow, you must be busy. | Respect, that's not "
            "an easy job. | I bet you have some stories."
        ),
        questions=phrasings(
            "What did I tell you I do for work? | Do you remember my job? | What's my job again?",
            "Bet you forgot: what do I do for a living? | Can you recall what I told you I "
            "work as?",
        ),
        answers=phrasings(
            "You work as {av}. | You said you're {av}. | You're {av}, right?",
            "You told me you're {av}. | You're working as {av}.",
        ),
    ),
    Recall(
        name="user_houseplants",
        values="numbers",
        statements=phrasings(
            "I counted today and I own {v} houseplants, which seems like too many. | I bought "
            "two more plants, so now I have {v} houseplants at home. | My tiny flat somehow "
            "holds {v} houseplants, it's a jungle.",
            "My apartment is small but somehow fits {v} houseplants. | Watering all {v} of my "
            "houseplants takes me an hour every Sunday.",
        ),
        acks=_texts(
            "That's a proper jungle! | Ha, your place must look like a greenhouse. | Wow, you must be "
            "good at keeping them alive."
        ),
        questions=phrasings(
            "How many houseplants did I say I have? | Do you remember how many plants I own?",
            "How many plants do I have at home, remember?",
        ),
        answers=phrasings(
            "You have {v} houseplants. | You said {v} houseplants.",
            "{v} houseplants, you told me.",
        ),
    ),
    Recall(
        name="user_relative_name",
        values="person_names",
        extras=RELATIVES,
        statements=phrasings(
            "My {x} {v} is coming to visit this weekend, I need to clean everything. | I had "
            "lunch with my {x} {v} today, we laughed the whole time. | My {x} {v} is staying "
            "with me for a few days.",
            "Big news: my {x} {v} is getting married next spring. | My {x} {v} just sent me "
            "the funniest postcard.",
        ),
        acks=_texts(
            "That sounds lovely. | Oh, how nice! | It's good to have people like that around."
        ),
        questions=phrasings(
            "What was my {x}'s name again? | Do you remember my {x}'s name?",
            "Can you remind me what my {x} is called?",
        ),
        answers=phrasings(
            "Your {x}'s name is {v}. | You said your {x} is {v}.",
            "It's {v}, your {x}.",
        ),
    ),
    Recall(
        name="user_dinner",
        values="food",
        related="food",
        statements=phrasings(
            "I'm making {v} for dinner tonight, wish me luck. | Tonight I'm cooking {v} for my "
            "roommates, first time trying it. | I think I'll order {v} for dinner tonight, I'm "
            "too tired to cook.",
            "Dinner plan for tonight: {v}, and lots of it. | My partner asked for {v} tonight, "
            "so that's what we're eating.",
        ),
        acks=_texts(
            "Sounds delicious! | Yum, enjoy it. | Good luck, I'm sure it'll be great. | That "
            "sounds like a good plan."
        ),
        questions=phrasings(
            "What did I say I'm having for dinner? | Do you remember what I'm eating tonight?",
            "So what's on my dinner menu tonight, remember?",
        ),
        answers=phrasings(
            "You're having {v} for dinner. | You said {v} tonight.",
            "{v}, you told me.",
        ),
    ),
)

BOT_RECALLS: tuple[Recall, ...] = (
    Recall(
        name="bot_dinner",
        values="food",
        prompts=phrasings(
            "Any plans for dinner tonight? | What are you eating tonight?",
            "Got anything good planned for dinner?",
        ),
        statements=phrasings(
            "I'm going to cook {v} tonight, I've been craving it all week. | Probably {v}, "
            "it's quick and I love it.",
            "I'm treating myself to {v} tonight, no regrets.",
        ),
        questions=phrasings(
            "What did you say you're cooking tonight? | Remind me, what are you having for dinner?",
            "Wait, what was your dinner plan again?",
        ),
        answers=phrasings(
            "I said I'd have {v}. | {v}, I can't wait.",
            "My plan is {v} tonight.",
        ),
    ),
    Recall(
        name="bot_weekend",
        values="hobby",
        prompts=phrasings(
            "What are you up to this weekend? | Any fun plans for Saturday?",
            "Doing anything nice this weekend?",
        ),
        statements=phrasings(
            "I'll probably spend Saturday {v} with a couple of friends. | Mostly {v}, I've "
            "been looking forward to it all week.",
            "The plan is {v} all morning and a long nap after.",
        ),
        questions=phrasings(
            "What did you say you're doing this weekend? | Remind me of your weekend plans?",
            "What was it you're doing on Saturday?",
        ),
        answers=phrasings(
            "I'm {v} this weekend. | I said I'd spend it {v}.",
            "{v}, like I told you.",
        ),
    ),
    Recall(
        name="bot_trip",
        values="city",
        prompts=phrasings(
            "Are you travelling anywhere soon? | Any trips coming up?",
            "Going anywhere fun this year?",
        ),
        statements=phrasings(
            "Yes, I'm flying to {v} next month to see an old friend. | I'm driving down to "
            "{v} in a few weeks, I can't wait.",
            "I finally booked a trip to {v} for the spring.",
        ),
        questions=phrasings(
            "Where did you say you're travelling to? | What was your trip again, where are you "
            "going?",
            "Remind me, where's that trip of yours?",
        ),
        answers=phrasings(
            "I'm going to {v}. | To {v}, I can't wait.",
            "I'm off to {v} soon.",
        ),
    ),
    Recall(
        name="bot_cold_drink",
        values="drink",
        prompts=phrasings(
            "What's the best drink on a cold day? | What should I drink to warm up?",
            "Any drink you'd recommend for a chilly evening?",
        ),
        statements=phrasings(
            "Honestly, {v} beats everything when it's cold out. | I'd say {v}, it always does "
            "the trick for me.",
            "Nothing compares to {v} on a chilly evening, trust me.",
        ),
        questions=phrasings(
            "What did you say was the best drink for the cold? | Which drink did you recommend "
            "again?",
            "What was that drink you suggested?",
        ),
        answers=phrasings("I said {v}. | {v}, definitely.", "I recommended {v}."),
    ),
    *(
        Recall(
            name=f"bot_{slot}",
            values=slot,
            persona_slot=slot,
            questions=phrasings(train, valid),
            answers=phrasings(
                "Like I said, {reply} | As I mentioned, {reply}", "I told you earlier: {reply}"
            ),
        )
        for slot, train, valid in (
            (
                "job",
                "What did you say you do for a living? | Remind me, what's your job again?",
                "Sorry, what did you tell me you work as?",
            ),
            (
                "pet",
                "What kind of pet did you say you have? | Remind me, what's your pet again?",
                "What was that pet of yours again?",
            ),
            (
                "city",
                "Where did you say you live? | Which city did you say you're from?",
                "Sorry, where did you tell me home is?",
            ),
            (
                "hobby",
                "What did you say you do for fun? | Remind me, what's your hobby?",
                "What was that hobby you mentioned?",
            ),
            (
                "music",
                "What music did you say you like? | Remind me, what do you listen to?",
                "What was the music you mentioned?",
            ),
        )
    ),
)
"""Bot persona facts asked back: ``{reply}`` is the slot's reply template (its value)."""

FIRST_QUESTION = Recall(
    name="first_question",
    values="topics",
    statements=phrasings(
        "Hi! Do you know anything about {v}? | Hey, random question: have you ever tried {v}? "
        "| Hello! What do you think of {v}?",
        "Hi there, is {v} hard to get into? | Hey! Any tips for {v}?",
    ),
    acks=_texts(
        "A little! It takes patience, but people seem to love it. | I've only tried it once, "
        "but it was fun. | Not much, honestly, but I've always been curious. | I've read about "
        "it, it sounds like a great way to spend a weekend."
    ),
    questions=phrasings(
        "What did I ask you first? | Do you remember my first question? | What was the first "
        "thing I asked you?",
        "Going back to the start, what did I ask you about? | Can you recall what my very "
        "first question was?",
    ),
    answers=phrasings(
        "You asked me about {v}. | Your first question was about {v}.",
        "You started by asking about {v}.",
    ),
)

RECALLS: dict[str, Recall] = {
    recall.name: recall for recall in (*USER_RECALLS, *BOT_RECALLS, FIRST_QUESTION)
}
"""Every kind of history probe, by its probe slot name."""

CHATTER = SmallTalk(
    name="chatter",
    prompts=_texts(
        "It's so windy out today. | I finally finished the book I was reading. | I've been "
        "trying to go to bed earlier. | My neighbor is renovating again, it's so loud. | I "
        "watched a documentary about the ocean last night. | I'm trying to walk more these "
        "days. | The traffic this morning was unreal."
    ),
    replies=_texts(
        "Ha, I know the feeling. | Fair enough, that happens. | Oh really? Tell me more "
        "sometime. | Ha, that sounds about right. | Oh, I hear you."
    ),
)
"""Small talk between an event's statement and its question, beside the bundled kinds."""

LEAD_INS: tuple[str, ...] = ("Anyway,", "By the way,", "Oh,", "Okay,")
"""What the partner sometimes puts before a recall question."""

DEFAULT_NUM = {"train": 300, "valid": 50}
"""Default dialogs per file: a few hundred to train on; ~100 history probes held out."""
EXCHANGES = {"train": (6, 9), "valid": (6, 8)}
"""Exchanges (partner message + bot reply) per dialog, inclusive range."""
EVENTS = {"train": (1, 3)}
"""Events per training dialog, inclusive range (fewer when they do not fit); a held-out
dialog has two (see ``_choose_events``)."""
GAPS = (2, 3)
"""Exchanges from an event's statement to its question: one or two exchanges in between,
so the value is 4 or 6 messages back when the user said it, 3 or 5 when the bot did."""
GROUP_WEIGHTS = {"bot": 3, "first": 1, "user": 5}
"""How often each kind of event is drawn: the user's facts are the headline."""

Exchange = tuple[str, list[str], str, "dict[str, str] | None"]
"""(partner message, distractors, gold reply, probe or None)."""


@dataclass
class Event:
    """One fact of a dialog: its kind, value and extra word, and the exchanges where it is
    stated and asked back."""

    recall: Recall
    value: str
    extra: str
    source: int = -1
    question: int = -1


def speaker(slot: str) -> str:
    """Whose message holds a history probe's value: "bot" for ``bot_*`` slots, "user" for
    ``user_*`` and ``first_question``."""
    return "bot" if slot.startswith("bot_") else "user"


def recall_values(recall: Recall, split: str) -> tuple[str, ...]:
    """The values an event of ``recall`` may take in ``split`` ("valid": the held-out ones)."""
    if recall.values in SLOTS:
        return split_values("unseen" if split == "valid" else "train")[recall.values]
    if recall.values == "person_names":
        return tuple(sorted(name for names in character_names(split).values() for name in names))
    return held_out_split(VALUE_TABLES[recall.values], recall.values)[split == "valid"]


def _fill(template: str, value: str, extra: str = "") -> str:
    """A natural-cased message from a template of :class:`Recall`."""
    return naturalise(template.format(v=value, av=with_article(value), x=extra))


_UNSEEN_VALUES = {value for values in split_values("unseen").values() for value in values}
"""Held-out slot values, which no word of a training file may be ("kitten" as a kind of pet)."""


def _choose_events(rng: random.Random, split: str, facts: list[Fact]) -> list[Event]:
    """Draw the dialog's events, no kind twice: by :data:`GROUP_WEIGHTS` in training; in the
    held-out file one fact of the user's and one of the bot's or the first question, so
    half of its probes measure the headline (the user's fact)."""
    persona = dict(facts)
    groups = {
        "user": list(USER_RECALLS),
        "bot": [r for r in BOT_RECALLS if r.persona_slot in (None, *persona)],
        "first": [FIRST_QUESTION],
    }
    if split == "valid":
        others = ["bot", "first"]
        order = ["user", rng.choices(others, weights=[GROUP_WEIGHTS[g] for g in others])[0]]
    else:
        order = [
            rng.choices(sorted(groups), weights=[GROUP_WEIGHTS[g] for g in sorted(groups)])[0]
            for _ in range(rng.randint(*EVENTS["train"]))
        ]
    events: list[Event] = []
    for group in order:
        if not groups[group]:
            continue
        recall = groups[group].pop(rng.randrange(len(groups[group])))
        if recall.persona_slot is not None:
            value = persona[recall.persona_slot]
        else:
            value = rng.choice(recall_values(recall, split))
        extras = [x for x in recall.extras if split == "valid" or x not in _UNSEEN_VALUES]
        events.append(Event(recall, value, rng.choice(extras)))
    return events


def _place(rng: random.Random, events: list[Event], num_exchanges: int) -> list[Event]:
    """Give each event a statement and a question exchange (:data:`GAPS` apart); the first
    question is stated in exchange 0, which no other event takes. Events that do not fit
    are left out."""
    taken: set[int] = set()
    placed: list[Event] = []
    for event in sorted(events, key=lambda e: e.recall is not FIRST_QUESTION):
        spots = [
            (source, source + gap)
            for source in range(num_exchanges)
            for gap in GAPS
            if source + gap < num_exchanges
            and not {source, source + gap} & taken
            and (source == 0) == (event.recall is FIRST_QUESTION)
        ]
        if spots:
            event.source, event.question = rng.choice(spots)
            taken |= {event.source, event.question}
            placed.append(event)
    return placed


def _reply_pool() -> dict[str, tuple[str, ...]]:
    """Replies that state nothing, by kind: acknowledgements and small talk."""
    kinds = {name: recall.acks for name, recall in RECALLS.items() if recall.acks}
    kinds |= {name: talk.replies for name, talk in SMALL_TALK.items()}
    kinds[CHATTER.name] = CHATTER.replies
    return {kind: tuple(naturalise(text) for text in texts) for kind, texts in kinds.items()}


_REPLIES = _reply_pool()


def _other_replies(
    rng: random.Random, pools: dict[str, tuple[str, ...]], kind: str, gold: str, count: int
) -> list[str]:
    """Wrong replies to a statement or small talk: replies of the other kinds."""
    others = sorted({text for name, texts in _REPLIES.items() if name != kind for text in texts})
    wrong = rng.sample(others, min(count, len(others)))
    return pad_distractors(rng, pools, wrong, gold, count + 1)


def _same_template(
    rng: random.Random,
    pools: dict[str, tuple[str, ...]],
    template: str,
    event: Event,
    split: str,
    count: int,
    first: Sequence[str] = (),
) -> list[str]:
    """Wrong replies that read like the gold one: ``template`` with ``first`` (confusable
    values), then other values of the event's kind; in a held-out file, where a kind has few
    held-out values (numbers), training values after those (only the probes' values are
    held out)."""
    gold = _fill(template, event.value, event.extra)
    others = [v for v in recall_values(event.recall, split) if v != event.value]
    spares = recall_values(event.recall, "train") if split == "valid" else ()
    spare = [v for v in spares if v != event.value and v not in first]
    wrong: list[str] = []
    for value in [*first, *rng.sample(others, len(others)), *rng.sample(spare, len(spare))]:
        text = _fill(template, value, event.extra)
        if len(wrong) < count and text != gold and text not in wrong:
            wrong.append(text)
    rng.shuffle(wrong)
    return pad_distractors(rng, pools, wrong, gold, count + 1)


def _statement(
    rng: random.Random, event: Event, split: str, pools: dict[str, tuple[str, ...]], count: int
) -> Exchange:
    """The exchange that states the event's value (the user's message or the bot's reply)."""
    recall = event.recall
    if recall.persona_slot is not None:
        question, wrong, gold, probe = natural_probe(
            rng, (recall.persona_slot, event.value), pools, count + 1
        )
        return question, wrong, gold, probe if split == "train" else None
    template = rng.choice(recall.statements.of(split))
    if speaker(recall.name) == "bot":
        prompt = naturalise(rng.choice(recall.prompts.of(split)))
        wrong = _same_template(rng, pools, template, event, split, count)
        return prompt, wrong, _fill(template, event.value, event.extra), None
    gold = naturalise(rng.choice(recall.acks))
    wrong = _other_replies(rng, pools, recall.name, gold, count)
    return _fill(template, event.value, event.extra), wrong, gold, None


def _question(
    rng: random.Random,
    event: Event,
    split: str,
    pools: dict[str, tuple[str, ...]],
    persona: dict[str, str],
    count: int,
) -> Exchange:
    """The exchange that asks the event's value back: the history probe."""
    recall = event.recall
    question = _fill(rng.choice(recall.questions.of(split)), event.value, event.extra)
    if rng.random() < 0.3:
        question = f"{rng.choice(LEAD_INS)} {question[0].lower()}{question[1:]}"
    template = rng.choice(recall.answers.of(split))
    if recall.persona_slot is not None:
        template = template.replace("{reply}", rng.choice(SLOTS[recall.persona_slot].replies))
    mine = persona.get(recall.related or "")
    first = [mine] if mine is not None and mine != event.value else []
    wrong = _same_template(rng, pools, template, event, split, count, first)
    probe = {"slot": recall.name, "value": event.value.lower(), "from": "history"}
    return question, wrong, _fill(template, event.value, event.extra), probe


def _filler(
    rng: random.Random,
    index: int,
    free_facts: list[Fact],
    split: str,
    pools: dict[str, tuple[str, ...]],
    count: int,
) -> Exchange:
    """An exchange between events: a greeting to open, a persona question, or small talk."""
    if free_facts and index > 0 and rng.random() < 0.35:
        question, wrong, gold, probe = natural_probe(rng, free_facts.pop(), pools, count + 1)
        return question, wrong, gold, probe if split == "train" else None
    if index == 0 and rng.random() < 0.6:
        talk = SMALL_TALK["greeting"]
    else:
        talk = rng.choice([CHATTER, SMALL_TALK["good_news"], SMALL_TALK["bad_news"]])
    gold = naturalise(rng.choice(talk.replies))
    wrong = _other_replies(rng, pools, talk.name, gold, count)
    return naturalise(rng.choice(talk.prompts)), wrong, gold, None


def _render(
    rng: random.Random,
    split: str,
    pools: dict[str, tuple[str, ...]],
    facts: list[Fact],
    events: list[Event],
    num_exchanges: int,
    num_candidates: int,
) -> dict[str, Any]:
    """The dialog of placed events: persona, then each exchange in order, gold last."""
    persona = dict(facts)
    by_source = {event.source: event for event in events}
    by_question = {event.question: event for event in events}
    asked = {event.recall.persona_slot for event in events}
    free_facts = [fact for fact in facts if fact[0] not in asked]
    rng.shuffle(free_facts)
    count = num_candidates - 1
    exchanges: list[Exchange] = []
    for index in range(num_exchanges):
        if index in by_source:
            exchanges.append(_statement(rng, by_source[index], split, pools, count))
        elif index in by_question:
            exchanges.append(_question(rng, by_question[index], split, pools, persona, count))
        else:
            exchanges.append(_filler(rng, index, free_facts, split, pools, count))
    personality = [naturalise(fill(rng.choice(SLOTS[s].persona), v)) for s, v in facts]
    return {"personality": personality, "utterances": build_utterances(exchanges)}


def unambiguous(dialog: dict[str, Any]) -> bool:
    """Whether every history probe of ``dialog`` can be answered from one message: its value
    is in exactly one message of the probe's history, the speaker's as its slot says (see
    :func:`speaker`), 3-6 messages back, and in the persona only for a bot's persona fact."""
    persona_text = " ".join(dialog["personality"])
    for utterance in dialog["utterances"]:
        probe = utterance.get("probe")
        if not probe or probe.get("from") != "history":
            continue
        history, value = utterance["history"], probe["value"]
        holders = [k for k, message in enumerate(history) if states(message, value)]
        back = len(history) - 1 - holders[0] if len(holders) == 1 else 0
        by_bot = back % 2 == 1  # the history ends with the partner's question
        if not 3 <= back <= 6 or by_bot != (speaker(probe["slot"]) == "bot"):
            return False
        recall = RECALLS.get(probe["slot"])
        if recall is None or states(persona_text, value) != (recall.persona_slot is not None):
            return False
    return True


def _history_dialog(
    rng: random.Random, split: str, pools: dict[str, tuple[str, ...]], num_candidates: int
) -> dict[str, Any]:
    """One dialog with its events, redrawn until every probe is unambiguous."""
    while True:
        facts = _sample_facts(rng, "unseen" if split == "valid" else "train", pools)
        num_exchanges = rng.randint(*EXCHANGES[split])
        events = _place(rng, _choose_events(rng, split, facts), num_exchanges)
        if not events:
            continue
        dialog = _render(rng, split, pools, facts, events, num_exchanges, num_candidates)
        if unambiguous(dialog):
            return dialog


def generate_history_dialogs(
    num_dialogs: int, split: str = "train", num_candidates: int = 4, seed: int = 0
) -> list[dict[str, Any]]:
    """``num_dialogs`` dialogs whose history probes ask back what was said 3-6 messages
    earlier, for ``split`` ("train" or "valid"; see the module docstring for how they are
    kept apart). Every utterance has ``num_candidates`` candidates, gold last; the same
    arguments give the same dialogs."""
    check_kind_split(split)
    _check_counts({split: num_dialogs}, num_candidates)
    rng = random.Random(f"personachat-synthetic:history:{split}:{seed}")
    pools = split_values("unseen" if split == "valid" else "train")
    return [_history_dialog(rng, split, pools, num_candidates) for _ in range(num_dialogs)]
