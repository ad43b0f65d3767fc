"""Every use of a private Lightning / diffusers-PEFT attribute, in one place.

These attributes are not public API and may move in any upgrade. ``tests/test_compat.py`` checks each one on the
installed classes, so an upgrade that moves one fails there, by name, instead of somewhere deep in a training run.
Each function says which private attribute it touches and why no public API does the job.
"""

from __future__ import annotations


def request_graceful_stop(trainer) -> None:
    """Make the trainer stop after the current batch, as if it had received SIGTERM.

    Private: ``trainer._signal_connector.received_sigterm``. Lightning's loops read ``trainer.received_sigterm``
    (a read-only property over that flag) after every batch, raise ``SIGTERMException`` and broadcast the stop to
    every rank; ``trainer.should_stop`` would end the fit quietly, without the exception that ``Preemption``
    saves the checkpoint on and the CLI turns into exit 75.
    """
    trainer._signal_connector.received_sigterm = True


def batches_done_this_epoch(trainer) -> int:
    """Training batches finished in the current epoch (0 without a trainer); a resumed run skips this many.

    Internal: ``trainer.fit_loop.epoch_loop.batch_progress.current.processed`` (Lightning's own progress counter,
    restored from the checkpoint; there is no public accessor).
    """
    if trainer is None:
        return 0
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def attached_trainer(module):
    """The Trainer a LightningModule is attached to, or None (``module.trainer`` raises when there is none).

    Private: ``LightningModule._trainer``.
    """
    return module._trainer


def forget_peft_adapters(model) -> None:
    """Tell a diffusers model that it holds no PEFT adapter any more (after its LoRA layers were merged away).

    Private: diffusers' ``PeftAdapterMixin._hf_peft_config_loaded``; ``add_adapter`` / ``load_lora_adapter`` skip
    their setup when it is still True. diffusers has no public "adapters were merged and removed" call that
    leaves the merged base layers in place.
    """
    if hasattr(model, "peft_config"):
        del model.peft_config
    model._hf_peft_config_loaded = False


def set_model_parallel_sizes(strategy, data_parallel: int, tensor_parallel: int) -> None:
    """Fix the device-mesh sizes of a Lightning ``ModelParallelStrategy`` before its ``setup_environment``
    builds the mesh (``FSDP2Strategy``: pure data parallel over every rank of every node).

    Private: ``ModelParallelStrategy._data_parallel_size`` / ``_tensor_parallel_size``; the constructor's "auto"
    means data parallel over nodes only, and the world size is not known when the strategy is constructed.
    """
    strategy._data_parallel_size = data_parallel
    strategy._tensor_parallel_size = tensor_parallel


def saves_distributed_checkpoint(strategy) -> bool:
    """Whether a ``ModelParallelStrategy`` writes sharded checkpoint directories (its constructor argument).

    Private: ``ModelParallelStrategy._save_distributed_checkpoint`` (not exposed as a property).
    """
    return bool(strategy._save_distributed_checkpoint)


def set_logger_step(trainer, step: int) -> None:
    """Set the step Lightning passes to its loggers (after a resume it restarts one batch late).

    Private: ``trainer.fit_loop.epoch_loop._batches_that_stepped`` (the loggers' step counter; no public setter).
    """
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


# Private hooks of Lightning's CSV ``ExperimentWriter`` that ``wan2.lightning.loggers`` overrides or calls:
# ``_check_log_dir_exists`` (deletes an existing metrics.csv: overridden to keep it) and ``_record_new_keys``.
CSV_WRITER_PRIVATE_METHODS = ("_check_log_dir_exists", "_record_new_keys")


def i2v_prompt_clean_without_ftfy() -> None:
    """Let ``WanImageToVideoPipeline`` clean prompts when ``ftfy`` is not installed, as ``WanPipeline`` does.

    Module attribute: ``diffusers.pipelines.wan.pipeline_wan_i2v.basic_clean`` calls ``ftfy.fix_text`` without
    the ``is_ftfy_available()`` guard that ``pipeline_wan.basic_clean`` has (diffusers 0.42), so every call
    without ftfy raises NameError. Replaced by the guarded one; nothing changes where ftfy is installed.
    """
    from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_i2v
    from diffusers.utils import is_ftfy_available

    if not is_ftfy_available():
        pipeline_wan_i2v.basic_clean = pipeline_wan.basic_clean
