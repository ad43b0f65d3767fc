"""Settings of the data modules (``wan2.lightning.data``), declared once; torch-free and Lightning-free.

Each ``configs/data/<name>.yaml`` extends ``data/base_<name>`` (these defaults) and only overrides; the
DataModules build the same dataclass from their keyword arguments, so no second default can disagree. The
checks give one line naming the key (``data.batch_size: 'abc' must be an int >= 1``); what depends on other
parts of the config (clip size vs the model's VAE stride, shard files on disk) stays in ``wan2.config_check``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from wan2.data.rankjump import EVENTS, PALETTE, SPLIT_SEED_BASE, RankJumpConfig
from wan2.settings import (
    Settings,
    check,
    check_bool,
    check_choice,
    check_int,
    check_num,
    did_you_mean,
    err,
    is_int,
    registrar,
    show,
)

DATA_CONFIGS: dict[str, type[DataSettings]] = {}  # config name -> settings class


def check_clip(at: str, num_frames, height, width) -> None:
    """A clip the Wan VAE can take: 4k+1 frames, at least 16x16 (the model's strides: ``config_check``)."""
    check(
        f"{at}.num_frames",
        num_frames,
        lambda v: is_int(v) and v >= 1 and (v - 1) % 4 == 0,
        "4k+1 (5, 9, 13, 17, ...)",
    )
    check_int(f"{at}.height", height, 16)
    check_int(f"{at}.width", width, 16)


@dataclasses.dataclass
class _RankJumpChecks(Settings):
    """The checks of ``data.rankjump``; ``RankJumpSettings`` below adds ``RankJumpConfig``'s fields."""

    def __post_init__(self):  # checked by ``check`` with the node's key, not by RankJumpConfig's ValueErrors
        if isinstance(self.colours, list):
            self.colours = tuple(self.colours)

    def check(self, at: str) -> None:
        check_clip(at, self.num_frames, self.height, self.width)
        check_int(f"{at}.fps", self.fps, 1)
        check_int(f"{at}.rows", self.rows, 5, 8)
        check_int(f"{at}.heldout_fraction", self.heldout_fraction, 1)
        check_bool(f"{at}.labels", self.labels)
        check_bool(f"{at}.marks", self.marks)
        check(
            f"{at}.colours",
            self.colours,
            lambda v: isinstance(v, tuple) and len(v) > 0,
            f"a non-empty list of colours from {list(PALETTE)}",
        )
        for c in self.colours:
            check_choice(f"{at}.colours", c, list(PALETTE))
        check(
            f"{at}.mix",
            self.mix,
            lambda v: isinstance(v, dict),
            f"a mapping event -> weight over {list(EVENTS)}",
        )
        for event, w in self.mix.items():
            if event not in EVENTS:
                err(f"{at}.mix.{event}: not an event (allowed: {list(EVENTS)}){did_you_mean(event, EVENTS)}")
            check_num(f"{at}.mix.{event}", w, 0)
        if sum(self.mix.values()) <= 0:
            err(f"{at}.mix: {show(self.mix)} must have weights >= 0 with a positive sum")

    def plain(self) -> RankJumpConfig:
        """The generator's own config (``wan2.data.rankjump``), equal field for field."""
        return RankJumpConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RankJumpConfig)})


def _field(f: dataclasses.Field) -> dataclasses.Field:
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory)
    return dataclasses.field(default=f.default)


# ``RankJumpConfig``'s fields and defaults (declared once, in wan2/data/rankjump.py; it is frozen, so copied
# rather than inherited) as a settings node that ``Settings.build`` fills and checks with the dotted key.
RankJumpSettings = dataclasses.make_dataclass(
    "RankJumpSettings",
    [(f.name, f.type, _field(f)) for f in dataclasses.fields(RankJumpConfig)],
    bases=(_RankJumpChecks,),
    namespace={"__module__": __name__},
)


@dataclasses.dataclass
class DataSettings(Settings):
    """Base of the data settings: what every data module has."""

    KEY: ClassVar[str] = "data"
    NAME: ClassVar[str] = ""

    batch_size: int = 8
    num_workers: int = 0  # DataLoader worker processes

    def check(self, at: str) -> None:
        check_int(f"{at}.batch_size", self.batch_size, 1)
        check_int(f"{at}.num_workers", self.num_workers, 0)


# ``@register(name)``: ``DATA_CONFIGS[name] = cls`` and ``data/base_<name>`` in Hydra's ConfigStore
register = registrar(DATA_CONFIGS, "data")


def for_node(node) -> type[DataSettings] | None:
    """The settings class of a ``data`` node: by its ``_target_`` (full path or class name), else (a subclass
    of a registered module, e.g. the encoder's ``RenderedOnceDataModule``) the first whose fields hold all its
    keys; None when nothing fits (instantiate then says what is wrong)."""
    target = str(node.get("_target_") or "")
    for cls in DATA_CONFIGS.values():
        if cls.TARGET == target or cls.TARGET.rsplit(".", 1)[-1] == target.rsplit(".", 1)[-1]:
            return cls
    keys = set(node) - {"_target_"}
    for cls in DATA_CONFIGS.values():
        if keys <= {f.name for f in dataclasses.fields(cls)}:
            return cls
    return None


@register("rankjump")
@dataclasses.dataclass
class RankJumpDataConfig(DataSettings):
    """RankJump clips rendered on the fly (``wan2.lightning.data.RankJumpDataModule``)."""

    TARGET: ClassVar[str] = "wan2.lightning.data.RankJumpDataModule"

    rankjump: RankJumpSettings = dataclasses.field(
        default_factory=RankJumpSettings
    )  # size and look of the clips
    num_train: int = 4000  # training clips (deterministic by index)
    num_val: int = 64  # validation clips
    val_split: str = "heldout"  # held-out (old, new, colour) combinations never seen in training

    def check(self, at: str) -> None:
        super().check(at)
        check_int(f"{at}.num_train", self.num_train, 1)
        check_int(f"{at}.num_val", self.num_val, 1)
        check_choice(f"{at}.val_split", self.val_split, list(SPLIT_SEED_BASE))
        if not isinstance(self.rankjump, RankJumpSettings):
            err(f"{at}.rankjump: {show(self.rankjump)} must be a mapping of RankJump settings")
        self.rankjump.check(f"{at}.rankjump")


@register("rankjump_latents")
@dataclasses.dataclass
class LatentDataConfig(RankJumpDataConfig):
    """RankJump encoded once by the VAE into a latent cache (``wan2.lightning.data.LatentDataModule``)."""

    TARGET: ClassVar[str] = "wan2.lightning.data.LatentDataModule"

    num_train: int = 6000
    batch_size: int = 32
    val_batch_size: int = 16  # validation renders clips and samples: smaller batches
    cache_dir: str = "data/cache"  # where the latent cache is built (configs: ${paths.data_dir}/cache)
    cache_text: bool = False  # also cache text embeddings (only when the text encoder is frozen)

    def check(self, at: str) -> None:
        super().check(at)
        check_int(f"{at}.val_batch_size", self.val_batch_size, 1)
        check_bool(f"{at}.cache_text", self.cache_text)


@register("shards")
@dataclasses.dataclass
class ShardDataConfig(DataSettings):
    """WebDataset video shards (``wan2.lightning.data.VideoDataModule``)."""

    TARGET: ClassVar[str] = "wan2.lightning.data.VideoDataModule"

    train_shards: str | list[str] | None = None  # required: brace pattern, glob, list, or pipe: URL
    val_shards: str | list[str] | None = None  # null: no validation (only RankJump shards can be judged)
    val_batch_size: int | None = None  # null: batch_size
    num_workers: int = 2  # decoding runs in the workers; their bad-sample counts are shared with the trainer
    shuffle_buffer: int = 256  # samples; 0: no shuffling (shards and samples in order)
    seed: int = 0  # shuffle seed (configs: ${seed})
    num_frames: int = 17  # a sample with another frame count is bad (wrong_frames), never resized
    height: int = 32
    width: int = 32  # another (height, width) is bad (wrong_size)
    max_bad_fraction: float = (
        0.05  # stop (DataQualityError) when more than this share of the samples seen is bad...
    )
    min_seen: int = 200  # ...once at least this many samples were seen
    epoch_size: int | None = (
        None  # samples per epoch (endless reshuffled stream); null: one pass over the shards
    )
    pin_memory: bool = False
    cache_dir: str | None = None  # a bucketed train_shards folder only: one latent cache per bucket in here
    cache_text: bool = False  # with cache_dir: also cache text embeddings (a frozen text encoder only)

    def check(self, at: str) -> None:
        super().check(at)
        if not self.train_shards:
            err(
                f"{at}.train_shards: {'null' if self.train_shards is None else show(self.train_shards)}; required: a brace pattern, glob, list of .tar "
                "shards or a pipe: URL (e.g. data.train_shards='data/rankjump/train-*.tar')"
            )
        check_int(f"{at}.val_batch_size", self.val_batch_size, 1, none_ok=True)
        check_int(f"{at}.shuffle_buffer", self.shuffle_buffer, 0)
        check_int(f"{at}.seed", self.seed, 0)
        check_clip(at, self.num_frames, self.height, self.width)
        check_num(f"{at}.max_bad_fraction", self.max_bad_fraction, 0, 1)
        check_int(f"{at}.min_seen", self.min_seen, 0)
        check_int(f"{at}.epoch_size", self.epoch_size, 1, none_ok=True)
        check_bool(f"{at}.pin_memory", self.pin_memory)
        check(
            f"{at}.cache_dir", self.cache_dir, lambda v: v is None or isinstance(v, str), "null or a folder"
        )
        check_bool(f"{at}.cache_text", self.cache_text)
        if self.cache_text and not self.cache_dir:
            err(f"{at}.cache_text: true needs {at}.cache_dir (the per-bucket latent caches)")
