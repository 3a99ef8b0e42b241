"""``covkernels sample`` on every testbed: the model names come from the testbed registry, each testbed is
scored with its own scorer (the same numbers as the evaluation's), and a --num-eval it cannot score is refused
before sampling."""
from __future__ import annotations

import re

import pytest
import torch

import covkernels
from covkernels.cli import build_parser, main
from covkernels.eval import testbeds
from covkernels.eval.testbeds import get_testbed


def _help(parser, command: str, option: str) -> str:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if option in a.option_strings).help


def test_sample_model_choices_are_the_testbed_registry(capsys):
    # --model also takes package.module:factory (issue 24), so the built-in names are read from the registry
    # into the help and the error, not into argparse choices
    assert ", ".join(testbeds.testbed_names()) in _help(build_parser(), "sample", "--model")
    assert {"patches", "digits_ideal"} <= set(testbeds.testbed_names())
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--model", "nope", "--quiet"])
    assert exc.value.code == 2 and str(testbeds.testbed_names()) in capsys.readouterr().err


@pytest.mark.parametrize("name", ["patches", "digits_ideal", "gmm"])
def test_sample_scores_with_the_testbeds_own_scorer(name, tmp_path, capsys):
    n = 12
    assert main(["sample", "--model", name, "--sampler", "ddim", "--steps", "2", "--num", "4", "--num-eval",
                 str(n), "--quiet", "--out", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    testbed = get_testbed(name)
    main_metric = testbed.main_metric
    assert testbed.metrics[main_metric][0] in out
    printed = {m: float(v) for m, v in re.findall(r"(\w+) (-?[0-9.]+(?:e[+-]?\d+)?) \(floor", out)}
    printed[main_metric] = float(re.search(rf"{main_metric} (-?[0-9.]+(?:e[+-]?\d+)?) \(floor, ", out).group(1))
    assert set(printed) == set(testbed.metrics)
    # the same samples (same seed, default schedule) scored by the testbed's scorer, as the evaluation does
    model = testbed.load()
    x = covkernels.sample(model, (n, *model.event_shape), "ddim", steps=2,
                          generator=torch.Generator().manual_seed(0), disable=True)
    expected = testbed.make_scorer(model, n, 0)(x)
    for metric, value in printed.items():
        assert value == pytest.approx(expected[metric], rel=2e-3, abs=1e-9), metric


def test_sample_refuses_a_num_eval_the_testbed_cannot_score(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--model", "patches", "--sampler", "ddim", "--steps", "2", "--num", "2", "--num-eval",
              "3000", "--quiet", "--out", str(tmp_path / "g.png")])
    assert exc.value.code == 2
    assert "--num-eval 3000 does not fit --model patches" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()  # refused before sampling
