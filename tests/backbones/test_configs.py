"""Model configs: the official Wan 2.2 sizes build on the meta device with the published parameter counts."""

import resource
import time

import pytest
import torch
from transformers import AutoTokenizer

from tests.conftest import model_cfg
from wan2.backbones.stack import build_backbone, count_parameters


def test_ti2v_5b_on_meta_has_5b_parameters():
    cpu, peak = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bb = build_backbone(model_cfg("wan22_ti2v_5b"), device="meta")
    assert time.process_time() - cpu < 15  # CPU seconds (wall time depends on the machine's load)
    assert (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 2_000_000
    )  # KiB: 11 B params not allocated
    assert round(count_parameters(bb.transformer) / 1e9, 3) == 5.0
    assert bb.transformer_2 is None and bb.boundary_ratio is None
    assert bb.expand_timesteps and bb.pipeline().config.expand_timesteps
    assert all(
        p.device.type == "meta" for m in (bb.transformer, bb.vae, bb.text_encoder) for p in m.parameters()
    )
    assert bb.latent_shape(121, 704, 1280) == (48, 31, 44, 80)  # Wan2.2 VAE: 4x16x16, z 48
    assert bb.text_len == 512 and bb.scheduler.config.shift == 5.0
    assert bb.text_encoder.config.d_model == 4096 and bb.text_encoder.config.vocab_size == 256384


def test_a14b_on_meta_has_two_14b_experts():
    bb = build_backbone(model_cfg("wan22_t2v_a14b"), device="meta")
    assert bb.transformer is not None and bb.transformer_2 is not None
    assert bb.transformer is not bb.transformer_2
    for expert in (bb.transformer, bb.transformer_2):
        assert round(count_parameters(expert) / 1e9, 2) == 14.29
        assert next(expert.parameters()).device.type == "meta"
    assert bb.boundary_ratio == 0.875 and not bb.expand_timesteps
    pipe = bb.pipeline()
    assert pipe.config.boundary_ratio == 0.875 and pipe.transformer_2 is bb.transformer_2
    assert bb.latent_shape(81, 480, 832) == (16, 21, 60, 104)  # Wan2.1 VAE: 4x8x8, z 16
    assert bb.scheduler.config.shift == 12.0


def test_transformer_only_on_meta():
    bb = build_backbone(model_cfg("wan22_t2v_a14b"), components=("transformer",), device="meta")
    assert bb.text_encoder is None and bb.vae is None and bb.tokenizer is None
    assert bb.transformer.config.num_layers == 40 and bb.transformer_2 is not None


def test_tiny_stack_builds_and_runs():
    bb = build_backbone(model_cfg("wan_tiny")).eval()
    assert bb.transformer_2 is None and not bb.expand_timesteps
    c, f, h, w = bb.latent_shape(17, 32, 32)
    emb = bb.encode_prompts(["the green row climbs from #4 to #1"])
    assert emb.shape == (1, bb.text_len, bb.transformer.config.text_dim)
    with torch.no_grad():
        out = bb.transformer(
            hidden_states=torch.randn(1, c, f, h, w),
            timestep=torch.tensor([500.0]),
            encoder_hidden_states=emb,
            return_dict=False,
        )[0]
    assert out.shape == (1, c, f, h, w) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["wan_tiny", "wan22_ti2v_5b"])
def test_tokenizer_round_trip(tmp_path, name):
    bb = build_backbone(model_cfg(name), components=("tokenizer",))
    prompts = ["the green row climbs from #4 to #1", "Leaderboard: RED bar falls, then holds!", ""]
    ids, mask = bb.tokenize(prompts)
    assert ids.shape == (3, bb.text_len)
    bb.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    again = AutoTokenizer.from_pretrained(tmp_path)
    out = again(prompts, padding="max_length", max_length=bb.text_len, truncation=True, return_tensors="pt")
    assert torch.equal(out.input_ids, ids) and torch.equal(out.attention_mask, mask)
    assert bb.tokenizer.unk_token_id not in ids[0].tolist()
    assert again.decode(ids[0], skip_special_tokens=True) == prompts[0]
