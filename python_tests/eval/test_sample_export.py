"""``covkernels sample --out-dir``: numbered PNGs (or one npz) that are the same bytes whether one process or two
``torchrun`` shards write them, resumable, and refused where the folder holds another configuration."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import covkernels
from covkernels.cli import main
from covkernels.eval.export import MANIFEST, batches, export_samples, npz_count, png_complete

# A class-conditional user model: the label of sample i is i % 3 (UserModel.extra_args as a function of the
# sample indices), so a shard that conditioned its batch from index 0 would write other images.
MODULE = '''
import torch
from covkernels.eval.user_model import UserModel
from covkernels.models import get_model

def conditional():
    base = get_model("gmm", size=8)

    def denoiser(x, sigma, label):
        return base(x, sigma) + 0.2 * (label.to(x.dtype) - 1).view(-1, 1, 1, 1)

    return UserModel(denoiser, (3, 8, 8), extra_args=lambda idx: {"label": idx % 3}, name="conditional")
'''
# the package under test, for the subprocesses (an installed package, or this source tree)
PACKAGE_ROOT = str(Path(covkernels.__file__).resolve().parents[1])


def run(args, cwd, nproc=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": PACKAGE_ROOT}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "covkernels", "sample", *args, "--quiet"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png"))}


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading it puts tmp_path on the import path: undone after
    (tmp_path / "user_model.py").write_text(MODULE)
    return "user_model.py:conditional"


def test_two_gloo_shards_write_the_bytes_of_one_process(tmp_path, model):
    # 10 samples in batches of 4: rank 0 takes [0, 4) and [8, 10), rank 1 [4, 8); ddpm draws fresh noise every
    # step. -n: torchrun's own parser would take --num for its --numa-binding
    common = ["--model", model, "--sampler", "ddpm", "--steps", "4", "-n", "10", "--batch-size", "4"]
    run([*common, "--out-dir", "one"], tmp_path)
    sharded = run([*common, "--out-dir", "two"], tmp_path, nproc=2).stdout
    assert "rank 0/2: ddpm on conditional: wrote 6 samples" in sharded  # batches [0, 4) and [8, 10)
    assert "rank 1/2: ddpm on conditional: wrote 4 samples" in sharded  # batch [4, 8)
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert sorted(one) == [f"{i:06d}.png" for i in range(10)]
    assert one == two
    assert len(set(one.values())) == 10  # ten different images, not one repeated
    run([*common, "--out-dir", "npz", "--format", "npz"], tmp_path, nproc=2)
    arr = np.load(tmp_path / "npz" / "samples.npz")["arr_0"]
    assert arr.shape == (10, 8, 8, 3) and arr.dtype == np.uint8
    assert not (tmp_path / "npz" / "parts").exists()  # assembled, the parts removed
    from PIL import Image

    for i in (0, 5, 9):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / f"{i:06d}.png")), arr[i])


def test_export_resumes_and_refuses_another_configuration(tmp_path, model, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["sample", "--model", model, "--steps", "3", "--batch-size", "4", "--out-dir", "out", "--quiet"]
    assert main([*common, "--num", "6"]) == 0
    first = files(tmp_path / "out")
    os.remove(tmp_path / "out" / "000002.png")
    with open(tmp_path / "out" / "000004.png", "r+b") as f:  # a file cut short: not complete
        f.truncate(40)
    assert not png_complete(str(tmp_path / "out" / "000004.png"))
    capsys.readouterr()
    assert main([*common, "--num", "9"]) == 0  # the two damaged and three new ones
    assert "wrote 5 samples, kept 4 already there" in capsys.readouterr().out
    again = files(tmp_path / "out")
    assert len(again) == 9 and all(again[name] == data for name, data in first.items())
    with pytest.raises(SystemExit) as exc:
        main([*common[:-3], "--steps", "4", "--out-dir", "out", "--num", "9"])
    assert exc.value.code == 2 and "another configuration (differs in ['steps'])" in capsys.readouterr().err


def test_batches_are_fixed_and_dealt_round_robin():
    assert batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batches(10, 4, rank=0, world=2) == [(0, 4), (8, 10)] and batches(10, 4, rank=1, world=2) == [(4, 8)]


def batch_dependent_draw(calls):
    """A spy ``draw(start, stop)`` whose samples depend on the batch's size, as float rounding in a real network
    can (a sample drawn in a batch of another shape comes out other bytes); it records every call."""

    def draw(start, stop):
        calls.append((start, stop))
        index = torch.arange(start, stop, dtype=torch.float32).view(-1, 1, 1, 1)
        return ((0.1 * index + 0.01 * (stop - start)).remainder(2) - 1).expand(-1, 3, 4, 4)

    return draw


def export(folder, num, fmt, calls, **kw):
    return export_samples(batch_dependent_draw(calls), num, str(folder), fmt=fmt, batch_size=4,
                          config={"model": "spy"}, **kw)


def contents(folder, fmt):
    if fmt == "png":
        return files(folder)
    return np.load(Path(folder) / "samples.npz")["arr_0"]


@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_a_larger_num_extends_with_the_bytes_of_a_fresh_run(tmp_path, fmt):
    grown, fresh = [], []
    export(tmp_path / "grown", 5, fmt, grown)
    assert grown == [(0, 4), (4, 8)]  # the last batch drawn whole, samples 5..7 dropped
    done = export(tmp_path / "grown", 8, fmt, grown)
    assert grown[2:] == [(4, 8)] and done["written"] == (3 if fmt == "png" else 4)  # npz: [0, 4) from samples.npz
    export(tmp_path / "fresh", 8, fmt, fresh)
    a, b = contents(tmp_path / "grown", fmt), contents(tmp_path / "fresh", fmt)
    assert len(a) == 8 and (a == b if fmt == "png" else np.array_equal(a, b))
    assert not (tmp_path / "grown" / "parts").exists()


def test_a_smaller_num_leaves_a_larger_npz_as_it_is(tmp_path, model, monkeypatch, capsys):
    calls = []
    export(tmp_path / "out", 8, "npz", calls)
    before = (tmp_path / "out" / "samples.npz").read_bytes()
    again = []
    done = export(tmp_path / "out", 5, "npz", again)
    assert again == []  # nothing drawn
    assert done == {"written": 0, "skipped": 5, "path": str(tmp_path / "out" / "samples.npz"), "count": 8}
    assert (tmp_path / "out" / "samples.npz").read_bytes() == before and npz_count(done["path"]) == 8
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["num"] == 8
    monkeypatch.chdir(tmp_path)  # and what the command says
    common = ["sample", "--model", model, "--steps", "2", "--batch-size", "4", "--out-dir", "cli", "--format", "npz",
              "--quiet"]
    assert main([*common, "--num", "6"]) == 0
    capsys.readouterr()
    assert main([*common, "--num", "3"]) == 0
    assert "already holds 6 samples, at least --num 3: nothing written" in capsys.readouterr().out
    assert np.load(tmp_path / "cli" / "samples.npz")["arr_0"].shape[0] == 6


def test_parts_left_by_an_interrupted_smaller_num_are_removed(tmp_path):
    def interrupt_after_two(count):
        interrupt_after_two.batches += 1
        if interrupt_after_two.batches == 2:
            raise KeyboardInterrupt

    interrupt_after_two.batches = 0
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path / "out", 5, "npz", [], progress=interrupt_after_two)
    assert sorted(p.name for p in (tmp_path / "out" / "parts").iterdir()) == ["000000000-000000004.npy",
                                                                              "000000004-000000005.npy"]
    calls = []
    export(tmp_path / "out", 8, "npz", calls)  # a part of --num 5 is not one of --num 8's
    assert calls == [(4, 8)] and not (tmp_path / "out" / "parts").exists()
    export(tmp_path / "fresh", 8, "npz", [])
    assert np.array_equal(contents(tmp_path / "out", "npz"), contents(tmp_path / "fresh", "npz"))
