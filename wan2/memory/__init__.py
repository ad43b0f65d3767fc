"""Memory mechanisms for real Wan 2.2 training on the GPUs researchers have (the ``memory`` config group).

Every setting is declared once in ``wan2.memory.config.MemoryConfig`` (``configs/memory/*.yaml``: ``default``,
``24gb``, ``80gb`` only override it); the mechanisms live beside it: frozen weights in the compute dtype
(``frozen``), gradient checkpointing and activation offload (``activations``), fp8 storage of frozen Linears
(``fp8``), block swap (``block_swap``), modules kept in CPU memory and borrowed (``offload``). ``apply`` holds
what a run does with them (``wan2.tasks.build_module`` and the ``MemoryPlacement`` callback); ``wan2.plan``
counts each of them. Importing this package imports
no torch.
"""

from wan2.memory.config import MemoryConfig

__all__ = ["MemoryConfig"]
