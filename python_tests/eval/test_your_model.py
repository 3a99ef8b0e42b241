"""Your model on the command line (issue 24): the factory contract of ``--model package.module:factory``, the
reference loader of ``--reference``, and ``covkernels eval`` on a factory model end to end (report naming the
model and the reference, resume)."""
import json
import sys

import numpy as np
import pytest
import torch

from helpers import ROOT

from covkernels import Guidance
from covkernels.cli import main
from covkernels.eval import evaluate
from covkernels.eval.features import to_uint8
from covkernels.eval.reference import load_reference
from covkernels.eval.user_model import UserModel, load_factory
from covkernels.imageio import write_png
from covkernels.models import get_model

MODULE = '''
import torch
from covkernels.eval.user_model import UserModel
from covkernels.models import get_model

def gmm():
    return get_model("gmm", size=8)

def full():
    return UserModel(get_model("gmm", size=8), (3, 8, 8), name="mine")

net = get_model("gmm", size=8)

def boom():
    raise RuntimeError("checkpoint missing")

def number():
    return 42

def no_shape():
    return lambda x, sigma: x

not_callable = 3
'''


@pytest.fixture
def module(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading it puts tmp_path on the import path: undone after
    path = tmp_path / "user_models.py"
    path.write_text(MODULE)
    return str(path)


def test_a_factory_path_gives_a_user_model(module, tmp_path, monkeypatch):
    user = load_factory(f"{module}:gmm")
    assert user.event_shape == (3, 8, 8) and user.data_range == (-1.0, 1.0) and user.name == "user_models.gmm"
    assert load_factory(f"{module}:full").name == "mine"
    assert load_factory(f"{module}:net").event_shape == (3, 8, 8)  # the attribute may be the model itself
    monkeypatch.setattr(sys, "path", list(sys.path))  # the folder the import adds is dropped after the test
    monkeypatch.chdir(tmp_path)  # package.module:factory imports with the current directory on the path
    (tmp_path / "my_model_for_test.py").write_text(MODULE)
    assert load_factory("my_model_for_test:gmm").event_shape == (3, 8, 8)


@pytest.fixture
def local_modules(monkeypatch):
    """The user's own modules of a test: the import path and these module names are restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = ["covk_test_helper_net", "covk_test_lazy_helper", "covk_test_factory", "covk_test_sibling"]
    yield
    for name in names:
        sys.modules.pop(name, None)


def test_a_factory_and_its_denoiser_import_their_own_modules(tmp_path, monkeypatch, local_modules):
    (tmp_path / "covk_test_helper_net.py").write_text(
        "from covkernels.models import get_model\n\ndef make():\n    return get_model('gmm', size=8)\n")
    (tmp_path / "covk_test_lazy_helper.py").write_text("SHIFT = 0.25\n")
    (tmp_path / "covk_test_factory.py").write_text(
        "def factory():\n"
        "    import covk_test_helper_net  # a local import inside the factory\n"
        "    net = covk_test_helper_net.make()\n\n"
        "    def denoiser(x, sigma):\n"
        "        import covk_test_lazy_helper  # lazily, at the first call (during sampling)\n"
        "        return net(x, sigma) + covk_test_lazy_helper.SHIFT\n\n"
        "    denoiser.event_shape = (3, 8, 8)\n"
        "    return denoiser\n")
    monkeypatch.chdir(tmp_path)
    user = load_factory("covk_test_factory:factory")
    monkeypatch.chdir(tmp_path.parent)  # the folder stays on the path, not the current directory's name
    x, sigma = torch.zeros(2, 3, 8, 8), torch.ones(2)
    assert torch.allclose(user.denoiser(x, sigma), get_model("gmm", size=8)(x, sigma) + 0.25)


def test_a_factory_file_imports_its_siblings(tmp_path, monkeypatch, local_modules):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "covk_test_sibling.py").write_text("from covkernels.models import get_model\n")
    (tmp_path / "models" / "filemod.py").write_text(
        "import covk_test_sibling  # a sibling of this file, imported at module level\n\n"
        "def factory():\n    return covk_test_sibling.get_model('gmm', size=8)\n")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    assert load_factory("../models/filemod.py:factory").event_shape == (3, 8, 8)


@pytest.mark.parametrize("attr,error,match", [
    ("boom", ValueError, "the factory raised RuntimeError: checkpoint missing"),
    ("number", TypeError, "returned a int; it must return a UserModel"),
    ("no_shape", TypeError, "has no event_shape"),
    ("missing", ValueError, "has no attribute 'missing'"),
    ("not_callable", TypeError, "neither a factory nor"),
])
def test_factory_failures_name_model(module, attr, error, match):
    with pytest.raises(error, match=match) as exc:
        load_factory(f"{module}:{attr}")
    assert "--model" in str(exc.value)


@pytest.mark.parametrize("spec,match", [
    ("no_such_module_for_covkernels:make", "importing 'no_such_module_for_covkernels' failed"),
    ("missing_file.py:make", "no file"),
    ("pkg:", "package.module:factory"),
    (":make", "package.module:factory"),
])
def test_bad_paths_name_model(spec, match):
    with pytest.raises(ValueError, match=match) as exc:
        load_factory(spec)
    assert "--model" in str(exc.value)


@pytest.mark.parametrize("bad,match", [({"jvp": "forward"}, "jvp must be"), ({"nfes": [1]}, "nfes must be"),
                                       ({"batch_size": 0}, "batch_size must be"),
                                       ({"tune_num_samples": 8, "tables": ["default"]}, "best table only")])
def test_cheap_arguments_are_checked_before_the_factory_runs(module, tmp_path, bad, match):
    from covkernels.eval.config import EvalConfig

    # the factory raises and the reference does not exist: neither is reached
    with pytest.raises(ValueError, match=match):
        EvalConfig(model=f"{module}:boom", reference=str(tmp_path / "no_reference"), **bad)


def test_user_model_checks_its_fields():
    model = get_model("gmm", size=8)
    with pytest.raises(ValueError, match="event_shape"):
        UserModel(model, (3, 0, 8))
    with pytest.raises(ValueError, match="data_range"):
        UserModel(model, (3, 8, 8), data_range=(1, -1))
    with pytest.raises(TypeError, match="extra_args"):
        UserModel(model, (3, 8, 8), extra_args=3)
    labelled = UserModel(model, (3, 8, 8), extra_args=lambda idx: {"label": idx % 3})
    assert labelled.batch_args(4, 7)["label"].tolist() == [1, 2, 0]  # sample i's label, whatever the batch


class Movable:
    """A denoiser that is not an nn.Module but has ``.to`` (as some wrappers do); ``copy``: ``.to`` returns a
    moved copy rather than moving in place."""

    def __init__(self, weight, copy=False):
        self.weight, self.copy = weight, copy

    def __call__(self, x, sigma):
        return x * self.weight

    def to(self, *args, **kwargs):
        if self.copy:
            return Movable(self.weight.to(*args, **kwargs), copy=True)
        self.weight = self.weight.to(*args, **kwargs)
        return self


def test_a_denoiser_with_its_own_to_moves_with_the_sampling_model():
    from covkernels.eval.sources import SamplingModel

    x = torch.ones(2, 3, 8, 8, dtype=torch.float64)
    in_place = Movable(torch.tensor(0.5))
    model = SamplingModel(UserModel(in_place, (3, 8, 8)))
    assert model.to(torch.float64) is model and in_place.weight.dtype == torch.float64
    assert model(x, torch.ones(2)).dtype == torch.float64
    copied = Movable(torch.tensor(0.5), copy=True)
    guidance = Guidance(2.0, uncond_model=lambda x, sigma: torch.zeros_like(x))
    guided = SamplingModel(UserModel(copied, (3, 8, 8), guidance=guidance)).to(torch.float64)
    assert copied.weight.dtype == torch.float32 and guided.user.denoiser.weight.dtype == torch.float64
    out = guided(x, torch.ones(2))  # 0 + 2 (0.5 x - 0), through the moved copy
    assert out.dtype == torch.float64 and torch.equal(out, x)
    plain = SamplingModel(UserModel(lambda x, sigma: 0.5 * x, (3, 8, 8))).to(torch.float64)  # called as it is
    assert torch.equal(plain(x, torch.ones(2)), 0.5 * x)


def test_the_cli_names_model_for_a_bad_factory(module, tmp_path, capsys):
    for argv in (["eval", "--model", f"{module}:boom", "--reference", str(tmp_path)],
                 ["sample", "--model", f"{module}:number", "--out-dir", str(tmp_path / "s")],
                 ["bench", "--model", f"{module}:boom"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--model" in err and "Traceback" not in err, argv
    with pytest.raises(SystemExit):
        main(["eval", "--model", f"{module}:gmm"])
    assert "--reference PATH is needed" in capsys.readouterr().err


def test_a_metric_registered_by_the_factory_module_is_a_cli_choice(tmp_path, capsys, local_modules):
    (tmp_path / "with_metric.py").write_text(
        "from covkernels.eval.reference_scorer import METRICS, register_metric\n"
        "from covkernels.models import get_model\n\n"
        "register_metric('fd_pooled_mine', METRICS['fd_pooled'])  # at import, before --metrics is checked\n\n"
        "def gmm():\n    return get_model('gmm', size=8)\n")
    np.save(tmp_path / "ref.npy", pixels(n=16).numpy())
    common = ["sample", "--model", f"{tmp_path / 'with_metric.py'}:gmm", "--reference", str(tmp_path / "ref.npy"),
              "--num", "4", "--num-eval", "8", "--steps", "2", "--out", str(tmp_path / "grid.png"), "--quiet"]
    from covkernels.eval.reference_scorer import METRICS

    try:
        assert main([*common, "--metrics", "fd_pooled_mine"]) == 0
        assert "fd_pooled_mine" in capsys.readouterr().out
        with pytest.raises(SystemExit) as exc:
            main([*common, "--metrics", "fdd"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "--metrics: unknown ['fdd']" in err and "fd_pooled_mine" in err
    finally:
        METRICS.pop("fd_pooled_mine", None)


# ---- the reference loader ---------------------------------------------------------------------------------

def pixels(n=6, c=3, h=8, w=8, seed=0):
    return torch.randint(0, 256, (n, h, w, c), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def write_folder(path, images):
    path.mkdir()
    for i, image in enumerate(images):
        write_png(str(path / f"{i:03d}.png"), image.expand(-1, -1, 3))
    return str(path)


def test_a_folder_of_pngs_is_read_and_mapped_to_the_model_range(tmp_path):
    raw = pixels()
    ref = load_reference(write_folder(tmp_path / "ref", raw), (3, 8, 8))
    assert ref.count == 6 and ref.images.shape == (6, 3, 8, 8)
    expected = raw.permute(0, 3, 1, 2).double() / 127.5 - 1  # [0, 255] -> [-1, 1]
    assert torch.allclose(ref.images.double(), expected, rtol=0, atol=1e-6)  # one pixel level is 7.8e-3
    assert torch.equal(to_uint8(ref.images), raw.permute(0, 3, 1, 2))  # and back, as the PNG export writes
    assert "[0, 255] -> [-1, 1]" in ref.conversion
    grey = load_reference(write_folder(tmp_path / "grey", raw[..., :1]), (1, 8, 8), data_range=(0, 1))
    assert torch.allclose(grey.images.double(), raw[..., :1].permute(0, 3, 1, 2).double() / 255, rtol=0, atol=1e-6)


def test_arrays_npz_and_npy_in_either_layout(tmp_path):
    raw = pixels()
    np.savez(tmp_path / "ref.npz", arr_0=raw.numpy())
    np.save(tmp_path / "ref.npy", raw.permute(0, 3, 1, 2).numpy())  # channels first
    a, b = load_reference(str(tmp_path / "ref.npz"), (3, 8, 8)), load_reference(str(tmp_path / "ref.npy"), (3, 8, 8))
    assert torch.equal(a.images, b.images) and a.digest == b.digest
    floats = raw.permute(0, 3, 1, 2).float() / 127.5 - 1
    np.save(tmp_path / "float.npy", floats.numpy())
    assert torch.equal(load_reference(str(tmp_path / "float.npy"), (3, 8, 8)).images, floats)


@pytest.mark.parametrize("array,shape,match", [
    (pixels().float().numpy() / 255.0 * 2 + 0.5, (3, 8, 8), r"must already be in the model's range \[-1, 1\]"),
    # [0, 1] floats for a [-1, 1] model: inside the range, but never in its lower quarter
    (pixels().float().numpy() / 255.0, (3, 8, 8), r"never in the lower quarter .* -1 \+ 2 x"),
    (pixels().numpy().astype(np.int32) * 2, (3, 8, 8), r"integer pixels must lie in \[0, 255\]"),
    (pixels(c=3).numpy(), (1, 8, 8), "not N images of 1 channel"),
    (pixels().numpy(), (3, 16, 16), "--reference-resize"),
    (pixels(h=8, w=16).numpy(), (3, 8, 8), "--reference-resize"),
])
def test_wrong_shapes_and_ranges_are_refused(tmp_path, array, shape, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=match) as exc:
        load_reference(str(tmp_path / "bad.npy"), shape)
    assert "--reference" in str(exc.value)


def test_float_references_near_the_lower_quarter_are_taken(tmp_path):
    floats = pixels().permute(0, 3, 1, 2).float() / 255.0 * 1.5 - 1.0  # [-1, 0.5]: dark pixels present
    np.save(tmp_path / "ok.npy", floats.numpy())
    assert torch.equal(load_reference(str(tmp_path / "ok.npy"), (3, 8, 8)).images, floats)
    unit = pixels().permute(0, 3, 1, 2).float() / 255.0  # [0, 1] floats for a [0, 1] model: its own range
    np.save(tmp_path / "unit.npy", unit.numpy())
    assert torch.equal(load_reference(str(tmp_path / "unit.npy"), (3, 8, 8), data_range=(0, 1)).images, unit)


def test_16_bit_pngs_are_refused_not_clipped(tmp_path):
    from PIL import Image

    (tmp_path / "deep").mkdir()
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # up to 63000: Pillow's "L" would clip at 255
    Image.fromarray(wide).save(tmp_path / "deep" / "000.png")
    assert Image.open(tmp_path / "deep" / "000.png").mode.startswith("I")
    for channels in (1, 3):
        with pytest.raises(ValueError, match="not 8 bits per channel") as exc:
            load_reference(str(tmp_path / "deep"), (channels, 8, 8))
        assert "--reference" in str(exc.value) and "000.png" in str(exc.value)


def test_resize_keeps_the_aspect_ratio_and_says_so(tmp_path):
    np.save(tmp_path / "big.npy", pixels(h=16, w=16).numpy())
    ref = load_reference(str(tmp_path / "big.npy"), (3, 8, 8), resize="area")
    assert ref.images.shape == (6, 3, 8, 8) and "resized 16 x 16 -> 8 x 8 (area)" in ref.conversion
    np.save(tmp_path / "wide.npy", pixels(h=16, w=32).numpy())
    with pytest.raises(ValueError, match="another aspect ratio"):
        load_reference(str(tmp_path / "wide.npy"), (3, 8, 8), resize="bicubic")


def test_a_reference_smaller_than_n_is_refused_with_the_numbers(tmp_path):
    np.save(tmp_path / "small.npy", pixels(n=5).numpy())
    with pytest.raises(ValueError, match="holds 5 images, fewer than the 8 samples"):
        load_reference(str(tmp_path / "small.npy"), (3, 8, 8), min_count=8)
    np.save(tmp_path / "small16.npy", pixels(n=5, h=16, w=16).numpy())  # the gmm testbed: 3 x 16 x 16
    with pytest.raises(ValueError, match="holds 5 images, fewer than the 8 samples"):
        evaluate("gmm", reference=str(tmp_path / "small16.npy"), num_samples=8, samplers=["ddim"], nfes=[4],
                 seeds=2, tables=["default"], progress=None)


def test_unreadable_references_are_refused(tmp_path):
    np.savez(tmp_path / "two.npz", a=pixels().numpy(), b=pixels().numpy())
    with pytest.raises(ValueError, match="'arr_0' or as its only array"):
        load_reference(str(tmp_path / "two.npz"), (3, 8, 8))
    folder = write_folder(tmp_path / "mixed", pixels(n=2))
    write_png(str(tmp_path / "mixed" / "zz.png"), pixels(n=1, h=4, w=4)[0])
    with pytest.raises(ValueError, match="differ in size"):
        load_reference(folder, (3, 8, 8))
    with pytest.raises(ValueError, match="no such file or folder"):
        load_reference(str(tmp_path / "nothing"), (3, 8, 8))


# ---- eval on a factory model, end to end ------------------------------------------------------------------

def test_eval_on_a_factory_model_names_the_model_and_the_reference(module, tmp_path, monkeypatch):
    monkeypatch.setenv("COVKERNELS_CACHE", str(tmp_path / "cache"))
    exact = get_model("gmm", size=8).sample(48, generator=torch.Generator().manual_seed(9))
    reference = write_folder(tmp_path / "ref", to_uint8(exact).permute(0, 2, 3, 1))
    argv = ["eval", "--model", f"{module}:gmm", "--reference", reference, "--samplers", "ddim", "dpmpp_2m",
            "--nfe", "4", "--num-samples", "16", "--batch-size", "8", "--seeds", "2", "--tables", "default",
            "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 0
    state = json.loads((tmp_path / "out" / "quality_user_models.gmm.json").read_text())
    cfg = state["config"]
    assert cfg["model"] == f"{module}:gmm" and cfg["model_name"] == "user_models.gmm"
    assert cfg["reference"]["path"] == reference and cfg["reference"]["count"] == 48
    assert list(cfg["metrics"]) == ["fd_random", "kid_random", "fd_pooled", "spectrum_error"]
    assert len(state["cells"]) == 2 and all(c["fd_random"] > 0 for c in state["cells"])
    assert len(state["floor"]["fd_random_per_seed"]) == 2  # 48 >= 2 x 16: a floor per seed
    report = (tmp_path / "out" / "quality_user_models.gmm.md").read_text()
    assert "# Sample quality on `user_models.gmm`" in report and f"Model: `{module}:gmm`" in report
    assert f"Reference: `{reference}`, M = 48 images" in report and "[0, 255] -> [-1, 1]" in report
    assert list((tmp_path / "cache").glob("features/*/*.pt"))  # the reference's features, cached on disk
    assert main(argv) == 0  # resumes: the same finished cells, nothing sampled again
    assert json.loads((tmp_path / "out" / "quality_user_models.gmm.json").read_text())["cells"] == state["cells"]
    monkeypatch.chdir(tmp_path)  # the same images through another path: resumed, compared by their content
    assert argv[3:5] == ["--reference", reference] and main([*argv[:4], "ref", *argv[5:]]) == 0
    again = json.loads((tmp_path / "out" / "quality_user_models.gmm.json").read_text())
    assert again["cells"] == state["cells"] and again["config"]["reference"]["path"] == "ref"  # as given now
    assert "Reference: `ref`" in (tmp_path / "out" / "quality_user_models.gmm.md").read_text()


def test_a_testbed_model_scored_against_a_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("COVKERNELS_CACHE", str(tmp_path / "cache"))
    np.save(tmp_path / "ref.npy", to_uint8(get_model("gmm", size=16).sample(40)).numpy())
    state = evaluate("gmm", reference=str(tmp_path / "ref.npy"), metrics=["fd_pooled", "kid_pooled"],
                     samplers=["ddim"], nfes=[4], num_samples=24, seeds=2, tables=["default"], progress=None)
    assert list(state["config"]["metrics"]) == ["fd_pooled", "kid_pooled"] and state["floor"] == {}  # 40 < 48
    with pytest.raises(ValueError, match="--metrics"):
        evaluate("gmm", metrics=["fd_pooled"], samplers=["ddim"], nfes=[4], num_samples=8, progress=None)


def test_the_committed_user_model_grid_loads_and_names_its_model():
    """benchmarks/results/your_model: written through a factory and a reference folder; the report code
    reads it back (its metrics and floor label from the file, not from a registered testbed)."""

    from covkernels.eval.report import main_metric, markdown, metrics_of

    path = ROOT / "benchmarks/results/your_model/quality_patches_unet.json"
    if not path.exists():
        pytest.skip("the committed results live in the source tree, not in an installed package")
    state = json.loads(path.read_text())
    assert main_metric(state) == "fd_random" and list(metrics_of(state)) == list(state["config"]["metrics"])
    text = markdown(state)
    assert "`examples/my_model.py:patches`" in text and "M = 4096 images" in text
    assert "| *N reference images vs the other M - N* |" in text
