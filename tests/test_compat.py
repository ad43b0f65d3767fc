"""The private Lightning / diffusers attributes ``wan2.compat`` relies on, checked on the installed classes.

If one of these fails after an upgrade, fix ``wan2/compat.py`` (the only place that touches them); nothing else
in wan2 uses a private attribute of these libraries.
"""

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wan2 import compat


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2)  # 4 batches an epoch

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(L.Callback):
    """Records ``batches_done_this_epoch`` before each batch; asks for a graceful stop at ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.done, self.trainers = stop_at, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.done.append(compat.batches_done_this_epoch(trainer))
        self.trainers.append(compat.attached_trainer(pl_module))
        if batch_idx == self.stop_at:
            compat.request_graceful_stop(trainer)


def trainer(probe: Probe, epochs: int = 1) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
    )


def test_private_attributes_exist_on_the_installed_classes():
    """The attributes themselves, by name: a rename in Lightning or diffusers fails here first."""
    from diffusers.loaders.peft import PeftAdapterMixin

    t = trainer(Probe())
    assert hasattr(t, "_signal_connector") and t._signal_connector.received_sigterm is False
    assert t.fit_loop.epoch_loop.batch_progress.current.processed == 0
    assert "_trainer" in vars(Tiny()) and Tiny()._trainer is None
    assert PeftAdapterMixin._hf_peft_config_loaded is False


def test_model_parallel_strategy_keeps_its_mesh_sizes_and_checkpoint_flag():
    """``FSDP2Strategy`` (wan2/lightning/distributed.py) fixes the mesh sizes that Lightning's own
    ``setup_environment`` then reads, and asks whether checkpoints are sharded."""
    import inspect

    from lightning.pytorch.strategies import ModelParallelStrategy

    for sharded in (True, False):
        strategy = ModelParallelStrategy(save_distributed_checkpoint=sharded)
        assert compat.saves_distributed_checkpoint(strategy) is sharded
    compat.set_model_parallel_sizes(strategy, data_parallel=8, tensor_parallel=1)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (8, 1)
    setup = inspect.getsource(ModelParallelStrategy.setup_environment)
    assert "self._data_parallel_size" in setup and "self._tensor_parallel_size" in setup


def test_graceful_stop_raises_sigterm_exception_after_the_batch():
    """Lightning still reads the flag after each batch: the batch that asked finishes, none runs after it."""
    probe = Probe(stop_at=1)
    with pytest.raises(SIGTERMException):
        trainer(probe).fit(Tiny())
    assert probe.done == [0, 1]  # batch 1 ran, batch 2 never started


def test_batches_done_counts_per_epoch_and_trainer_is_attached():
    probe = Probe()
    t = trainer(probe, epochs=2)
    module = Tiny()
    assert compat.attached_trainer(module) is None  # (``module.trainer`` would raise)
    t.fit(module)
    assert probe.done == [0, 1, 2, 3, 0, 1, 2, 3]  # restarts each epoch
    assert all(x is t for x in probe.trainers)


def test_forget_peft_adapters_lets_a_merged_model_take_a_new_adapter():
    """After merging LoRA away and forgetting it, diffusers sets up a fresh adapter (it skips that while the
    private flag is still True)."""
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.loaders.peft import PeftAdapterMixin
    from peft import LoraConfig

    from wan2.lightning.lora_module import _merge_peft

    class Toy(ModelMixin, ConfigMixin, PeftAdapterMixin):
        @register_to_config
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    model = Toy()
    model.add_adapter(LoraConfig(r=2, target_modules=["proj"], init_lora_weights=False))
    assert model._hf_peft_config_loaded is True
    x = torch.randn(3, 4)
    with torch.no_grad():
        with_lora = model.proj(x)
    _merge_peft(model)
    assert type(model.proj) is torch.nn.Linear  # merged back into a plain layer
    assert not hasattr(model, "peft_config") and model._hf_peft_config_loaded is False
    torch.testing.assert_close(model.proj(x).detach(), with_lora)
    model.add_adapter(LoraConfig(r=2, target_modules=["proj"]))  # a fresh adapter under the same name
    assert model._hf_peft_config_loaded is True and list(model.peft_config) == ["default"]


def test_logger_step_and_csv_writer_hooks_exist():
    """``set_logger_step`` moves the step the loggers see; the CSV writer hooks wan2's logger overrides exist."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    probe = Probe()
    t = trainer(probe)
    t.fit(Tiny())
    compat.set_logger_step(t, 123)
    assert t.fit_loop.epoch_loop._batches_that_stepped == 123
    for name in compat.CSV_WRITER_PRIVATE_METHODS:
        assert callable(getattr(ExperimentWriter, name, None)), name


def test_i2v_prompt_clean_works_without_ftfy():
    """``pipeline_wan_i2v.basic_clean`` exists and, after the shim, cleans a prompt with or without ftfy."""
    from diffusers.pipelines.wan import pipeline_wan_i2v

    from wan2.compat import i2v_prompt_clean_without_ftfy

    assert callable(pipeline_wan_i2v.basic_clean)
    i2v_prompt_clean_without_ftfy()
    assert pipeline_wan_i2v.prompt_clean("  the green row  climbs ") == "the green row climbs"
