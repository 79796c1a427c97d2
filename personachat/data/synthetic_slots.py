"""The tables the synthetic persona dialogs are built from: slots, small talk, openers.

A *slot* is one kind of persona fact (job, pet, city, ...) with its values and every way to
state it in a persona, ask about it and answer it; small talk is the non-probe exchanges.
``personachat.data.synthetic`` draws dialogs from these; ``personachat.evaluation.persona``
reads the slot values to recognise a stated value in a reply. Changing a table changes the
generated files (and the held-out ``unseen`` values), so the bundled data must be regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One kind of persona fact and all the ways to state, ask about and answer it.

    Templates use ``{v}`` for the value and ``{av}`` for the value with its indefinite
    article ("a nurse", "an actor").
    """

    name: str
    values: tuple[str, ...]
    persona: tuple[str, ...]
    questions: tuple[str, ...]
    replies: tuple[str, ...]


def _family_values() -> tuple[str, ...]:
    """Sibling descriptions such as "two older sisters" or "a twin brother"."""
    values = [
        "a twin brother",
        "a twin sister",
        "an older brother",
        "an older sister",
        "a younger brother",
        "a younger sister",
    ]
    for count in ("two", "three", "four", "five"):
        for age in ("", "older ", "younger "):
            for kind in ("brothers", "sisters"):
                values.append(f"{count} {age}{kind}")
    return tuple(values)


def _texts(text: str) -> tuple[str, ...]:
    """Templates or small-talk lines, written as one list separated by ``|`` (they contain
    commas) to keep the tables readable."""
    return tuple(part.strip() for part in text.split("|"))


def _values(text: str) -> tuple[str, ...]:
    """A slot's values, written as one comma-separated list to keep the tables readable."""
    return tuple(value.strip() for value in text.split(","))


SLOTS: dict[str, Slot] = {
    slot.name: slot
    for slot in (
        Slot(
            name="job",
            values=_values(
                "nurse, teacher, doctor, pilot, lawyer, dentist, plumber, electrician, "
                "firefighter, police officer, accountant, software engineer, architect, mechanic, "
                "farmer, baker, librarian, cashier, waiter, barber, carpenter, photographer, "
                "journalist, scientist, pharmacist, veterinarian, musician, actor, tailor, "
                "florist, butcher, banker, janitor, lifeguard, translator, surgeon, zookeeper, "
                "secretary, gardener, economist, therapist, chef, web developer, flight attendant"
            ),
            persona=_texts(
                "i work as {av} . | i am {av} by trade . | i have been {av} for years . | my job "
                "is {av} ."
            ),
            questions=_texts(
                "what do you do for work ? | what is your job ? | how do you earn a living ? | "
                "what do you do for a living ? | what is your profession ?"
            ),
            replies=_texts(
                "i am {av} . | i work as {av} , it is fun . | i am {av} , i love my job . | i "
                "work as {av} these days ."
            ),
        ),
        Slot(
            name="pet",
            values=_values(
                "dog, cat, parrot, hamster, rabbit, goldfish, turtle, snake, lizard, guinea pig, "
                "ferret, horse, pony, iguana, hedgehog, chinchilla, gerbil, rat, canary, "
                "cockatoo, tortoise, frog, tarantula, budgie, duck, goat, axolotl, gecko, "
                "chameleon, llama, donkey, puppy, kitten, hermit crab"
            ),
            persona=_texts(
                "i have a pet {v} . | i own {av} . | my best friend is my {v} . | i live with my "
                "{v} ."
            ),
            questions=_texts(
                "do you have any pets ? | what kind of pet do you have ? | any animals at home ? "
                "| do you have a pet ? | what pet do you own ?"
            ),
            replies=_texts(
                "i have {av} . | yes , i have {av} at home . | my pet is {av} . | i own {av} , "
                "very cute ."
            ),
        ),
        Slot(
            name="hobby",
            values=_values(
                "painting, knitting, hiking, fishing, gardening, reading, baking, drawing, "
                "singing, camping, sewing, woodworking, juggling, stargazing, bird watching, "
                "collecting stamps, playing chess, playing video games, doing yoga, doing "
                "puzzles, writing poetry, making pottery, taking photos, building models, "
                "learning languages, doing origami, playing guitar, playing piano, watching "
                "movies, meditating, scrapbooking, quilting, cooking, dancing"
            ),
            persona=_texts(
                "i enjoy {v} . | in my free time i like {v} . | my hobby is {v} . | i love {v} on "
                "weekends ."
            ),
            questions=_texts(
                "what do you do for fun ? | do you have any hobbies ? | what do you like to do in "
                "your free time ? | what is your favorite hobby ? | how do you spend your "
                "weekends ?"
            ),
            replies=_texts(
                "i like {v} . | mostly {v} , it relaxes me . | i love {v} . | my hobby is {v} ."
            ),
        ),
        Slot(
            name="city",
            values=_values(
                "paris, london, tokyo, new york, chicago, boston, seattle, denver, miami, dallas, "
                "austin, toronto, sydney, berlin, madrid, rome, dublin, amsterdam, vienna, "
                "prague, lisbon, oslo, stockholm, cairo, mumbai, seoul, bangkok, lima, houston, "
                "phoenix, atlanta, portland, nashville, vancouver, montreal, melbourne, "
                "barcelona, athens, istanbul, nairobi"
            ),
            persona=_texts(
                "i live in {v} . | my home is in {v} . | i moved to {v} last year . | i grew up "
                "in {v} and still live there ."
            ),
            questions=_texts(
                "where do you live ? | which city are you from ? | where are you from ? | what "
                "city do you live in ? | where is home for you ?"
            ),
            replies=_texts(
                "i live in {v} . | i am from {v} . | i live in {v} , it is nice . | {v} , i love "
                "it there ."
            ),
        ),
        Slot(
            name="food",
            values=_values(
                "pizza, sushi, tacos, pasta, burgers, steak, lasagna, curry, ramen, pancakes, "
                "waffles, dumplings, burritos, nachos, spaghetti, mac and cheese, ice cream, "
                "chocolate cake, cheesecake, apple pie, fish and chips, meatballs, lobster, "
                "shrimp, falafel, hummus, kebabs, paella, pho, bagels, donuts, cupcakes, popcorn, "
                "fried rice, tofu, pad thai, enchiladas, risotto"
            ),
            persona=_texts(
                "my favorite food is {v} . | i could eat {v} every day . | i love eating {v} . | "
                "{v} is my favorite meal ."
            ),
            questions=_texts(
                "what is your favorite food ? | what do you like to eat ? | what is your favorite "
                "meal ? | what food do you love ?"
            ),
            replies=_texts(
                "i love {v} . | my favorite food is {v} . | {v} , for sure . | i could eat {v} "
                "all day ."
            ),
        ),
        Slot(
            name="music",
            values=_values(
                "jazz, rock, pop, country, classical, hip hop, blues, reggae, heavy metal, punk, "
                "folk, soul, disco, techno, funk, opera, gospel, rap, indie, electronic, ska, "
                "grunge, bluegrass, swing, samba, flamenco, latin, edm, trance, dubstep, emo, "
                "motown, ambient, salsa, tango"
            ),
            persona=_texts(
                "i listen to {v} music . | my favorite music is {v} . | i love {v} music . | {v} "
                "is my favorite genre ."
            ),
            questions=_texts(
                "what kind of music do you like ? | what music do you listen to ? | what is your "
                "favorite genre of music ? | do you like music ? | what do you listen to ?"
            ),
            replies=_texts(
                "i mostly listen to {v} . | i love {v} music . | {v} , for sure . | i am a big "
                "{v} fan ."
            ),
        ),
        Slot(
            name="family",
            values=_family_values(),
            persona=("i have {v} .", "i grew up with {v} .", "i have {v} in my family ."),
            questions=_texts(
                "do you have any siblings ? | any brothers or sisters ? | tell me about your "
                "family . | how big is your family ?"
            ),
            replies=_texts(
                "i have {v} . | i grew up with {v} . | i have {v} , we are close . | well , i "
                "have {v} ."
            ),
        ),
        Slot(
            name="age",
            values=_values(
                "18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, "
                "38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, "
                "58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70"
            ),
            persona=("i am {v} years old .", "i just turned {v} .", "my age is {v} ."),
            questions=("how old are you ?", "what is your age ?", "may i ask how old you are ?"),
            replies=("i am {v} years old .", "i just turned {v} .", "i am {v} now ."),
        ),
        Slot(
            name="color",
            values=_values(
                "red, blue, green, yellow, purple, pink, black, white, brown, grey, teal, navy, "
                "maroon, lavender, turquoise, beige, gold, silver, crimson, magenta, cyan, "
                "indigo, violet, coral, amber, ivory, scarlet, burgundy, emerald, khaki, "
                "charcoal, mauve"
            ),
            persona=_texts(
                "my favorite color is {v} . | i love the color {v} . | most of my clothes are {v} ."
            ),
            questions=_texts(
                "what is your favorite color ? | which color do you like best ? | do you have a "
                "favorite color ?"
            ),
            replies=_texts(
                "i like {v} the most . | {v} , it is so pretty . | my favorite color is {v} . | i "
                "love {v} ."
            ),
        ),
        Slot(
            name="sport",
            values=_values(
                "soccer, basketball, tennis, baseball, golf, hockey, volleyball, rugby, cricket, "
                "boxing, cycling, skiing, surfing, badminton, ping pong, wrestling, fencing, "
                "archery, rowing, karate, judo, lacrosse, softball, handball, bowling, "
                "snowboarding, football, gymnastics, sailing, darts, curling, swimming"
            ),
            persona=_texts(
                "my favorite sport is {v} . | i love watching {v} . | i am a huge {v} fan . | i "
                "follow {v} closely ."
            ),
            questions=_texts(
                "what is your favorite sport ? | do you like sports ? | which sport do you follow "
                "? | do you watch any sports ?"
            ),
            replies=_texts(
                "i like {v} the most . | i love watching {v} . | my favorite sport is {v} . | {v} "
                ", without a doubt ."
            ),
        ),
        Slot(
            name="drink",
            values=_values(
                "coffee, tea, milk, lemonade, orange juice, soda, cola, hot chocolate, espresso, "
                "cappuccino, latte, smoothies, milkshakes, kombucha, cider, beer, wine, whiskey, "
                "ginger ale, chai, mocha, grape juice, cranberry juice, coconut water, matcha, "
                "apple juice, eggnog, sake, rum, vodka, tequila"
            ),
            persona=_texts(
                "i drink {v} every day . | my favorite drink is {v} . | i cannot live without {v} ."
            ),
            questions=_texts(
                "what do you like to drink ? | what is your favorite drink ? | what do you "
                "usually drink ?"
            ),
            replies=_texts(
                "i love {v} . | i drink {v} every day . | my favorite drink is {v} . | {v} , "
                "without a doubt ."
            ),
        ),
        Slot(
            name="transport",
            values=_values(
                "car, bus, train, bike, subway, motorcycle, scooter, tram, ferry, taxi, "
                "skateboard, bicycle, boat, canoe, van, truck, jeep, minivan, rollerblades, "
                "moped, helicopter, sailboat, tractor, carpool, shuttle, monorail, rickshaw, "
                "kayak, limo"
            ),
            persona=_texts(
                "i get around by {v} . | i go to work by {v} . | i usually travel by {v} . | i "
                "commute by {v} every day ."
            ),
            questions=_texts(
                "how do you get around ? | how do you get to work ? | how do you travel around "
                "town ?"
            ),
            replies=_texts(
                "i go everywhere by {v} . | by {v} , mostly . | i get around by {v} . | i usually "
                "go by {v} ."
            ),
        ),
    )
}
"""Every slot, by name; a persona takes at most one fact from each."""


@dataclass(frozen=True)
class SmallTalk:
    """A kind of non-probe exchange: what the partner may say and fitting bot replies."""

    name: str
    prompts: tuple[str, ...]
    replies: tuple[str, ...]


SMALL_TALK: dict[str, SmallTalk] = {
    talk.name: talk
    for talk in (
        SmallTalk(
            name="greeting",
            prompts=_texts(
                "hi , how are you ? | hello , how are you doing today ? | hey there ! how is your "
                "day ? | hi ! how is it going ? | good morning , how are you ?"
            ),
            replies=_texts(
                "i am great , thanks . just relaxing . | i am doing well , thank you . | pretty "
                "good , thanks for asking . | i am great , thanks . nice to meet you . | not bad "
                "at all , thanks ."
            ),
        ),
        SmallTalk(
            name="good_news",
            prompts=_texts(
                "i just got back from a great trip . | my team won last night . | i finally "
                "finished my big project . | i am going on vacation next week . | it is so sunny "
                "here today ."
            ),
            replies=_texts(
                "that is great to hear ! | wow , good for you ! | that sounds wonderful . | "
                "awesome , congrats ! | nice , i am happy for you ."
            ),
        ),
        SmallTalk(
            name="bad_news",
            prompts=_texts(
                "i am so tired today . | it has been raining all week . | i had a really long day "
                ". | i caught a cold yesterday . | work was stressful today ."
            ),
            replies=_texts(
                "oh no , i am sorry to hear that . | that sounds rough , hang in there . | sorry "
                ", i hope tomorrow is better . | oh no , get some rest ."
            ),
        ),
        SmallTalk(
            name="farewell",
            prompts=_texts(
                "well , it was nice chatting with you . | i have to go now , bye ! | talk to you "
                "later ! | it was great talking to you ."
            ),
            replies=_texts(
                "you too , have a good night ! | bye , take care ! | nice talking to you too ! | "
                "see you later !"
            ),
        ),
    )
}
"""Small talk mixed into dialogs so that not every turn is a probe."""

ACKNOWLEDGEMENTS: tuple[str, ...] = (
    "cool .",
    "nice !",
    "oh , neat .",
    "i see .",
    "that is awesome .",
    "interesting .",
)
"""Openers the partner sometimes puts before a probe question, after the bot has spoken."""


# --- the natural-cased kinds (prose personas, history recall) -------------------------------


@dataclass(frozen=True)
class Phrasings:
    """Ways to write one thing, in two disjoint sets: ``train`` for the training files and
    ``valid`` for the held-out probe sets, so that a held-out score measures generalisation
    to new wording rather than memory of the training templates."""

    train: tuple[str, ...]
    valid: tuple[str, ...]

    def of(self, split: str) -> tuple[str, ...]:
        """The phrasings a file of ``split`` ("train" or "valid") may use."""
        return self.valid if split == "valid" else self.train


def phrasings(train: str, valid: str) -> Phrasings:
    """A :class:`Phrasings` from two ``|``-separated lists (see ``_texts``)."""
    return Phrasings(_texts(train), _texts(valid))


PERSON_NAMES: dict[str, tuple[str, ...]] = {
    "f": _values(
        "Mara, Elena, Priya, Sofia, Hannah, Naomi, Leila, Grace, Ingrid, Yuki, Amara, Chloe, "
        "Rosa, Tessa, Fiona, Nadia, Mei, Clara, Zoe, Lucia, Ava, Freya, Alma, Bianca, Dana"
    ),
    "m": _values(
        "Tomas, Daniel, Ravi, Marcus, Felix, Omar, Jonah, Kenji, Lars, Mateo, Owen, Samuel, "
        "Theo, Viktor, Andre, Hugo, Nico, Emil, Caleb, Isaac, Joel, Milo, Rafael, Simon, Wes"
    ),
}
"""First names of the characters of prose personas and of the user's relatives, by the
pronouns that go with them; a share of them is held out for the held-out files."""

PRONOUNS: dict[str, dict[str, str]] = {
    "f": {"subj": "she", "obj": "her", "poss": "her", "noun": "woman"},
    "m": {"subj": "he", "obj": "him", "poss": "his", "noun": "man"},
}

PROPER_NOUNS: dict[str, str] = {
    **{city: city.title() for city in SLOTS["city"].values},
    "edm": "EDM",
    "motown": "Motown",
    "latin": "Latin",
}
"""Slot values written with capitals in natural-cased text ("new york" → "New York")."""
