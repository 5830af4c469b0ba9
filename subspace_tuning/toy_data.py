"""The built-in toy task: generated sentences, so the quickstart needs no download and no data folder."""

from __future__ import annotations

import random

SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending",
            "the cast", "the script", "the story", "the dialogue", "the camera work", "the sequel"]
POSITIVE = ["great", "wonderful", "excellent", "brilliant", "delightful", "superb", "charming",
            "fantastic", "enjoyable", "lovely", "marvelous", "terrific"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "dull", "horrible", "tedious", "disappointing",
            "bland", "painful", "lousy", "mediocre"]
HELD_OUT = 3  # the last adjectives of each list appear only in the validation split
TEMPLATES = ["{s} was {n}{a}.", "i thought {s} was {n}{a}.", "honestly, {s} felt {n}{a}.",
             "everyone agreed that {s} was {n}{a}.", "to be fair, {s} is {n}{a}."]
NEGATIONS = ["not ", "never ", "hardly "]


def toy_sentiment(split: str, size: int, seed: int = 0) -> list[tuple[tuple[str], int]]:
    """``size`` (sentence, label) rows; label 1 = positive. Negation flips the adjective's polarity."""
    rng = random.Random(f"{seed}-{split}")
    part = slice(-HELD_OUT, None) if split != "train" else slice(None, -HELD_OUT)
    words = [(word, 1) for word in POSITIVE[part]] + [(word, 0) for word in NEGATIVE[part]]
    rows = []
    for _ in range(size):
        adjective, polarity = rng.choice(words)
        negated = rng.random() < 0.5
        sentence = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), a=adjective,
                                                n=rng.choice(NEGATIONS) if negated else "")
        rows.append(((sentence,), polarity ^ negated))
    return rows


GENERATORS = {"toy_sentiment": toy_sentiment}
