"""What multi-device training needs beyond the trainer configs (``configs/trainer/ddp.yaml``, ``fsdp.yaml``).

- ``FSDP2Strategy``: fully sharded data parallel with torch's FSDP2 (``fully_shard``) over every rank, one
  sharded unit per diffusers ``WanTransformerBlock`` (``shard_per_block``); runs on GPUs (NCCL) and on CPUs
  (gloo), so the CPU tests run it for real;
- ``clip_grad_norm``: gradient clipping that works on sharded (DTensor) gradients;
- the blocks sharded one by one are ``wan2.backbones.wan_layout.wan_block_classes`` (FSDP2 here; also the
  ``auto_wrap_policy`` of Lightning's FSDP1 ``FSDPStrategy``, GPU only, for configs that select it);
- ``is_fsdp``: whether a ``trainer.strategy`` value selects FSDP (its checkpoints are sharded directories);
- ``SafeFileSystemReader`` / ``SafeLoadPlanner``: read a sharded checkpoint without running a pickle from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from wan2.compat import saves_distributed_checkpoint, set_model_parallel_sizes
from wan2.config_check import fsdp_strategy

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism over all ranks (``trainer=fsdp``): every rank holds 1/world of each sharded
    module's weights, gradients and AdamW states; checkpoints are sharded directories (one ``.distcp`` file per
    rank + ``meta.pt``) unless ``save_distributed_checkpoint=false``.

    Lightning's ``ModelParallelStrategy`` with the mesh fixed to (data_parallel=world, tensor_parallel=1); the
    LightningModule's ``configure_model`` shards with ``shard_per_block`` (``FlowMatchingModule.configure_model``).
    ``param_dtype`` / ``reduce_dtype`` (``bf16`` | ``fp32`` | null) are FSDP2's mixed precision: weights are
    gathered in ``param_dtype`` for compute, gradients reduced in ``reduce_dtype``; masters stay fp32.
    """

    def __init__(
        self,
        param_dtype: str | None = None,
        reduce_dtype: str | None = "fp32",
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        **kwargs,
    ):
        for key, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
            if value is not None and value not in DTYPES:
                raise ValueError(
                    f"trainer.strategy.{key}: {value!r} is not a dtype (allowed: null, {sorted(DTYPES)})"
                )
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        # pure data parallel: shard over all ranks
        set_model_parallel_sizes(self, data_parallel=self.num_nodes * self.num_processes, tensor_parallel=1)
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Sharded checkpoints are written to ``<name>.tmp`` by every rank, then rank 0 swaps the finished
        directory in (renameat2): a kill mid-write leaves the previous checkpoint whole under the final name."""
        if not saves_distributed_checkpoint(self):
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        import shutil

        from wan2.export import swap_in

        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(path.name + ".tmp")
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed write
        self.barrier("wan2_ckpt_tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("wan2_ckpt_written")
        if self.global_rank == 0:
            swap_in(tmp, path)
        self.barrier("wan2_ckpt_swapped")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Lightning's sharded load (model, then each optimizer, then ``meta.pt``), read through
        ``SafeFileSystemReader`` / ``SafeLoadPlanner``: no file of the folder is unpickled beyond plain data,
        even one swapped in after ``wan2.tasks`` vetted it. A single-file checkpoint loads weights-only."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if not (path.is_dir() and (path / "meta.pt").is_file()):
            return super().load_checkpoint(path, weights_only=True)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        from wan2.lightning.reliability import safe_torch_load

        state = {"state_dict": get_model_state_dict(self.model)}
        load_sharded(state, path)
        self.model.load_state_dict(state["state_dict"], strict=self.lightning_module.strict_loading)
        for i, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{i}"
            state = {key: get_optimizer_state_dict(self.model, optimizer)}
            load_sharded(state, path)
            set_optimizer_state_dict(
                self.model, optimizer, optim_state_dict=state[key], options=StateDictOptions(cpu_offload=True)
            )
        return safe_torch_load(path / "meta.pt")

    def fully_shard_kwargs(self) -> dict:
        """``fully_shard`` arguments: the data-parallel mesh, mixed precision, resharding after forward."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        kwargs = {
            "mesh": self.device_mesh["data_parallel"],
            "reshard_after_forward": self.reshard_after_forward,
        }
        if self.param_dtype is not None or self.reduce_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=DTYPES.get(self.param_dtype), reduce_dtype=DTYPES.get(self.reduce_dtype)
            )
        return kwargs


class SafeFileSystemReader(FileSystemReader):
    """torch's sharded-checkpoint reader with ``.metadata`` read by ``read_dcp_metadata`` (only checkpoint-
    metadata classes are unpickled; torch uses plain ``pickle.load``). Tensors are read weights-only by torch.

    torch turns a failed metadata read into a fallback and then an ``AssertionError`` holding only the text;
    the refusal is kept in ``refusal`` so that ``load_sharded`` can raise it as it was."""

    refusal: Exception | None = None

    def read_metadata(self, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import StorageMeta

        from wan2.lightning.reliability import UnsafeCheckpointError, read_dcp_metadata

        try:
            metadata = read_dcp_metadata(self._get_metadata_path(kwargs.get("rank")))
        except UnsafeCheckpointError as err:
            if kwargs.get("rank") is None and self.refusal is None:  # not torch's per-rank fallback
                self.refusal = err
            raise
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """torch's load planner with non-tensor entries (optimizer ``lr``, ``betas``, ...) unpickled weights-only
    (torch's own uses ``weights_only=False`` there)."""

    def load_bytes(self, read_item, value) -> None:
        import io

        from wan2.lightning.reliability import load_dcp_bytes

        # the file's bytes are unpickled weights-only (UnsafeCheckpointError otherwise); torch's own loader then
        # reads a pickle written here from that plain object, never the file's bytes
        obj = load_dcp_bytes(value, f"sharded checkpoint entry {read_item.dest_index.fqn!r}")
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)


def load_sharded(state: dict, path: Path) -> None:
    """``torch.distributed.checkpoint.load`` into ``state`` through ``SafeFileSystemReader`` /
    ``SafeLoadPlanner``; a refused or damaged file surfaces as its own one-line ``UnsafeCheckpointError``
    (torch wraps what fails on any rank into a ``CheckpointException`` holding every rank's traceback)."""
    from torch.distributed.checkpoint import CheckpointException, load

    from wan2.lightning.reliability import UnsafeCheckpointError

    reader = SafeFileSystemReader(path)
    try:
        load(state, storage_reader=reader, planner=SafeLoadPlanner())
    except CheckpointException as err:
        for exc, _ in err.failures.values():
            if isinstance(exc, UnsafeCheckpointError):
                raise exc from None
        if reader.refusal is not None:
            raise reader.refusal from None
        raise


def shard_per_block(
    module: torch.nn.Module, block_classes: set[type], **fully_shard_kwargs
) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` every submodule of ``block_classes`` (one all-gather per block), then the module
    itself (the remaining weights: embeddings, norms, output head). Already sharded modules are left alone."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(module, FSDPModule):
        return module
    for sub in module.modules():
        if isinstance(sub, tuple(block_classes)):
            fully_shard(sub, **fully_shard_kwargs)
    fully_shard(module, **fully_shard_kwargs)
    return module


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Clip gradients by their global 2-norm; sharded (DTensor) gradients count every rank's shard."""
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    sharded = [p for p in params if isinstance(p.grad, DTensor)]
    whole = [
        p for p in params if not isinstance(p.grad, DTensor)
    ]  # replicated (e.g. an unsharded text encoder)
    norms = []
    if sharded:  # full_tensor: a collective, every rank calls it
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in sharded]).full_tensor())
    if whole:
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in whole]))
    total = torch.linalg.vector_norm(torch.stack([n.float().to(norms[0].device) for n in norms]))
    for group in (sharded, whole):
        if group:
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded) tensor: ``DTensor.to_local()``, else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def is_fsdp(strategy) -> bool:
    """Whether a ``trainer.strategy`` value (a registry name, a ``_target_`` mapping or a strategy) is FSDP."""
    if isinstance(strategy, str | Mapping):
        return fsdp_strategy(strategy)
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy | FSDP2Strategy)
