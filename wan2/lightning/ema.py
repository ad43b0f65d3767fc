"""Exponential moving average of trainable weights, saved inside Lightning checkpoints (exact resume)."""

from __future__ import annotations

import contextlib

import torch


class EMA:
    """Shadow copies of ``named_params``; ``decay`` warms up as min(decay, (1 + n) / (10 + n))."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float):
        self.params = named_params
        self.decay = decay
        self.shadow = {n: p.detach().clone().float() for n, p in named_params.items()}
        self.num_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - d)

    @contextlib.contextmanager
    def swapped(self):
        """Temporarily load the EMA weights into the live parameters."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {n: t.clone() for n, t in state["shadow"].items()}
        self.num_updates = int(state["num_updates"])
