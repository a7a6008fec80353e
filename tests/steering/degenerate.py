"""Synthetic degenerate texts the fluency gate must reject, one family per failure mode."""

from __future__ import annotations

import random
import string

FAMILIES = ("empty", "symbols", "pseudo-words", "char loop", "token loop", "digits",
            "broken markup", "letter soup")


def synthetic(seed: int, per_family: int = 5) -> list[tuple[str, str]]:
    """``(family, text)`` pairs; different seeds give different texts of the same families."""
    rng = random.Random(seed)
    words = ["I'm sorry,", "no", "the cat", "yes!", "happy happy", "and then", "lol", "ok so"]
    out = []
    for _ in range(per_family):
        n = rng.randint(20, 60)
        out += [
            ("empty", rng.choice(["", " ", "\n\n", "\t \n ", "   "])),
            ("symbols", "".join(rng.choice(string.punctuation + "  \n") for _ in range(n))),
            ("pseudo-words", " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz" + "aeiou" * 2)
                                              for _ in range(rng.randint(3, 9)))
                                      for _ in range(n // 4))),
            ("char loop", rng.choice(["a", "ha", "!", "lo", "xo", ".", "?!"]) * n * 2),
            ("token loop", " ".join([rng.choice(words)] * (n // 3))),
            ("digits", " ".join(str(rng.randint(0, 99999)) for _ in range(n // 4))),
            ("broken markup", "".join(rng.choice(["(", ")", "\n\n", "**", "##", "<", ">", "-",
                                                  " ", "[", "]", "|"]) for _ in range(n))),
            ("letter soup", "".join(rng.choice(string.ascii_letters + " ") for _ in range(n * 2))),
        ]
    return out
