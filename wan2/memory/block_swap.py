"""Block swap: the frozen weights of the last ``N`` transformer blocks live in CPU memory and are streamed to the
compute device one block ahead of use, then evicted (issue 16 item 4).

    swap = BlockSwap.attach(transformer.blocks, num_swapped=20, device="cuda")   # after the module is on cuda

How it works (hooks on every block, no change to the model's code):

- forward pre-hook of block ``j``: make sure ``j`` is loaded (wait for its copy), then start copying block
  ``j + 1`` if it is swapped. On CUDA the copy runs on a side ``torch.cuda.Stream`` from pinned memory, so it
  overlaps block ``j``'s compute; on the CPU the "device" is the CPU and the copy is a plain synchronous clone.
- forward post-hook of block ``j``: evict it (its frozen tensors point at the CPU masters again). Under grad,
  a hook on the block's output reloads it before its backward: the backward of block ``j`` runs with ``j``
  resident while ``j - 1`` is prefetched and ``j + 1`` is evicted (reverse order, the same two-block window).

Backward needs the weights again. Both ways of getting them are handled:

- with gradient checkpointing (the recommended setting): the backward of a block recomputes its forward; the
  output hook has loaded the block just before (reentrant checkpointing has no such hook: the recompute's
  pre-hook loads it), and a recompute never evicts the block it recomputes. Nothing the autograd graph keeps refers to a swapped
  weight between forward and backward, so at most two swapped blocks' weights are on the device at any time.
- without checkpointing: results are identical too (the output hook reloads what autograd saved by
  reference), but tensors that autograd saved from the forward (e.g. ``weight.t()`` of every Linear) keep
  their device copy alive until the block's backward, so the saving is small in training. Use it with
  ``gradient_checkpointing`` on; without grad (validation, generation) the saving is the full ``N - 2`` blocks.

Only *frozen* tensors (parameters with ``requires_grad=False`` and buffers) are swapped; trainable ones (LoRA
adapters) stay on the compute device with their gradients and optimizer state, so training them is unaffected.
The CPU masters are the parameters' own storage while evicted, so ``state_dict`` / ``load_state_dict`` work.
"""

from __future__ import annotations

import torch
from torch import nn

from wan2.memory.offload import allow_on_device, keep_off_device


def in_backward() -> bool:
    """True while the autograd engine runs a backward (also during a checkpoint's recompute)."""
    return torch._C._current_graph_task_id() != -1  # what torch.utils.checkpoint itself uses


class BlockSwap:
    """Keep the frozen weights of ``blocks[-num_swapped:]`` on the CPU and stream each to ``device`` for its use.

    ``resident`` is the set of swapped block indices whose weights are on the device now. ``trace`` (a list, or
    None) receives ``(event, block, resident)`` tuples: ``("forward", j, ...)`` at each swapped block's forward,
    ``("backward", j, ...)`` when its backward starts, ``("recompute", j, ...)`` when gradient checkpointing
    reruns its forward inside that backward; tests read it.
    """

    def __init__(self, blocks: nn.ModuleList, num_swapped: int, device, trace: list | None = None):
        n = len(blocks)
        if isinstance(num_swapped, bool) or not isinstance(num_swapped, int) or not 0 <= num_swapped <= n:
            raise ValueError(
                f"block_swap: {num_swapped!r} is not a block count in 0..{n} (this model has {n})"
            )
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.first = n - num_swapped  # blocks first .. n-1 are swapped
        self.trace = trace
        self.resident: set[int] = set()
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.events: dict[int, torch.cuda.Event] = {}
        # per swapped block: [(tensor to repoint, its CPU master)]; trainable params move to the device for good
        self.frozen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for j in range(self.first, n):
            pairs = []
            for p in self.blocks[j].parameters():
                if p.requires_grad:
                    p.data = p.data.to(self.device)
                else:
                    pairs.append((p, self._master(p.data, pin=cuda)))
            for b in self.blocks[j].buffers():
                pairs.append((b, self._master(b.data, pin=cuda)))
            self.frozen[j] = pairs
            for t, master in pairs:
                t.data = master  # evicted: the CPU master is the tensor's storage
            keep_off_device(self.blocks[j])  # a later module.to(device) (Lightning's placement) leaves them
        self.handles = []
        for j, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(self._pre_hook(j)))
            if j >= self.first:
                self.handles.append(block.register_forward_hook(self._post_hook(j)))

    @classmethod
    def attach(cls, blocks: nn.ModuleList, num_swapped: int, device, trace: list | None = None) -> BlockSwap:
        """Swap the last ``num_swapped`` of ``blocks`` (call once the model is on ``device``)."""
        return cls(blocks, num_swapped, device, trace=trace)

    def detach(self) -> None:
        """Remove the hooks and put every swapped block back on the device for good."""
        for h in self.handles:
            h.remove()
        self.handles = []
        for j in self.frozen:
            self._ensure(j)
            allow_on_device(self.blocks[j])
        self.frozen, self.resident = {}, set()

    @staticmethod
    def _master(t: torch.Tensor, pin: bool) -> torch.Tensor:
        cpu = t.detach().to("cpu", copy=True)
        return cpu.pin_memory() if pin else cpu

    # -- moving -------------------------------------------------------------------------------------------
    def _prefetch(self, j: int) -> None:
        """Start copying swapped block ``j`` to the device (side stream on CUDA; a synchronous clone on CPU)."""
        if j not in self.frozen or j in self.resident:
            return
        # inference_mode(False): a copy made during validation must stay usable by the next training step
        with torch.inference_mode(False):
            if self.stream is None:
                for t, master in self.frozen[j]:
                    t.data = master.clone()
            else:
                with torch.cuda.stream(self.stream):
                    for t, master in self.frozen[j]:
                        t.data = master.to(self.device, non_blocking=True)
                    self.events[j] = torch.cuda.Event()
                    self.events[j].record(self.stream)
        self.resident.add(j)

    def _ensure(self, j: int) -> None:
        """Block ``j`` is on the device and its copy has finished before the compute stream uses it."""
        self._prefetch(j)
        event = self.events.pop(j, None)
        if event is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(event)
            for t, _ in self.frozen[j]:
                t.data.record_stream(main)  # freed on eviction only once the compute stream is done with it

    def _evict(self, j: int) -> None:
        if j not in self.resident:
            return
        self._ensure(j)  # a prefetch still in flight must land before its memory is given back
        for t, master in self.frozen[j]:
            t.data = master
        self.resident.discard(j)

    def _log(self, event: str, j: int) -> None:
        if self.trace is not None:
            self.trace.append((event, j, tuple(sorted(self.resident))))

    # -- hooks --------------------------------------------------------------------------------------------
    def _keep_only(self, keep: set[int]) -> None:
        """Evict every resident block outside ``keep`` (the two-block window of the current position)."""
        for k in sorted(self.resident - keep):
            self._evict(k)

    def _pre_hook(self, j: int):
        def hook(module, args):
            if in_backward():  # a checkpoint recompute inside block j's backward (block j + 1's is over)
                if j in self.frozen:  # non-reentrant: the output hook did this already; reentrant: it cannot
                    self._keep_only({j, j - 1})
                    self._ensure(j)
                    self._log("recompute", j)
                    self._prefetch(j - 1)
                return
            self._keep_only({j, j + 1})  # e.g. the last block kept for a backward that never came
            if j in self.frozen:
                self._ensure(j)
            self._prefetch(j + 1)
            if j in self.frozen:
                self._log("forward", j)

        return hook

    def _post_hook(self, j: int):
        def hook(module, args, output):
            if in_backward():
                return  # a checkpoint recompute inside block j's backward: j stays until j - 1 starts
            grad = isinstance(output, torch.Tensor) and output.requires_grad
            if grad:
                output.register_hook(self._backward_hook(j))
            if not (grad and j == len(self.blocks) - 1):  # the last block's backward comes first: keep it
                self._evict(j)

        return hook

    def _backward_hook(self, j: int):
        def hook(grad):
            self._keep_only({j, j - 1})  # block j + 1's backward is over (it computed this gradient)
            self._ensure(j)
            self._log("backward", j)
            self._prefetch(j - 1)
            return None

        return hook
