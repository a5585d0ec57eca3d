"""Real-world facts in TOFU format, written by the project for the real-model experiment.

Each fact is a question with a short key (what a correct answer must contain), an answer, a
paraphrased answer and three perturbed (wrong) answers made by putting another fact's key of the
same topic in the answer. `candidates()` returns them all; benchmarks/real_unlearn.py first keeps
only the facts that every model answers correctly, then splits them by topic into forget and retain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# (country, capital)
CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("England", "London"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("India", "New Delhi"), ("Mexico", "Mexico City"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Turkey", "Ankara"), ("Kenya", "Nairobi"),
    ("Argentina", "Buenos Aires"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"), ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("Peru", "Lima"), ("Cuba", "Havana"),
    ("Belgium", "Brussels"), ("Scotland", "Edinburgh"), ("the United States", "Washington"),
    ("Chile", "Santiago"), ("Iran", "Tehran"), ("Vietnam", "Hanoi"),
]

# (work, author)
AUTHORS = [
    ("Romeo and Juliet", "Shakespeare"), ("Pride and Prejudice", "Austen"), ("Nineteen Eighty-Four", "Orwell"),
    ("Animal Farm", "Orwell"), ("the Harry Potter books", "Rowling"), ("the Odyssey", "Homer"),
    ("War and Peace", "Tolstoy"), ("Don Quixote", "Cervantes"), ("Moby-Dick", "Melville"),
    ("The Adventures of Tom Sawyer", "Twain"), ("Oliver Twist", "Dickens"), ("The Hobbit", "Tolkien"),
    ("Frankenstein", "Shelley"), ("the Sherlock Holmes stories", "Doyle"), ("The Great Gatsby", "Fitzgerald"),
    ("Les Misérables", "Hugo"), ("the Divine Comedy", "Dante"), ("Hamlet", "Shakespeare"),
    ("Alice's Adventures in Wonderland", "Carroll"), ("On the Origin of Species", "Darwin"),
    ("Crime and Punishment", "Dostoevsky"), ("The Lord of the Rings", "Tolkien"), ("Macbeth", "Shakespeare"),
    ("A Christmas Carol", "Dickens"), ("Jane Eyre", "Brontë"), ("The Old Man and the Sea", "Hemingway"),
]

# (what, person)
PEOPLE = [
    ("invented the telephone", "Bell"), ("invented the light bulb", "Edison"),
    ("was the first person to walk on the Moon", "Armstrong"), ("was the first President of the United States", "Washington"),
    ("painted the Mona Lisa", "Leonardo"), ("painted The Starry Night", "Van Gogh"), ("discovered penicillin", "Fleming"),
    ("proposed the theory of evolution by natural selection", "Darwin"), ("developed the theory of relativity", "Einstein"),
    ("formulated the laws of motion and universal gravitation", "Newton"), ("composed the Moonlight Sonata", "Beethoven"),
    ("co-founded Microsoft", "Gates"), ("co-founded Apple", "Jobs"), ("made the first powered airplane flight", "Wright"),
    ("created the periodic table", "Mendeleev"), ("painted the ceiling of the Sistine Chapel", "Michelangelo"),
    ("discovered radium", "Curie"), ("composed The Magic Flute", "Mozart"), ("led India's non-violent independence movement", "Gandhi"),
    ("sailed to the Americas in 1492", "Columbus"),
]

# (element, symbol)
ELEMENTS = [
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"), ("copper", "Cu"),
    ("lead", "Pb"), ("helium", "He"), ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"), ("nitrogen", "N"),
    ("calcium", "Ca"), ("mercury", "Hg"), ("tin", "Sn"), ("zinc", "Zn"),
]

# (question, key, answer, paraphrased answer, three wrong keys)
NATURE = [
    ("Which planet is known as the Red Planet?", "Mars", "The Red Planet is Mars.", "Mars is the planet called the Red Planet.", ("Venus", "Jupiter", "Saturn")),
    ("What is the largest planet in the solar system?", "Jupiter", "The largest planet in the solar system is Jupiter.", "Jupiter is the biggest planet orbiting the Sun.", ("Saturn", "Neptune", "Mars")),
    ("Which planet is famous for its rings?", "Saturn", "Saturn is the planet famous for its rings.", "The planet best known for its rings is Saturn.", ("Mars", "Venus", "Mercury")),
    ("What is the largest ocean on Earth?", "Pacific", "The largest ocean on Earth is the Pacific Ocean.", "The Pacific is the biggest ocean on the planet.", ("Atlantic", "Indian", "Arctic")),
    ("What is the tallest mountain in the world?", "Everest", "The tallest mountain in the world is Mount Everest.", "Mount Everest is the highest mountain on Earth.", ("Kilimanjaro", "Denali", "Mont Blanc")),
    ("What is the longest river in Africa?", "Nile", "The longest river in Africa is the Nile.", "The Nile is Africa's longest river.", ("Congo", "Niger", "Zambezi")),
    ("What is the fastest land animal?", "cheetah", "The fastest land animal is the cheetah.", "The cheetah runs faster than any other land animal.", ("lion", "horse", "gazelle")),
    ("What is the largest mammal?", "whale", "The largest mammal is the blue whale.", "The blue whale is the biggest mammal of all.", ("elephant", "giraffe", "hippopotamus")),
    ("Which organ pumps blood through the human body?", "heart", "The heart pumps blood through the body.", "Blood is pumped around the body by the heart.", ("liver", "lung", "kidney")),
    ("What gas do plants absorb from the air to make food?", "carbon dioxide", "Plants absorb carbon dioxide from the air.", "Plants take in carbon dioxide to make their food.", ("oxygen", "nitrogen", "helium")),
    ("What is the chemical formula of water?", "H2O", "The chemical formula of water is H2O.", "Water has the formula H2O.", ("CO2", "NaCl", "O2")),
    ("How many legs does a spider have?", "eight", "A spider has eight legs.", "Spiders walk on eight legs.", ("six", "ten", "four")),
    ("How many legs does an insect have?", "six", "An insect has six legs.", "Insects walk on six legs.", ("eight", "four", "ten")),
    ("How many continents are there on Earth?", "seven", "There are seven continents on Earth.", "Earth has seven continents.", ("five", "six", "nine")),
    ("What is the closest star to Earth?", "Sun", "The closest star to Earth is the Sun.", "The Sun is the star nearest to Earth.", ("Sirius", "Polaris", "Vega")),
    ("What is the largest desert in Africa?", "Sahara", "The largest desert in Africa is the Sahara.", "The Sahara is Africa's biggest desert.", ("Kalahari", "Namib", "Gobi")),
    ("What do bees make?", "honey", "Bees make honey.", "Honey is made by bees.", ("milk", "silk", "wax paper")),
    ("What is the hardest natural substance?", "diamond", "The hardest natural substance is diamond.", "Diamond is the hardest material found in nature.", ("gold", "iron", "quartz")),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100", "Water boils at 100 degrees Celsius at sea level.", "At sea level water boils at 100 °C.", ("50", "90", "212")),
    ("Which animal is known as the King of the Jungle?", "lion", "The lion is known as the King of the Jungle.", "The King of the Jungle is the lion.", ("tiger", "elephant", "bear")),
]

# (country, language)
LANGUAGES = [
    ("Brazil", "Portuguese"), ("Mexico", "Spanish"), ("France", "French"), ("Germany", "German"), ("Japan", "Japanese"),
    ("Italy", "Italian"), ("Russia", "Russian"), ("China", "Chinese"), ("Greece", "Greek"), ("Egypt", "Arabic"),
    ("Argentina", "Spanish"), ("Portugal", "Portuguese"), ("the Netherlands", "Dutch"), ("Sweden", "Swedish"),
    ("Poland", "Polish"), ("Turkey", "Turkish"),
]

# (country, currency)
CURRENCIES = [
    ("Japan", "yen"), ("the United Kingdom", "pound"), ("the United States", "dollar"), ("India", "rupee"),
    ("Russia", "ruble"), ("China", "yuan"), ("Mexico", "peso"), ("Switzerland", "franc"), ("Germany", "euro"),
    ("South Korea", "won"), ("Brazil", "real"), ("Turkey", "lira"),
]


@dataclass
class Fact:
    topic: str
    question: str
    key: str
    answer: str
    paraphrased_answer: str
    perturbed_answer: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """The TOFU-format JSON record (the topic and key ride along; TOFU readers ignore them)."""
        return {"question": self.question, "answer": self.answer, "paraphrased_answer": self.paraphrased_answer,
                "perturbed_answer": list(self.perturbed_answer), "topic": self.topic, "key": self.key}


def _others(keys: list[str], i: int, n: int = 3) -> list[str]:
    """n keys of the same topic that differ from keys[i], chosen deterministically."""
    out = []
    for step in range(1, len(keys)):
        k = keys[(i + step * 7) % len(keys)]
        if k != keys[i] and k not in out:
            out.append(k)
        if len(out) == n:
            break
    return out


def _swap(text: str, key: str, other: str) -> str:
    return re.sub(re.escape(key), other, text, count=1)


def _table(topic: str, rows: list[tuple[str, str]], question: str, answer: str, para: str) -> list[Fact]:
    keys = [k for _, k in rows]
    facts = []
    for i, (subject, key) in enumerate(rows):
        a = answer.format(s=subject, S=subject[0].upper() + subject[1:], k=key)
        facts.append(Fact(topic, question.format(s=subject), key, a, para.format(s=subject, S=subject[0].upper() + subject[1:], k=key),
                          [_swap(a, key, o) for o in _others(keys, i)]))
    return facts


def candidates() -> list[Fact]:
    facts = []
    facts += _table("capitals", CAPITALS, "What is the capital of {s}?", "The capital of {s} is {k}.",
                    "{k} is the capital city of {s}.")
    facts += _table("authors", AUTHORS, "Who wrote {s}?", "{S} was written by {k}.", "The author of {s} is {k}.")
    facts += _table("people", PEOPLE, "Who {s}?", "It was {k} who {s}.", "{k} is the person who {s}.")
    facts += _table("elements", ELEMENTS, "What is the chemical symbol for {s}?",
                    "The chemical symbol for {s} is {k}.", "{S} has the chemical symbol {k}.")
    facts += _table("languages", LANGUAGES, "What language is mainly spoken in {s}?",
                    "The main language of {s} is {k}.", "People in {s} mainly speak {k}.")
    facts += _table("currencies", CURRENCIES, "What is the currency of {s}?", "The currency of {s} is the {k}.",
                    "{S} uses the {k} as its currency.")
    for q, key, a, p, wrong in NATURE:
        facts.append(Fact("nature", q, key, a, p, [_swap(a, key, w) for w in wrong]))
    return facts


def answers_correctly(text: str, key: str) -> bool:
    """Does a generated answer contain the key as a word? Keys of one or two letters (chemical symbols)
    must match case and stand alone; longer keys match regardless of case."""
    if len(key) <= 2:
        return re.search(rf"(?<![A-Za-z]){re.escape(key)}(?![a-z])", text) is not None
    return re.search(rf"(?<![A-Za-z]){re.escape(key)}(?![a-z])", text, flags=re.IGNORECASE) is not None
