"""QuickEval: cheap in-loop metrics every N steps on rank 0 only; other ranks do nothing; train flags restored."""

from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

import wan2.config_resolvers  # noqa: F401  (registers the settings dataclasses the configs extend)
from wan2.backbones.stack import load_backbone
from wan2.lightning.callbacks import QuickEval

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, metrics))


class TinyModule(torch.nn.Module):
    """What QuickEval needs of a FlowMatchingModule: backbone, its transformer / text encoder, sample_cfg."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.transformer, self.text_encoder = (
            backbone,
            backbone.transformer,
            backbone.text_encoder,
        )
        self.sample_cfg = {"guidance_scale": 2.5}


@pytest.fixture(scope="module")
def module():
    torch.set_num_threads(1)
    return TinyModule(load_backbone(ROOT / "pretrained" / "wan_tiny_base"))


def _trainer(step: int, rank0: bool, logger: Recorder, strategy=None):
    return SimpleNamespace(
        global_step=step, is_global_zero=rank0, loggers=[logger], datamodule=None, strategy=strategy
    )


def test_rank_zero_logs_every_n_steps_and_other_ranks_do_nothing(module):
    cb = QuickEval(every_n_steps=2, num_prompts=2, num_inference_steps=2, split="test")
    other, zero = Recorder(), Recorder()
    module.train()
    cb.on_train_batch_end(_trainer(2, False, other), module, None, None, 0)
    assert other.calls == []  # not rank 0: no sampling, no logging, nothing to wait for
    cb = QuickEval(every_n_steps=2, num_prompts=2, num_inference_steps=2, split="test")
    cb.on_train_batch_end(_trainer(1, True, zero), module, None, None, 0)
    assert zero.calls == []  # not a multiple of every_n_steps
    cb.on_train_batch_end(_trainer(2, True, zero), module, None, None, 0)
    cb.on_train_batch_end(_trainer(2, True, zero), module, None, None, 1)  # gradient accumulation: same step
    assert len(zero.calls) == 1 and zero.calls[0][0] == 2
    metrics = zero.calls[0][1]
    assert set(metrics) == {"quick_eval/traj_acc", "quick_eval/colour_acc", "quick_eval/flicker"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert module.training and module.transformer.training and module.text_encoder.training  # restored


def test_under_fsdp_every_rank_samples_and_rank_zero_logs(module):
    """FSDP2 forwards gather shards from every rank: all ranks must sample, only rank 0 logs."""
    from wan2.lightning.distributed import FSDP2Strategy

    sampled, log = [], Recorder()
    cb = QuickEval(every_n_steps=2, num_prompts=2, num_inference_steps=2, split="test")
    cb.evaluate = lambda pl_module, rj=None: sampled.append(1) or {"quick_eval/traj_acc": 1.0}
    cb.on_train_batch_end(_trainer(2, False, log, FSDP2Strategy()), module, None, None, 0)
    assert sampled == [1] and log.calls == []


def test_callbacks_quick_eval_config_adds_to_the_defaults():
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["callbacks=quick_eval"])
    assert {"checkpoint", "lr_monitor", "quick_eval"} <= set(cfg.callbacks)
    cb = hydra.utils.instantiate(cfg.callbacks.quick_eval)
    assert isinstance(cb, QuickEval) and cb.every_n_steps == 200
