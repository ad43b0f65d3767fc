"""I3D / FVD plumbing on RANDOMLY initialised networks: only shapes, formats, errors and finiteness are checked.

No number here is an FVD (no Kinetics weights on these machines). The full I3D at 224x224 is heavy on a small
CPU, so its end-to-end run is ``slow``; the default set runs the same pipeline with a cheap TorchScript stand-in.
"""

import numpy as np
import pytest
import torch
from torch import nn

from wan2.data.rankjump import RankJump, RankJumpConfig
from wan2.metrics.frechet import frechet_distance_from_features
from wan2.metrics.fvd import fvd, fvd_features, load_i3d
from wan2.metrics.i3d import ENDPOINTS, InceptionI3d

# a few (name, shape) pairs of the pytorch-i3d InceptionI3d state dict
EXPECTED_SHAPES = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3c.b2b.conv3d.weight": (96, 32, 3, 3, 3),
    "Mixed_4b.b1b.conv3d.weight": (208, 96, 3, 3, 3),
    "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
    "Mixed_5b.b0.conv3d.weight": (256, 832, 1, 1, 1),
    "Mixed_5c.b1b.bn.weight": (384,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class StandIn(nn.Module):
    """Cheap network with the StyleGAN-V TorchScript I3D call signature: (B, 3, T, 224, 224) -> (B, 400)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 2 * 4 * 4, 400)

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if rescale or resize or not return_features:
            raise RuntimeError("expected rescale=False, resize=False, return_features=True")
        return self.proj(torch.nn.functional.adaptive_avg_pool3d(x, (2, 4, 4)).flatten(1))


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    """A randomly initialised InceptionI3d saved as a plain state dict (the rgb_imagenet.pt format)."""
    torch.manual_seed(0)
    net = InceptionI3d()
    for m in net.modules():  # non-trivial BN statistics, so that a bad load would show
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("i3d") / "i3d_random_400.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def i3d_model(i3d_file):
    return load_i3d(i3d_file)


@pytest.fixture(scope="module")
def standin_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("i3d_ts") / "i3d_torchscript_standin.pt"
    torch.jit.save(torch.jit.script(StandIn().eval()), str(path))
    return path


def _clips(split: str, n: int, frames: int = 13) -> np.ndarray:
    rj = RankJump(RankJumpConfig(num_frames=frames), split, n)
    return np.stack([rj[i].frames for i in range(n)])  # (n, F, 32, 32, 3) uint8


def test_state_dict_names_shapes_roundtrip(i3d_file, i3d_model):
    state = torch.load(i3d_file, weights_only=True)
    modules = {k.split(".")[0] for k in state}
    assert modules == {e for e in ENDPOINTS if not e.startswith("MaxPool")} | {"logits"}
    for name, shape in EXPECTED_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    model = i3d_model
    assert model.kind == "state_dict" and model.weights == str(i3d_file) and not model.training
    loaded = model.net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_trunk_wiring_on_small_input(i3d_model):
    """Channel plumbing end to end on a small input (224 is only needed for the final 7x7 pooling)."""
    net = i3d_model.net
    x = torch.randn(1, 3, 10, 32, 32)
    with torch.inference_mode():
        for name in ENDPOINTS:
            x = getattr(net, name)(x)
        assert x.shape == (1, 1024, 2, 1, 1)  # time 10 -> 5 -> 3 -> 2 (TF 'SAME'), space 32 -> 1
        assert net.logits(x).shape == (1, 400, 2, 1, 1)


def test_missing_weights_name_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics\.fvd\.i3d_path"):
        load_i3d(tmp_path / "i3d_pretrained_400.pt")
    with pytest.raises(FileNotFoundError, match=r"metrics\.fvd\.i3d_path"):
        load_i3d(None)


def test_refuses_files_that_are_not_i3d_state_dicts(tmp_path):
    pickled_module = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), pickled_module)  # a whole pickled module, not a state dict
    with pytest.raises(ValueError, match="not a state dict"):
        load_i3d(pickled_module)
    not_tensors = tmp_path / "dict.pt"
    torch.save({"epoch": 3}, not_tensors)
    with pytest.raises(ValueError, match="not a state dict"):
        load_i3d(not_tensors)
    other_net = tmp_path / "linear.pt"
    torch.save(nn.Linear(2, 2).state_dict(), other_net)
    with pytest.raises(ValueError, match="not a Kinetics-400 InceptionI3d"):
        load_i3d(other_net)


def test_torchscript_features_shape(standin_file):
    model = load_i3d(standin_file)
    assert model.kind == "torchscript" and model.weights == str(standin_file)
    videos = _clips("test", 3)
    feats = fvd_features(videos, model, batch_size=2)
    assert feats.shape == (3, 400) and feats.dtype == np.float64 and np.isfinite(feats).all()
    # float (N, 3, F, H, W) in [-1, 1] is the same input as uint8 (N, F, H, W, 3)
    as_float = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    np.testing.assert_allclose(fvd_features(as_float, model, batch_size=2), feats, rtol=1e-5, atol=1e-6)


def test_refuses_fewer_than_10_frames(standin_file):
    with pytest.raises(ValueError, match="9 frames.*at least 10"):
        fvd_features(_clips("test", 2, frames=9), load_i3d(standin_file))


def test_fvd_pipeline_end_to_end_standin(standin_file):
    model = load_i3d(standin_file)
    real, fake = _clips("test", 3)[:, :10], _clips("val", 3)[:, :10]
    res = fvd(real, fake, model, batch_size=2)
    assert np.isfinite(res["fvd"]) and res["fvd"] > 0
    assert (res["num_real"], res["num_fake"], res["frames"], res["resolution"]) == (3, 3, 10, "32x32")
    assert res["weights"] == str(standin_file) and "rank-deficient" in res["warning"]
    same = fvd(real, real.copy(), model, batch_size=2)
    assert abs(same["fvd"]) < 1e-6 * max(res["fvd"], 1.0)


@pytest.mark.slow
def test_fvd_end_to_end_random_i3d(i3d_file, i3d_model):
    """The real I3D at 224x224 (random weights in the standard file format): runs, finite, identical ~0."""
    model = i3d_model
    real, fake = _clips("test", 2)[:, :10], _clips("val", 2)[:, :10]
    res = fvd(real, fake, model, batch_size=2)
    assert np.isfinite(res["fvd"]) and res["frames"] == 10 and res["weights"] == str(i3d_file)
    feats = fvd_features(real, model, batch_size=2)
    assert feats.shape == (2, 400) and np.isfinite(feats).all()
    scale = np.trace(np.cov(feats, rowvar=False)) + 1e-12
    assert abs(frechet_distance_from_features(feats, feats.copy())) < 1e-6 * scale
