"""The shipped trained digits model: weights load from the installed package, JVP strategies agree on it,
and it generates recognisable digits of (nearly) every class according to the shipped classifier."""
import pytest
import torch

import covkernels as ck
from helpers import gen
from covkernels import jvp as jvp_engine
from covkernels.eval.testbeds import make_scorer
from covkernels.models import get_model
from covkernels.models.digits import digits_classifier


@pytest.fixture(scope="module")
def model():
    return get_model("digits")


def test_weights_ship_with_the_package(model):
    clf = digits_classifier()
    assert model.event_shape == (1, 16, 16) and 0.3 < model.sigma_data < 1.0
    assert clf.reference_features.shape == (1797, 128)
    x = torch.randn(2, 1, 16, 16, generator=gen(0))
    out = model(x, torch.tensor([0.5, 5.0]))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="16"):
        get_model("digits", size=8)


def test_jvp_strategies_agree_on_the_trained_unet(model):
    x = torch.randn(2, 1, 16, 16, generator=gen(1)) * 0.8
    v = torch.randn(2, 1, 16, 16, generator=gen(2))
    s = torch.full((2,), 0.8)
    _, ref = jvp_engine.jvp(model, x, s, v, {}, strategy="forward_ad")
    _, fd = jvp_engine.jvp(model, x, s, v, {}, strategy="central_difference")
    assert float((fd - ref).norm() / ref.norm()) < 1e-2


def test_samples_are_digits_of_every_class(model):
    x = ck.sample(model, (96, 1, 16, 16), "ddim", steps=16, sigma_min=0.1, generator=gen(3), disable=True)
    scorer = make_scorer("digits", model, 96, 0)
    classes = scorer.classifier(x.clamp(-1, 1)).argmax(1)
    assert len(set(classes.tolist())) >= 9
    good = scorer(x)
    noise = scorer(torch.rand(96, 1, 16, 16, generator=gen(4)) * 2 - 1)
    assert good["precision"] > 0.5 and noise["precision"] < 0.05
    assert good["fd_features"] < 0.2 * noise["fd_features"]
