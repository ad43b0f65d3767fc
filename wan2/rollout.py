"""Stable A/B routing of users between two models (standard library only, cheap to import)."""

from __future__ import annotations

import hashlib


def assign_variant(user_id: str, rollout: float = 0.1, salt: str = "wan2") -> str:
    """ "B" for a stable ``rollout`` fraction of users, else "A": sha256(salt + user_id) read as u in [0, 1).

    The same id gets the same variant in every process and run (no Python ``hash`` randomisation).
    """
    if not 0.0 <= rollout <= 1.0:
        raise ValueError(f"rollout: {rollout} is outside [0, 1]")
    digest = hashlib.sha256(f"{salt}{user_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "B" if u < rollout else "A"
