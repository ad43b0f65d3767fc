"""Exponential moving average of trainable weights, saved inside Lightning checkpoints (exact resume)."""

from __future__ import annotations

import contextlib

import torch

from wan2.lightning.distributed import local_tensor as _local


class EMA:
    """Shadow copies of ``named_params``; ``decay`` warms up as min(decay, (1 + n) / (10 + n))."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float):
        self.params = named_params
        self.decay = decay
        # sharded (FSDP2 DTensor) parameters on one rank: the local tensor is the whole weight
        self.shadow = {n: _local(p).detach().clone().float() for n, p in named_params.items()}
        self.num_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        if self.num_updates == 0:
            self._check_whole()
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for n, p in self.params.items():
            if (
                self.shadow[n].device != p.device
            ):  # built on the CPU before Lightning moved the model to the GPU
                self.shadow[n] = self.shadow[n].to(p.device)
            self.shadow[n].lerp_(_local(p).detach().float(), 1.0 - d)

    def _check_whole(self) -> None:
        """Sharded parameters (FSDP over several GPUs) hold a slice only: refuse them with the key to change."""
        for n, p in self.params.items():
            if _local(p).shape != self.shadow[n].shape:
                raise RuntimeError(
                    f"objective.ema_decay: {n} is sharded ({tuple(p.shape)} of {tuple(self.shadow[n].shape)} on this "
                    "rank) and the EMA keeps whole weights; set objective.ema_decay=0 with a sharded FSDP run "
                    "(trainer=fsdp on one GPU, or trainer=ddp, keep it)"
                )

    @contextlib.contextmanager
    def swapped(self):
        """Temporarily load the EMA weights into the live parameters."""
        backup = {n: _local(p).detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                _local(p).copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    _local(p).copy_(backup[n])

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {n: t.clone() for n, t in state["shadow"].items()}
        self.num_updates = int(state["num_updates"])
