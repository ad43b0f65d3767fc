"""An offline UMT5-style tokenizer built from the repo's own vocabulary (no hub download).

Word pieces cover the RankJump caption templates and common leaderboard words; single characters are a
low-scored fallback so any prompt tokenizes without ``<unk>`` for plain ASCII text.
"""

from __future__ import annotations

import re
import string

from transformers import T5Tokenizer

EXTRA_WORDS = (
    "a an and at by for from in into of on onto the to up down with new top first second third place "
    "rank ranks ranking leaderboard board row bar entry player user team score climbs climb rises rise jumps "
    "jump moves move drops drop falls fall slips slip holds hold keeps keep stays stay defends defend pulse "
    "enters enter joins join arrives arrive slides slide welcome comeback defended video clip animation "
    "style bright dark clean minimal smooth fast slow sparkle arrow green gold blue red purple orange"
).split()


def vocabulary() -> list[tuple[str, float]]:
    """(piece, score) pairs: specials first (ids 0, 1, 2 as in T5), then words, ranks, characters."""
    from wan2.data.rankjump import PALETTE, TEMPLATES

    words = set(EXTRA_WORDS) | set(PALETTE)
    for options in TEMPLATES.values():
        for template in options:
            text = re.sub(r"\{\w+\}", " ", template)
            words |= {w for w in re.split(r"[^a-z]+", text.lower()) if w}
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{w}", -2.0) for w in sorted(words)]
    pieces += [(f"▁#{n}", -2.0) for n in range(1, 10)] + [(f"▁{n}", -2.0) for n in range(10)]
    pieces += [("▁", -6.0), ("▁#", -6.0)]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces += [(c, -10.0) for c in chars]
    return pieces


def build_tokenizer(model_max_length: int = 32) -> T5Tokenizer:
    """The tiny stack's tokenizer; saves as ``tokenizer.json`` and reloads with ``AutoTokenizer``."""
    tok = T5Tokenizer(vocab=vocabulary(), extra_ids=0)
    tok.model_max_length = model_max_length
    return tok
