"""Regenerate tests/data/corpus.txt: simple English prose from a seeded grammar (deterministic, no rights
issues).

Run ``python tests/training/make_corpus.py``; the committed file must not change.
"""

from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = [
    "the old miller",
    "a young fox",
    "the quiet river",
    "my grandmother",
    "the village baker",
    "a tired traveller",
    "the north wind",
    "the little boat",
    "an honest farmer",
    "the bright lantern",
    "the schoolmaster",
    "a grey heron",
    "the ferryman",
    "the shepherd's dog",
    "a curious child",
]
VERBS = [
    "watched",
    "carried",
    "followed",
    "remembered",
    "painted",
    "found",
    "mended",
    "crossed",
    "counted",
    "visited",
    "praised",
    "forgot",
    "guarded",
    "described",
    "answered",
]
OBJECTS = [
    "the wooden bridge",
    "a basket of apples",
    "the long road home",
    "the winter stars",
    "an empty house",
    "the golden field",
    "a letter from the city",
    "the stone well",
    "the morning bread",
    "a broken wheel",
    "the harbour lights",
    "the first snow",
    "a field of barley",
    "the chapel bell",
    "the green hill",
]
PLACES = [
    "by the mill",
    "before dawn",
    "in the market square",
    "under the elm trees",
    "after the storm",
    "at the edge of the forest",
    "beside the harbour",
    "on a cold evening",
    "near the old church",
    "through the tall grass",
]
LINKS = ["and then", "but", "because", "while", "so"]
CLOSERS = [
    "Nobody spoke for a while.",
    "It was a good day.",
    "The bells rang twice.",
    "Rain began to fall.",
    "Everyone went home early.",
    "The lamps were lit one by one.",
]


def sentence(rng: random.Random) -> str:
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
    if rng.random() < 0.4:
        s += f", {rng.choice(LINKS)} {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    return s[0].upper() + s[1:] + "."


def corpus(lines: int = 400, seed: int = 1859) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        line = " ".join(sentence(rng) for _ in range(rng.randint(1, 2)))
        if rng.random() < 0.15:
            line += " " + rng.choice(CLOSERS)
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    Path(__file__).resolve().parents[1].joinpath("data", "corpus.txt").write_text(corpus())
