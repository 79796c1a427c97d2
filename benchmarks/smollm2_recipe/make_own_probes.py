"""Own-kinds probe set: persona fact kinds that the bundled slots never ask about.
Bundled slots: age city color drink family food hobby job music pet sport transport."""

import json
import random

# kind: list of (persona sentence, question, gold reply, value, distractor values)
K = {
    "sibling_name": [
        (
            "my sister is called marta .",
            "what's your sister's name ?",
            "her name is marta .",
            "marta",
            ["elena", "sofia", "julia"],
        ),
        (
            "my brother's name is tobias .",
            "you mentioned a brother . what is he called ?",
            "he is called tobias .",
            "tobias",
            ["lukas", "felix", "jonas"],
        ),
    ],
    "vehicle": [
        (
            "i drive a golf cart around the farm .",
            "what do you drive ?",
            "a golf cart , mostly around the farm .",
            "golf cart",
            ["sedan", "hatchback", "pickup"],
        ),
        (
            "i own a vintage motorhome .",
            "what kind of vehicle do you own ?",
            "an old motorhome , i love it .",
            "motorhome",
            ["coupe", "convertible", "station wagon"],
        ),
    ],
    "birth_city": [
        (
            "i was born in krakow .",
            "where were you born ?",
            "i was born in krakow .",
            "krakow",
            ["warsaw", "gdansk", "poznan"],
        ),
        (
            "i was born in montevideo but moved away as a kid .",
            "which city were you born in ?",
            "montevideo , but i left as a kid .",
            "montevideo",
            ["santiago", "quito", "caracas"],
        ),
    ],
    "book": [
        (
            "my favorite book is dune .",
            "what's the best book you've ever read ?",
            "dune , without a doubt .",
            "dune",
            ["emma", "ulysses", "beloved"],
        ),
        (
            "i have read moby dick five times .",
            "is there a book you keep rereading ?",
            "moby dick , i have read it five times .",
            "moby dick",
            ["war and peace", "dracula", "hamlet"],
        ),
    ],
    "instrument": [
        (
            "i play the cello in a small orchestra .",
            "do you play an instrument ?",
            "yes , i play the cello .",
            "cello",
            ["violin", "flute", "trumpet"],
        ),
        (
            "i have been learning the banjo for two years .",
            "what instrument are you learning at the moment ?",
            "the banjo , for two years now .",
            "banjo",
            ["ukulele", "harp", "oboe"],
        ),
    ],
    "allergy": [
        (
            "i am allergic to peanuts .",
            "are you allergic to anything ?",
            "yes , peanuts .",
            "peanuts",
            ["pollen", "dust", "wheat"],
        ),
        (
            "i have a bad allergy to shellfish .",
            "any food allergies i should know about before dinner ?",
            "shellfish , please keep it away from me .",
            "shellfish",
            ["eggs", "soy", "sesame"],
        ),
    ],
    "car_brand": [
        (
            "my car is a volvo .",
            "what brand is your car ?",
            "it is a volvo .",
            "volvo",
            ["toyota", "ford", "honda"],
        ),
        (
            "i drive an old subaru .",
            "what make of car have you got ?",
            "an old subaru .",
            "subaru",
            ["mazda", "nissan", "fiat"],
        ),
    ],
    "pet_name": [
        (
            "my dog is named biscuit .",
            "what is your dog's name ?",
            "his name is biscuit .",
            "biscuit",
            ["rex", "max", "buddy"],
        ),
        (
            "my cat is called pepper .",
            "what did you name your cat ?",
            "i named her pepper .",
            "pepper",
            ["luna", "milo", "tiger"],
        ),
    ],
    "movie": [
        (
            "my favorite movie is jaws .",
            "what's your all-time favourite film ?",
            "jaws , i never get tired of it .",
            "jaws",
            ["alien", "rocky", "psycho"],
        ),
        (
            "i have watched titanic more than twenty times .",
            "which movie have you seen the most times ?",
            "titanic , more than twenty times .",
            "titanic",
            ["avatar", "grease", "vertigo"],
        ),
    ],
    "language": [
        (
            "i speak fluent japanese .",
            "what languages do you speak ?",
            "english and fluent japanese .",
            "japanese",
            ["german", "korean", "arabic"],
        ),
        (
            "i am learning portuguese in the evenings .",
            "are you studying a language right now ?",
            "yes , portuguese , in the evenings .",
            "portuguese",
            ["italian", "russian", "dutch"],
        ),
    ],
    "season": [
        (
            "autumn is my favorite season .",
            "which season do you like the most ?",
            "autumn , definitely .",
            "autumn",
            ["spring", "summer", "winter"],
        ),
        (
            "i love winter because of the snow .",
            "what time of year makes you happiest ?",
            "winter , i love the snow .",
            "winter",
            ["spring", "summer", "autumn"],
        ),
    ],
    "person_name": [
        (
            "my best friend is called priya .",
            "who is your best friend ?",
            "her name is priya .",
            "priya",
            ["anna", "maya", "nina"],
        ),
        (
            "my grandmother's name is rosa .",
            "what is your grandma's name ?",
            "her name is rosa .",
            "rosa",
            ["maria", "greta", "ida"],
        ),
    ],
    "university": [
        (
            "i studied history at oxford .",
            "where did you go to university ?",
            "i went to oxford .",
            "oxford",
            ["cambridge", "yale", "harvard"],
        ),
        (
            "i graduated from stanford .",
            "which college did you attend ?",
            "stanford .",
            "stanford",
            ["princeton", "columbia", "cornell"],
        ),
    ],
    "flower": [
        (
            "tulips are my favorite flowers .",
            "what flowers do you like best ?",
            "tulips , they are so pretty .",
            "tulips",
            ["roses", "lilies", "daisies"],
        ),
        (
            "i grow sunflowers in my garden .",
            "what do you grow in your garden ?",
            "sunflowers , lots of them .",
            "sunflowers",
            ["carrots", "orchids", "peonies"],
        ),
    ],
    "fear": [
        (
            "i am terrified of spiders .",
            "what are you afraid of ?",
            "spiders , they terrify me .",
            "spiders",
            ["snakes", "clowns", "dogs"],
        ),
        (
            "i have a fear of heights .",
            "is there anything that scares you ?",
            "heights , i cannot stand them .",
            "heights",
            ["the dark", "crowds", "water"],
        ),
    ],
    "board_game": [
        (
            "my favorite board game is monopoly .",
            "do you have a favourite board game ?",
            "monopoly , i always win .",
            "monopoly",
            ["risk", "clue", "checkers"],
        ),
        (
            "i play scrabble every sunday with my aunt .",
            "what game do you play on sundays ?",
            "scrabble with my aunt .",
            "scrabble",
            ["bingo", "poker", "bridge"],
        ),
    ],
    "birthday": [
        (
            "my birthday is in october .",
            "when is your birthday ?",
            "in october .",
            "october",
            ["may", "june", "april"],
        ),
        (
            "i celebrate my birthday in july .",
            "which month is your birthday in ?",
            "july , in the summer .",
            "july",
            ["march", "august", "december"],
        ),
    ],
    "tv_show": [
        (
            "i never miss an episode of seinfeld .",
            "what's your favourite tv show ?",
            "seinfeld , i never miss it .",
            "seinfeld",
            ["lost", "dexter", "house"],
        ),
        (
            "i binge watched breaking bad last month .",
            "what series did you binge recently ?",
            "breaking bad , last month .",
            "breaking bad",
            ["the wire", "succession", "fargo"],
        ),
    ],
    "travel_dream": [
        (
            "i dream of visiting iceland one day .",
            "where would you love to travel someday ?",
            "iceland , it is my dream .",
            "iceland",
            ["japan", "kenya", "norway"],
        )
    ],
}
# bundled-kind distractor sentences (facts the probes do not ask about)
FILLER = [
    "i love techno music .",
    "i am a nurse by trade .",
    "i own a gerbil .",
    "my favorite food is tacos .",
    "i commute by tram every day .",
    "most of my clothes are mauve .",
    "i am 34 years old .",
    "i live in lisbon .",
    "i enjoy knitting .",
    "i drink a lot of chai .",
    "i play tennis on weekends .",
    "i have two older brothers .",
]
GREET = [
    ("hi , how are you ?", "i am great , thanks ."),
    ("hello ! how is your evening going ?", "pretty good , thanks for asking ."),
    ("hey , nice to meet you .", "nice to meet you too !"),
]
PREFIX = ["", "", "oh nice . ", "really ? ", "ha , fun . ", "neat . "]

rng = random.Random(7)
items = [(k, *x) for k, xs in K.items() for x in xs]  # 37 probes
rng.shuffle(items)
dialogs = []
i = 0
sizes = [3, 4, 3, 3, 4, 3, 3, 4, 3, 3, 4]  # = 37
for n in sizes:
    chunk = items[i : i + n]
    i += n
    persona = [c[1] for c in chunk] + rng.sample(FILLER, 2)
    rng.shuffle(persona)
    hist, utts = [], []
    if rng.random() < 0.5:
        g = rng.choice(GREET)
        hist = [g[0]]
        utts.append(
            {
                "history": list(hist),
                "candidates": ["i like red .", "my dog is cute .", "i live in oslo .", g[1]],
            }
        )
        hist.append(g[1])
    for _j, (kind, _sent, q, gold, val, distr) in enumerate(chunk):
        q = (rng.choice(PREFIX) if hist else "") + q
        hist.append(q)
        cands = [gold.replace(val, d) for d in distr] + [gold]
        utts.append(
            {"history": list(hist), "candidates": cands, "probe": {"slot": kind, "value": val}}
        )
        hist.append(gold)
    dialogs.append({"personality": persona, "utterances": utts})
assert i == len(items)
json.dump(dialogs, open("own_probes.json", "w"), indent=1)
print(len(dialogs), "dialogs", len(items), "probes", len(K), "kinds")
