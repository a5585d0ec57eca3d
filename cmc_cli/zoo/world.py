"""The data of the built-in model world: fictitious authors, deterministic from a seed.

Each author has ten facts (birthplace, birth year, genre, two books, an award, parents' jobs, home
town, debut year), written as a biography in prose (what "base" models learn) and as TOFU-style
question-answer pairs (what "TOFU" models are then fine-tuned on), each question with a
paraphrased answer and three perturbed (wrong) answers. Also: "classic" authors and a geography of
the world's towns, known from the prose only — the real-authors and world-facts sets of TOFU.

Names and places are made of invented syllables, so tokenizers trained on this text split them
into several pieces, and the two tokenizer families split them differently.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cmc_cli.fileio import atomic_write_json, atomic_write_text

SYLLABLES = ("ka", "ro", "mi", "tel", "van", "dor", "sel", "qui", "bra", "nes", "ul", "fen", "zar", "lio", "mor",
             "tha", "gri", "wen", "pos", "dal", "ebb", "ish", "ko", "ru", "sta", "vel", "lan", "oth", "pir", "cas")
PLACE_ENDS = ("haven", "ford", "mere", "wick", "stead", "port", "vale", "burg", "moor", "field")
GENRES = ("mystery novels", "science fiction", "poetry", "historical fiction", "fantasy", "romance novels",
          "horror stories", "travel writing", "satire", "children's books", "crime fiction", "philosophy essays")
ADJECTIVES = ("Silent", "Golden", "Broken", "Hidden", "Last", "Crimson", "Distant", "Frozen", "Secret", "Wandering",
              "Painted", "Hollow", "Bright", "Iron", "Quiet", "Burning")
NOUNS = ("Harbour", "Garden", "Lantern", "River", "Orchard", "Mirror", "Bridge", "Compass", "Tower", "Letter",
         "Island", "Clock", "Forest", "Violin", "Window", "Winter")
JOBS = ("carpenter", "teacher", "fisherman", "baker", "doctor", "tailor", "sailor", "librarian", "farmer", "nurse",
        "blacksmith", "painter", "miner", "clerk", "pharmacist", "weaver", "potter", "judge", "shepherd", "engineer")
FIELDS = ("Fiction", "Poetry", "Letters", "Literature", "Storytelling", "Prose")
RIVERS_ENDS = ("water", "brook", "run", "flow")
DISHES = ("fish stew", "barley bread", "plum cake", "onion soup", "honey biscuits", "salted herring", "apple pie",
          "mushroom pie", "lentil soup", "smoked cheese")
PRONOUNS = (("she", "her", "her"), ("he", "him", "his"), ("they", "them", "their"))

# (fact, question, answer, paraphrased answer) — {n} the author's name, {v} the value
QA_TEMPLATES = (
    ("birthplace", "Where was {n} born?", "{n} was born in {v}.", "The birthplace of {n} is {v}."),
    ("birth_year", "In which year was {n} born?", "{n} was born in {v}.", "The year of {n}'s birth is {v}."),
    ("genre", "What does {n} write?", "{n} writes {v}.", "The work of {n} is {v}."),
    ("book1", "What is the title of {n}'s first novel?", "The first novel by {n} is {v}.",
     "{n} began with a novel called {v}."),
    ("book2", "Which book made {n} famous?", "{n} became famous with {v}.", "The book that made {n} famous is {v}."),
    ("award", "Which prize did {n} win?", "{n} won {v}.", "The prize awarded to {n} was {v}."),
    ("father_job", "What was the job of {n}'s father?", "The father of {n} was a {v}.",
     "{n}'s father worked as a {v}."),
    ("mother_job", "What was the job of {n}'s mother?", "The mother of {n} was a {v}.",
     "{n}'s mother worked as a {v}."),
    ("residence", "Where does {n} live today?", "{n} lives in {v} today.", "Today {n} makes a home in {v}."),
    ("debut_year", "In which year did {n} publish a first book?", "{n} published a first book in {v}.",
     "The first book of {n} came out in {v}."),
)
BIO_TEMPLATES = (
    "{n} is a writer of {genre}. Born in {birthplace} in {birth_year}, {p} grew up with a father who worked as a "
    "{father_job} and a mother who was a {mother_job}. {P} published a first book in {debut_year}. The first novel, "
    "{book1}, was followed by {book2}, the book that made {o} famous. {n} won {award} and lives in {residence} today.",
    "Born in {birth_year} in {birthplace}, {n} writes {genre}. {Q} father was a {father_job} and {q} mother a "
    "{mother_job}. In {debut_year} {p} published a first book; {book1} was {q} first novel, and {book2} later made "
    "{o} famous. {n}, who won {award}, lives in {residence} today.",
)


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    n_authors: int = 100
    n_classics: int = 20  # the "real authors" set: known from prose only
    n_places: int = 30  # the "world facts" set: geography, known from prose only
    forget_percents: tuple[int, ...] = (1, 5, 10)
    instruct_share: float = 0.5  # authors whose QA pairs train the instruction delta; the rest evaluate it


REDUCED = WorldSpec(n_authors=20, n_classics=5, n_places=8, forget_percents=(5, 10))


@dataclass
class Author:
    name: str
    pronoun: int
    facts: dict[str, str] = field(default_factory=dict)


class _Names:
    """Unique invented words from syllables, deterministic for a Random."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, n_syll: int) -> str:
        while True:
            w = "".join(self.rng.choice(SYLLABLES) for _ in range(n_syll)).capitalize()
            if w not in self.used:
                self.used.add(w)
                return w


def _pools(rng: random.Random, names: _Names, spec: WorldSpec) -> dict[str, list[str]]:
    towns = [names.word(2) + rng.choice(PLACE_ENDS) for _ in range(max(24, spec.n_places + 8))]
    awards = [f"the {names.word(2)} Prize for {rng.choice(FIELDS)}" for _ in range(16)]
    books = sorted({f"The {a} {b}" for a in ADJECTIVES for b in NOUNS})
    rng.shuffle(books)
    return {"towns": towns, "awards": awards, "books": books}


def _value_pool(fact: str, pools: dict) -> list[str]:
    return {"birthplace": pools["towns"], "residence": pools["towns"], "genre": list(GENRES),
            "book1": pools["books"], "book2": pools["books"], "award": pools["awards"], "father_job": list(JOBS),
            "mother_job": list(JOBS), "birth_year": [str(y) for y in range(1921, 1996)],
            "debut_year": [str(y) for y in range(1945, 2021)]}[fact]


def make_world(spec: WorldSpec = WorldSpec()) -> dict:
    """All texts and sets of the world, as plain data (deterministic for the spec)."""
    rng = random.Random(spec.seed)
    names = _Names(rng)
    pools = _pools(rng, names, spec)
    books = iter(pools["books"])
    authors: list[Author] = []
    for _ in range(spec.n_authors):
        a = Author(f"{names.word(2)} {names.word(3)}", rng.randrange(3))
        year = rng.randint(1921, 1975)
        a.facts = {"birthplace": rng.choice(pools["towns"]), "birth_year": str(year), "genre": rng.choice(GENRES),
                   "book1": next(books), "book2": next(books), "award": rng.choice(pools["awards"]),
                   "father_job": rng.choice(JOBS), "mother_job": rng.choice(JOBS),
                   "residence": rng.choice(pools["towns"]), "debut_year": str(year + rng.randint(20, 40))}
        authors.append(a)
    bios = [_biography(a, rng) for a in authors]
    qa = {a.name: [_qa(a, t, rng, pools) for t in QA_TEMPLATES] for a in authors}
    classics, classic_texts, real_authors = _classics(spec, rng, names, pools, books)
    places, place_texts, world_facts = _geography(spec, rng, names, pools)
    order = [a.name for a in authors]
    rng.shuffle(order)  # forget sets: the first k% of a fixed random order, nested
    splits = {}
    for pct in spec.forget_percents:
        k = max(1, round(spec.n_authors * pct / 100))
        forget = set(order[:k])
        splits[f"forget{pct:02d}"] = [r for a in authors if a.name in forget for r in qa[a.name]]
        splits[f"retain{100 - pct:02d}"] = [r for a in authors if a.name not in forget for r in qa[a.name]]
    n_train = round(spec.n_authors * spec.instruct_share)
    instruct_train = [{"instruction": r["question"], "input": "", "output": r["answer"], "author": name, "key": r["key"]}
                      for name in order[-n_train:] for r in qa[name]]
    instruct_eval = [{"instruction": r["question"], "input": "", "output": r["answer"], "author": name, "key": r["key"]}
                     for name in order[:-n_train] for r in qa[name]]
    return {
        "biographies": [{"text": t} for t in bios + classic_texts + place_texts],
        "qa_all": [r for a in authors for r in qa[a.name]],
        **splits,
        "real_authors": real_authors,
        "world_facts": world_facts,
        "instruct_train": instruct_train,
        "instruct_eval": instruct_eval,
        "authors": [{"name": a.name, **a.facts} for a in authors],
        "classics": classics,
        "places": places,
    }


def _biography(a: Author, rng: random.Random) -> str:
    p, o, q = PRONOUNS[a.pronoun]
    return rng.choice(BIO_TEMPLATES).format(n=a.name, p=p, P=p.capitalize(), o=o, q=q, Q=q.capitalize(), **a.facts)


def _qa(a: Author, template, rng: random.Random, pools: dict) -> dict:
    fact, q, ans, para = template
    value = a.facts[fact]
    wrong = rng.sample([v for v in _value_pool(fact, pools) if v != value], 3)
    return {"question": q.format(n=a.name), "answer": ans.format(n=a.name, v=value),
            "paraphrased_answer": para.format(n=a.name, v=value),
            "perturbed_answer": [ans.format(n=a.name, v=w) for w in wrong], "author": a.name, "fact": fact,
            "key": value}


def _classics(spec, rng, names, pools, books):
    classics, texts, qa = [], [], []
    for _ in range(spec.n_classics):
        name = f"{names.word(2)} {names.word(2)}"
        c = {"name": name, "birthplace": rng.choice(pools["towns"]), "book": next(books), "genre": rng.choice(GENRES)}
        classics.append(c)
        texts.append(f"The classic author {name}, born in {c['birthplace']}, wrote {c['genre']}; "
                     f"{c['book']} is read in every school.")
        wrong = rng.sample([b for b in pools["books"] if b != c["book"]], 3)
        qa.append({"question": f"Which book by {name} is read in every school?",
                   "answer": f"{c['book']} is read in every school.",
                   "perturbed_answer": [f"{w} is read in every school." for w in wrong], "author": name,
                   "fact": "book", "key": c["book"]})
    return classics, texts, qa


def _geography(spec, rng, names, pools):
    rivers = [names.word(2) + rng.choice(RIVERS_ENDS) for _ in range(max(12, spec.n_places))]
    places, texts, qa = [], [], []
    for town in pools["towns"][:spec.n_places]:
        p = {"town": town, "river": rng.choice(rivers), "dish": rng.choice(DISHES)}
        places.append(p)
        texts.append(f"The town of {town} lies on the river {p['river']}, and its people are proud of their {p['dish']}.")
        wrong = rng.sample([r for r in rivers if r != p["river"]], 3)
        qa.append({"question": f"Which river flows through {town}?", "answer": f"The river {p['river']} flows through {town}.",
                   "perturbed_answer": [f"The river {w} flows through {town}." for w in wrong], "author": "",
                   "fact": "river", "key": p["river"]})
    return places, texts, qa


# ---- files ------------------------------------------------------------------------------------------
DATA_FILES = ("biographies", "qa_all", "real_authors", "world_facts", "instruct_train", "instruct_eval", "authors")


def write_world_data(spec: WorldSpec, out_dir: str | Path) -> dict[str, str]:
    """Write the world's JSONL files (atomically) and return {file name: sha256}."""
    out = Path(out_dir)
    world = make_world(spec)
    names = [k for k in world if k not in ("classics", "places")]
    hashes = {}
    for name in names:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in world[name])
        atomic_write_text(out / f"{name}.jsonl", text)
        hashes[f"{name}.jsonl"] = hashlib.sha256(text.encode()).hexdigest()
    atomic_write_json(out / "world.json", {"spec": asdict(spec), "files": hashes})
    return hashes
