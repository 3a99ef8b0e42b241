"""The metrics against a reference (``--reference``, ``--metrics``): the torchmetrics-backed ones give
torchmetrics' own number on the same features (a locally built feature network stands in for Inception /
DINOv2, so nothing is downloaded), the weight-free ones are the patches testbed's metrics, a missing
optional dependency names the extra, and a reference's features are computed once and cached on disk."""
import sys
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from covkernels.cli import main
from covkernels.eval import features, metrics
from covkernels.eval.features import SPACES, FeatureSpace, MissingExtraError, register_space, to_uint8
from covkernels.eval.reference import Reference, digest
from covkernels.eval.reference_scorer import (KID_SEED, METRICS, ReferenceMetric, ReferenceScorers, check_metrics,
                                              register_metric, torchmetrics_fd, torchmetrics_kid)
from covkernels.eval.scorers import PatchesScorer


class LocalFeatures(torch.nn.Module):
    """uint8 images -> 8 float64 features from seeded random convolutions (Inception's input convention)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.conv = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=gen, dtype=torch.float64))

    def forward(self, x):
        h = torch.nn.functional.conv2d(x.double() / 255.0, self.conv, padding=1)
        return torch.tanh(h).mean((2, 3))


def as_reference(images: torch.Tensor) -> Reference:
    return Reference(images, "in memory", digest(images), "float, already in [-1, 1]")


def images(n, seed, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=gen) * 1.6 - 0.8 + shift).clamp(-1, 1)


@pytest.fixture
def local_metrics():
    net = LocalFeatures()
    register_space(FeatureSpace("local_test", "local-test-net", lambda channels: net, "uint8"))
    register_metric("fd_local", ReferenceMetric("FD, local net", True, "local_test", torchmetrics_fd, torchmetrics=True))
    register_metric("kid_local", ReferenceMetric("KID, local net", True, "local_test", torchmetrics_kid,
                                                 torchmetrics=True))
    yield net
    for name in ("fd_local", "kid_local"):
        METRICS.pop(name)
    SPACES.pop("local_test")


def test_the_interface_reproduces_torchmetrics_on_the_same_features(local_metrics, tmp_path):
    net, ref, x = local_metrics, as_reference(images(40, 0)), images(24, 1, shift=0.1)
    ours = ReferenceScorers(ref, ["fd_local", "kid_local"], cache_dir=str(tmp_path))(None, 24, seed=0)(x)

    fid = FrechetInceptionDistance(feature=net)
    fid.update(to_uint8(ref.images), real=True)
    fid.update(to_uint8(x), real=False)
    with warnings.catch_warnings():  # torchmetrics' note that KID keeps every feature in memory
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=net, subsets=100, subset_size=24)
    kid.update(to_uint8(ref.images), real=True)
    kid.update(to_uint8(x), real=False)
    torch.manual_seed(KID_SEED)
    direct_kid = float(kid.compute()[0])
    assert ours["fd_local"] == pytest.approx(float(fid.compute()), rel=1e-9)
    assert ours["kid_local"] == pytest.approx(direct_kid, rel=1e-9)
    assert ours["fd_local"] > 1e-3 and abs(ours["kid_local"]) > 1e-6  # shifted samples: a distance to reproduce
    # torchmetrics' eigenvalue formula and our nuclear-norm one agree where the covariances are full rank
    fake, real = net(to_uint8(x)), net(to_uint8(ref.images))
    assert torchmetrics_fd(fake, real) == pytest.approx(metrics.frechet_distance(fake, real), rel=1e-6)


def test_the_weight_free_metrics_are_the_patches_testbeds(tmp_path):
    testbed = PatchesScorer(None, num=64, seed=0)
    ours = ReferenceScorers(as_reference(testbed.reference), ["fd_random", "kid_random", "fd_pooled",
                                                              "spectrum_error"], cache_dir=str(tmp_path))
    blurred = torch.nn.functional.avg_pool2d(testbed.reference2, 3, stride=1, padding=1, count_include_pad=False)
    for x in (testbed.reference2, blurred):
        theirs, mine = testbed(x), ours(None, 64, seed=0)(x)
        assert mine["fd_random"] == pytest.approx(theirs["fd_features"], rel=1e-9)
        assert mine["kid_random"] == pytest.approx(theirs["kid_features"], rel=1e-9)
        assert mine["fd_pooled"] == pytest.approx(theirs["fd_pooled"], rel=1e-9)
        assert mine["spectrum_error"] == pytest.approx(theirs["spectrum_error"], rel=1e-9)
    assert ours(None, 64, 0)(blurred)["fd_random"] > 2 * ours(None, 64, 0)(testbed.reference2)["fd_random"]


def test_reference_features_are_computed_once_and_cached_on_disk(tmp_path, monkeypatch):
    ref = as_reference(images(20, 2))
    first = ReferenceScorers(ref, ["fd_pooled"], cache_dir=str(tmp_path)).real("pooled")
    assert len(list(tmp_path.glob("pooled-4x4-unit/*.pt"))) == 1
    monkeypatch.setattr(features, "_MEMORY", {})  # a new process: only the disk cache is left
    again = ReferenceScorers(ref, ["fd_pooled"], cache_dir=str(tmp_path))

    def refuse(*args):
        raise AssertionError("the reference's features were computed again")

    monkeypatch.setattr(features.Extractor, "__call__", refuse)
    assert torch.equal(again.real("pooled"), first)
    other = as_reference(images(20, 3))
    with pytest.raises(AssertionError, match="computed again"):  # another reference: another key
        ReferenceScorers(other, ["fd_pooled"], cache_dir=str(tmp_path)).real("pooled")


def test_a_missing_extra_is_named(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m.split(".")[0] == "torchmetrics"]:  # as if it were not installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"pip install 'covkernels\[metrics\]'"):
        check_metrics(["fd_random", "fid"])
    with pytest.raises(MissingExtraError, match=r"covkernels\[metrics\]"):
        torchmetrics_fd(torch.randn(4, 2), torch.randn(4, 2))
    assert check_metrics(["fd_random", "spectrum_error"]) == ("fd_random", "spectrum_error")  # weight-free: fine
    np.save(tmp_path / "ref.npy", to_uint8(torch.zeros(8, 3, 16, 16)).numpy())  # the gaussian testbed's shape
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--model", "gaussian", "--reference", str(tmp_path / "ref.npy"), "--metrics", "fd_dinov2"])
    assert exc.value.code == 2 and "pip install 'covkernels[metrics]'" in capsys.readouterr().err


def test_inception_without_torch_fidelity_names_the_extra(monkeypatch):
    import torchmetrics.image.fid as tm_fid

    monkeypatch.setattr(tm_fid, "_TORCH_FIDELITY_AVAILABLE", False)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(MissingExtraError, match=r"Inception-v3 features .*covkernels\[metrics\]"):
        SPACES["inception"].build(3)
    with pytest.raises(MissingExtraError, match="metric 'precision'"):
        check_metrics(["precision"])


class StubDino(torch.nn.Module):
    """Stands in for torch.hub's dinov2_vitl14: (N, 3, 224, 224) -> (N, 5), no download."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)

    def forward(self, x):
        assert x.shape[1:] == (3, 224, 224)
        return self.proj(x.mean((2, 3)))


def test_the_dinov2_space_is_a_module_that_moves_to_the_device(monkeypatch):
    stub = StubDino()
    monkeypatch.setattr(torch.hub, "load", lambda repo, name: stub)
    x = to_uint8(images(4, 5))
    built = SPACES["dinov2"].build(3)
    assert isinstance(built, torch.nn.Module)
    unit = torch.nn.functional.interpolate(x.float() / 255, size=(224, 224), mode="bicubic", align_corners=False,
                                           antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet's statistics
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(built(x), stub((unit - mean) / std), rtol=0, atol=1e-6)
    moved = features.Extractor(SPACES["dinov2"], device="meta").fn(3)  # what --device cuda does, without a GPU
    assert {t.device.type for t in [*moved.parameters(), *moved.buffers()]} == {"meta"}
    assert stub.proj.weight.device.type == "meta"  # the hub network itself, not only the wrapper's statistics


def test_unknown_metrics_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"--metrics: unknown \['fdd'\]; choose from \['fid'"):
        check_metrics(["fdd"])
