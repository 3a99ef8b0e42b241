"""``ode_cov``'s options as small value objects, each validating itself and stating its cost.

- the covariance of the posterior draw: :class:`Diagonal` (Hutchinson probes in a basis), :class:`Lanczos`
  or :class:`Calibrated` (a stored spectrum, no JVP); the strings ``"identity"`` / ``"dct"`` /
  ``"convdct"`` / ``"lanczos"`` / ``"calibrated"`` mean these at their defaults;
- where the ODE hands over: :class:`End`, :class:`Auto` (the Gaussian-consistency diagnostic) or
  :class:`At` a sigma; spelled ``"end"``, ``"auto"`` or a number;
- the covariance steps: :class:`CovSteps` (an int: that many, at the defaults).

:meth:`OdeCovOptions.resolve` turns the sampler's arguments (objects, or the older flat keywords such as
``probes=2, switch_sigma=1.0``, which remain accepted: the CLI, the evaluation grid's rows and stored grids
use them) into one checked :class:`OdeCovOptions`; an option given where it does not apply raises.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..schedules import karras_sigmas
from ..steps import calibrated_step, check_spectrum, lanczos_step, structured_step
from ..steps.switch import AUTO_TOLERANCE
from ..steps.validation import check_basis, check_basis_name, check_block_and_stride, check_bool, check_c_max, \
    check_channel_average, check_count, check_eta, check_number, check_stride_option
from .registry import REGISTRY, nfe_per_sample

MAX_COUNT = 64  # probes, Lanczos steps, covariance steps
DIAGONAL_BASES = ("identity", "dct", "convdct")
COVARIANCES = DIAGONAL_BASES + ("lanczos", "calibrated")
SWITCH_MODES = ("end", "auto")
# The flat keywords of the options below, each with the one it belongs to (for the "do not apply" check).
SPELLINGS = {"probes": "covariance", "block": "covariance", "stride": "covariance", "channel_average": "covariance",
             "lanczos_steps": "covariance", "spectrum": "covariance", "cov_sigma_min": "cov_steps",
             "eta": "cov_steps", "switch_sigma": "switch", "auto_tolerance": "switch"}


@dataclass(frozen=True)
class Diagonal:
    """The diagonal of J in ``basis`` (identity / dct / convdct) from ``probes`` Hutchinson JVPs per step.
    ``block`` (convdct only; None: 8) is the ConvDCT tile; ``stride`` (convdct only, dividing the block;
    None: the non-overlapping tiles) a smaller stride takes the overlapping frame; ``channel_average``: one
    coefficient per position for all channels (images only). Cost: ``1 + probes`` per step."""

    basis: str = "dct"
    probes: int = 1
    block: int | None = None
    stride: int | None = None
    channel_average: bool = True

    def __post_init__(self):
        check_basis_name(self.basis)
        check_count(self.probes, "probes", MAX_COUNT)
        check_bool(self.channel_average, "channel_average")
        if self.basis != "convdct" and (self.block, self.stride) != (None, None):
            raise ValueError(f"block and stride apply to basis='convdct' only, got basis={self.basis!r} with "
                             f"block={self.block!r}, stride={self.stride!r}")
        check_block_and_stride(self.tile, self.stride)

    @property
    def tile(self) -> int:
        return 8 if self.block is None else self.block

    def nfe_per_step(self) -> int:
        return 1 + self.probes

    def check_fits(self, x) -> None:
        check_basis(self.basis, self.tile, x)
        check_stride_option(self.stride, self.basis, self.tile, x)
        check_channel_average(self.channel_average, x)

    def step(self, ctx, x, i, sigma_t, sigma_s, *, eta, c_max):
        return structured_step(ctx, x, i, sigma_t, sigma_s, eta=eta, basis=self.basis, block=self.tile,
                               channel_average=self.channel_average, c_max=c_max, probes=self.probes,
                               stride=self.stride)


@dataclass(frozen=True)
class Lanczos:
    """The full covariance through ``lanczos_steps`` Lanczos iterations of JVPs (reorthogonalised).
    Cost: ``1 + lanczos_steps`` per step."""

    lanczos_steps: int = 3

    def __post_init__(self):
        check_count(self.lanczos_steps, "lanczos_steps", MAX_COUNT)

    def nfe_per_step(self) -> int:
        return 1 + self.lanczos_steps

    def check_fits(self, x) -> None:
        pass  # any (B, ...) tensor

    def step(self, ctx, x, i, sigma_t, sigma_s, *, eta, c_max):
        return lanczos_step(ctx, x, i, sigma_t, sigma_s, eta=eta, lanczos_steps=self.lanczos_steps,
                            reorthogonalize=True, c_max=c_max)


@dataclass(frozen=True)
class Calibrated:
    """The diagonal of a :class:`~covkernels.PosteriorSpectrum` calibrated once per model
    (:func:`~covkernels.calibrate_spectrum`): no JVP, cost 1 per step. The spectrum is checked against the
    samples when sampling (an NFE count needs none)."""

    spectrum: object = None

    def nfe_per_step(self) -> int:
        return 1

    def check_fits(self, x) -> None:
        check_spectrum(self.spectrum, x)

    def step(self, ctx, x, i, sigma_t, sigma_s, *, eta, c_max):
        return calibrated_step(ctx, x, i, sigma_t, sigma_s, eta=eta, spectrum=self.spectrum, c_max=c_max)


@dataclass(frozen=True)
class End:
    """The ODE runs the whole schedule; the draw replaces its last step (the schedule's smallest sigma is the
    switch: tune it like sigma_min)."""

    def ode_part(self, positive: list[float]) -> list[float]:
        return positive

    @property
    def spelling(self):
        """The short spelling of this switch (what a message shows)."""
        return "end"


@dataclass(frozen=True)
class Auto(End):
    """As :class:`End`, then per sample the draw is taken from the earliest trajectory point whose Gaussian
    prediction misses by at most ``tolerance`` (:mod:`covkernels.steps.switch`). Same cost as End."""

    tolerance: float = AUTO_TOLERANCE

    def __post_init__(self):
        object.__setattr__(self, "tolerance", check_number(self.tolerance, "auto_tolerance", 0.0))

    @property
    def spelling(self):
        return "auto"


@dataclass(frozen=True)
class At:
    """The ODE runs down to the schedule's first sigma ``<= sigma`` (none if the schedule starts below)."""

    sigma: float

    def __post_init__(self):
        object.__setattr__(self, "sigma", check_number(self.sigma, "switch_sigma", 0.0, low_open=True))

    def ode_part(self, positive: list[float]) -> list[float]:
        j = next((k for k, s in enumerate(positive) if s <= self.sigma), len(positive) - 1)
        return positive[:j + 1]

    @property
    def spelling(self):
        return self.sigma


@dataclass(frozen=True)
class CovSteps:
    """``count`` covariance steps from the switch to 0 (Karras spacing down to ``sigma_min``, then 0); ``eta``
    is their ancestral noise. ``sigma_min`` (default 0.1) and ``eta`` (default 0) shape the intermediate
    steps, so they apply to ``count > 1`` only."""

    count: int = 1
    sigma_min: float | None = None
    eta: float | None = None

    def __post_init__(self):
        check_count(self.count, "cov_steps", MAX_COUNT)
        if self.count == 1 and (self.sigma_min, self.eta) != (None, None):
            raise ValueError(f"cov_sigma_min and eta shape the intermediate covariance steps: they apply to "
                             f"cov_steps > 1, got count=1 with sigma_min={self.sigma_min!r}, eta={self.eta!r}")
        object.__setattr__(self, "sigma_min", check_number(0.1 if self.sigma_min is None else self.sigma_min,
                                                           "cov_sigma_min", 0.0, low_open=True))
        object.__setattr__(self, "eta", check_eta(0.0 if self.eta is None else self.eta))


def as_switch(value, name: str = "switch"):
    """:class:`End` / :class:`Auto` / :class:`At` for ``"end"`` (or None), ``"auto"``, a number or one of them."""
    if isinstance(value, (End, At)):
        return value
    if value is None or (isinstance(value, str) and value in SWITCH_MODES):
        return Auto() if value == "auto" else End()
    if isinstance(value, str):
        raise ValueError(f"{name} must be 'end', 'auto', Auto(tolerance) or a sigma > 0, got {value!r}")
    return At(check_number(value, name, 0.0, low_open=True))


def split_schedule(sigmas: list[float], switch, cov_steps: int, cov_sigma_min: float) -> tuple[list, list]:
    """``(ode_sigmas, cov_sigmas)``: the schedule's positive entries the ODE runs through (``switch``, see
    :func:`as_switch`: down to the first entry ``<= sigma``, none past the first if ``sigmas[0]`` is already
    below; every one for ``"end"`` / ``"auto"`` / None), then ``cov_steps`` steps from there to 0 (Karras
    spacing down to ``cov_sigma_min``, then 0; one step is the jump straight to 0). Entries of ``sigmas``
    below the switch point are not used."""
    ode = as_switch(switch).ode_part([s for s in sigmas if s > 0])
    start = ode[-1]
    if cov_steps == 1:
        return ode, [start, 0.0]
    return ode, [start] + [float(s) for s in karras_sigmas(cov_steps, min(cov_sigma_min, start / 2), start)[1:]]


def _covariance_name(covariance) -> str:
    if isinstance(covariance, Diagonal):
        return covariance.basis
    if isinstance(covariance, (Lanczos, Calibrated)):
        return type(covariance).__name__.lower()
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES} or a Diagonal / Lanczos / Calibrated, "
                         f"got {covariance!r}")
    return covariance


def _spelled_covariance(name: str, given: dict):
    """The covariance object of a string and its flat keywords."""
    if name in DIAGONAL_BASES:
        return Diagonal(name, probes=given.get("probes", 1), block=given.get("block"), stride=given.get("stride"),
                        channel_average=given.get("channel_average", True))
    if name == "lanczos":
        return Lanczos(given.get("lanczos_steps", 3))
    return Calibrated(given.get("spectrum"))


def _applies(option: str, name: str, auto: bool) -> bool:
    """Whether a flat covariance keyword applies to covariance ``name`` (a string) under the switch."""
    if option in ("probes", "channel_average"):
        return name in DIAGONAL_BASES
    if option == "block":
        return name == "convdct"
    if option == "stride":
        return name == "convdct" and not auto
    return option == {"lanczos": "lanczos_steps", "calibrated": "spectrum"}.get(name)


def _check_ode(ode, ode_options) -> None:
    if ode not in REGISTRY or REGISTRY[ode].needs_jvp:
        raise ValueError(f"ode must be a mean-only sampler of the registry, one of "
                         f"{[n for n, s in REGISTRY.items() if not s.needs_jvp]}, got {ode!r}")
    if ode_options is not None and not isinstance(ode_options, dict):
        raise TypeError(f"ode_options must be a dict or None, got {type(ode_options).__name__}")


@dataclass(frozen=True)
class OdeCovOptions:
    """The checked options of one ``ode_cov`` run (see :meth:`resolve`)."""

    ode: str
    ode_options: dict
    covariance: Diagonal | Lanczos | Calibrated
    switch: End | At
    steps: CovSteps
    c_max: float | None = 1.0

    @property
    def auto(self) -> bool:
        return isinstance(self.switch, Auto)

    def split(self, sigmas: list[float]) -> tuple[list[float], list[float]]:
        return split_schedule(sigmas, self.switch, self.steps.count, self.steps.sigma_min)

    def nfe(self, sigmas) -> int:
        """Model evaluations per sample on ``sigmas`` (a list ending in 0, or an int number of steps: then at
        most all but one of them are ODE steps)."""
        ode = [math.inf] * sigmas if isinstance(sigmas, int) else self.split(sigmas)[0]
        ode_cost = nfe_per_sample(self.ode, ode, **self.ode_options) if len(ode) > 1 else 0
        return ode_cost + self.covariance.nfe_per_step() * self.steps.count

    @classmethod
    def resolve(cls, *, ode, ode_options, covariance, switch, cov_steps, c_max, **spelled) -> "OdeCovOptions":
        """Check the sampler's arguments and make their objects: ``covariance``, ``switch`` and ``cov_steps``
        as objects or their short spellings, with the flat keywords of :data:`SPELLINGS` (None: not given)."""
        unknown = sorted(set(spelled) - set(SPELLINGS))
        if unknown:
            raise TypeError(f"sample_ode_cov() got an unexpected keyword argument {unknown[0]!r}")
        given = {k: v for k, v in spelled.items() if v is not None}
        _check_ode(ode, ode_options)
        name = _covariance_name(covariance)
        count = cov_steps.count if isinstance(cov_steps, CovSteps) else check_count(cov_steps, "cov_steps", MAX_COUNT)
        switch, tolerance_read = _resolve_switch(switch, given, name, count, covariance, ode, ode_options)
        _refuse_inapplicable(given, covariance, name, cov_steps, count, switch, tolerance_read)
        cov = _spelled_covariance(name, given) if isinstance(covariance, str) else covariance
        steps = cov_steps if isinstance(cov_steps, CovSteps) else \
            CovSteps(count, sigma_min=given.get("cov_sigma_min"), eta=given.get("eta"))
        return cls(ode, dict(ode_options or {}), cov, switch, steps, check_c_max(c_max, allow_none=True))


def _deterministic(ode: str, ode_options) -> bool:
    """No fresh noise in the ODE part (the automatic switch predicts the probability-flow trajectory)."""
    return not REGISTRY[ode].stochastic and not (ode_options or {}).get("s_churn")


def _one_diagonal_draw(covariance, name: str, count: int, given: dict) -> bool:
    stride = covariance.stride if isinstance(covariance, Diagonal) else given.get("stride")
    return name in DIAGONAL_BASES and count == 1 and stride is None


def _resolve_switch(switch, given: dict, name: str, count: int, covariance, ode: str, ode_options):
    """``(switch object, whether it read auto_tolerance)``; None: the automatic switch where it applies (one
    diagonal draw without stride, a deterministic ODE part), else the end. A flat ``auto_tolerance`` is read
    with the spelled ``"auto"`` only (an :class:`Auto` object carries its own)."""
    deterministic = _deterministic(ode, ode_options)
    spelled = given.get("switch_sigma")
    if switch is not None and spelled is not None:
        raise ValueError(f"give switch or its older spelling switch_sigma, not both (got switch={switch!r}, "
                         f"switch_sigma={spelled!r})")
    label = "switch" if spelled is None else "switch_sigma"
    value = switch if spelled is None else spelled
    if value is None:
        value = "auto" if _one_diagonal_draw(covariance, name, count, given) and deterministic else "end"
    tolerance_read = isinstance(value, str) and value == "auto" and "auto_tolerance" in given
    out = Auto(given["auto_tolerance"]) if tolerance_read else as_switch(value, label)
    if isinstance(out, Auto) and not deterministic:
        raise ValueError(f"{label}='auto' needs a deterministic ODE part (no stochastic sampler, no s_churn), "
                         f"got ode={ode!r} with ode_options={ode_options!r}")
    if isinstance(out, Auto) and not (name in DIAGONAL_BASES and count == 1):
        raise ValueError(f"{label}='auto' needs a diagonal covariance (identity/dct/convdct) and cov_steps=1, "
                         f"got covariance={covariance!r}, cov_steps={count}")
    return out, tolerance_read


def _refuse_inapplicable(given: dict, covariance, name: str, cov_steps, count: int, switch,
                         tolerance_read: bool) -> None:
    """ValueError listing the flat keywords that do not apply with these choices (e.g. ``lanczos_steps``
    with a diagonal, ``eta`` with one covariance step, ``auto_tolerance`` without the automatic switch)."""
    auto = isinstance(switch, Auto)
    wrong = []
    for option in given:
        owner = SPELLINGS[option]
        if owner == "covariance":
            ok = isinstance(covariance, str) and _applies(option, name, auto)
        elif owner == "cov_steps":
            ok = not isinstance(cov_steps, CovSteps) and count > 1
        else:
            ok = option == "switch_sigma" or tolerance_read
        wrong += [] if ok else [option]
    if auto and isinstance(covariance, Diagonal) and covariance.stride is not None:
        wrong.append("stride")
    if wrong:
        label = "switch_sigma" if "switch_sigma" in given else "switch"
        raise ValueError(f"ode_cov: option(s) {wrong} do not apply with covariance={covariance!r}, "
                         f"cov_steps={count}, {label}={switch.spelling!r}")
