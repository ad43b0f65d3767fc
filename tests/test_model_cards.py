"""Model cards: full and LoRA exports carry Hub front matter (library_name, pipeline_tag, base_model, tags,
license) and a load recipe; LoRA metadata names its base and no expert on a single transformer; stock diffusers
still loads the LoRA."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import compose_cfg, model_cfg
from wan2.backbones.stack import build_backbone, load_backbone
from wan2.export import DEFAULT_LICENSE, card_info, export_pipeline, write_model_cards
from wan2.lightning.lora_module import LoRAModule

SAMPLING = {"num_inference_steps": 3, "guidance_scale": 3.5}


def front_matter(readme: Path) -> tuple[dict, str]:
    """(YAML front matter, body) of a model card; the card must start with a --- block."""
    text = readme.read_text()
    assert text.startswith("---\n"), text[:80]
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A tiny base export and the LoRA export of a LoRAModule on it (single transformer)."""
    root = tmp_path_factory.mktemp("cards")
    torch.manual_seed(0)
    base = export_pipeline(build_backbone(model_cfg("wan_tiny")).eval(), root / "base", sampling=SAMPLING)
    module = LoRAModule(load_backbone(base).eval(), lora={"rank": 2, "targets": "motion"})
    with torch.no_grad():  # non-zero B: the adapter changes something
        for name, p in module.backbone.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    module.export(root / "export")
    return base, root / "export" / "lora"


def test_full_export_card_has_hub_metadata_and_the_exported_guidance(exports):
    base, _ = exports
    meta, body = front_matter(base / "README.md")
    assert meta["library_name"] == "diffusers"
    assert meta["pipeline_tag"] == "text-to-video"
    assert meta["license"] == DEFAULT_LICENSE == "apache-2.0"
    assert {"wan2", "wan", "text-to-video"} <= set(meta["tags"]) and "lora" not in meta["tags"]
    assert "base_model" not in meta  # a randomly initialised model was fine-tuned from nothing
    assert "DiffusionPipeline.from_pretrained(" in body
    assert "guidance_scale=3.5" in body and "num_inference_steps=3" in body


def test_lora_export_metadata_names_its_base_and_no_expert(exports):
    base, lora = exports
    adapter = json.loads((lora / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base)
    wan2_lora = json.loads((lora / "wan2_lora.json").read_text())
    assert wan2_lora["expert"] is None  # one transformer: no high / low expert
    assert wan2_lora["base"] == str(base)
    meta, body = front_matter(lora / "README.md")
    assert meta["base_model"] == str(base)
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-video"
    assert {"wan2", "wan", "text-to-video", "lora"} <= set(meta["tags"])
    assert "load_lora_weights(" in body and "guidance_scale=3.5" in body  # the base's wan2.json guidance
    assert "load_into_transformer_2" not in body


def test_stock_diffusers_loads_the_lora(exports):
    """Every tensor of the file lands in the stock pipeline's transformer (the round trip of the video itself
    is tests/test_lora.py's)."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    base, lora = exports
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(lora, weight_name="pytorch_lora_weights.safetensors", adapter_name="a")
    assert pipe.get_list_adapters() == {"transformer": ["a"]}
    saved = load_file(lora / "pytorch_lora_weights.safetensors")  # transformer.<module>.lora_A.weight
    loaded = {k for k in pipe.transformer.state_dict() if ".lora_" in k}  # <module>.lora_A.a.weight
    assert {k.removeprefix("transformer.").replace(".weight", ".a.weight") for k in saved} == loaded


def test_training_run_cards_record_experiment_steps_license_and_metrics(exports, tmp_path):
    """What train.py adds after the export (tasks.train -> write_model_cards(card_info(...)))."""
    import shutil

    base, lora = exports
    export = tmp_path / "export"
    shutil.copytree(lora, export / "lora")
    shutil.copytree(base, export / "fused")
    cfg = compose_cfg(["experiment=lora_rankup", "export.license=mit", f"model.pretrained={base}"])
    module = LoRAModule(load_backbone(base).eval(), lora={"rank": 2})
    metrics = {"global_step": 7, "val/rank_trajectory/accuracy": 0.625, "train_seconds": 1.0}
    written = write_model_cards(export, card_info(cfg, module, metrics, tmp_path))
    assert sorted(p.parent.name for p in written) == ["fused", "lora"]
    for folder in ("lora", "fused"):
        meta, body = front_matter(export / folder / "README.md")
        assert meta["license"] == "mit"
        assert meta["base_model"] == str(base)
        assert "lora" in meta["tags"]  # the objective
        assert "`lora_rankup`" in body and "Training steps: 7" in body
        assert "| `val/rank_trajectory/accuracy` | 0.625 |" in body
        assert "train_seconds" not in body


def test_license_is_declared_once_in_the_train_config():
    cfg = compose_cfg([])
    assert "license" in cfg.export and cfg.export.license is None  # null: DEFAULT_LICENSE


def test_the_cards_load_recipe_runs_as_written(exports, tmp_path, monkeypatch):
    """The LoRA card's Python block (its folder filled in) makes the video with stock diffusers; the saving line
    runs where diffusers' export_to_video has a backend (opencv or imageio; this CPU image has neither)."""
    import importlib.util
    import re

    _, lora = exports
    _, body = front_matter(lora / "README.md")
    (code,) = re.findall(r"```python\n(.*?)```", body, re.S)
    code = code.replace("PATH/TO/THIS/FOLDER", str(lora))
    can_save = any(importlib.util.find_spec(m) for m in ("cv2", "imageio"))
    if not can_save:
        code = "\n".join(line for line in code.splitlines() if not line.startswith("export_to_video("))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code, scope)
    assert scope["video"].shape == (17, 32, 32, 3)  # (F, H, W, 3): the exported size
    assert (tmp_path / "video.mp4").is_file() == can_save
