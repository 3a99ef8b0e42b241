"""The results file of one grid, ``<out_dir>/quality_<model>.json``: written atomically after every finished
cell and tuning run, and resumed from when the configuration is the same.

The on-disk format (the JSON contract the reports, ``benchmarks/quality_summary.py`` and the committed grids
under ``benchmarks/results`` rely on)::

    {"config": {model, num_samples, seeds, jvp, schedule, sigma_min, sigma_max, rho, tables,
                tuning: {seed, schedules, sigma_mins, metric[, num_samples]}, options, device, covkernels, torch
                [, model_name, reference: {path, count, sha256, conversion, floor}, metrics: {metric: [title,
                lower_is_better]}, data_range]},   (the bracketed keys: a model scored against --reference)
     "floor": {metric: mean, metric_ci95: [lo, hi], metric_per_seed: [...]} or null,
     "tuning": [{sampler, nfe_budget, schedule, sigma_min, steps, nfe, <tuning metric>}, ...],
     "cells": [{table, sampler, nfe_budget, schedule, sigma_min, steps, nfe, nfe_measured, seconds_per_sample,
                seeds, <metric>, <metric>_ci95, <metric>_per_seed, ..., vs_baseline}, ...]}
"""
from __future__ import annotations

import json
import math
import os

import torch


def config_record(config) -> dict:
    """The ``config`` block of the results file of an :class:`~covkernels.eval.config.EvalConfig`, as JSON
    reads it back (tuples as lists), so that it compares equal to the block of a file it wrote."""
    from .._version import __version__
    from ..samplers import COV_SIGMA_MAX

    tune_num = config.tuning_num_samples
    opts = {"cov_sigma_max": COV_SIGMA_MAX, **(config.options or {})}
    record = {"model": config.model, "num_samples": config.num_samples, "seeds": config.seed_list, "jvp": config.jvp,
              **config.default_schedule, "tables": list(config.tables),
              "tuning": {"seed": config.tuning_seed, "schedules": list(config.tune_schedules),
                         "sigma_mins": list(config.tune_sigma_mins), "metric": config.tuning_metric,
                         # only where it differs: files written before the option still resume
                         **({"num_samples": tune_num} if tune_num != config.num_samples else {})},
              # inf as a string: strict JSON has no Infinity
              "options": {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in opts.items()},
              "device": torch.device(config.device).type, "covkernels": __version__, "torch": torch.__version__,
              # a model with a reference: its name, the reference and the metrics (absent for a testbed, so
              # the committed testbed grids keep their format and resume)
              **config.source_record}
    return json.loads(json.dumps(record))


def write_atomically(path: str, state: dict) -> None:
    """Write ``state`` as JSON; an interrupt never leaves a half-written results file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)


def results_path(out_dir: str, model: str) -> str:
    """``<out_dir>/quality_<model>.json`` (``model``: a testbed's or a factory's name, made file-safe)."""
    from .sources import file_stem

    return os.path.join(out_dir, f"quality_{file_stem(model)}.json")


def load_matching(path: str, record: dict) -> dict:
    """The state in ``path``, its configuration ``record`` (a reference's path as given this time); raises
    ValueError naming the differing keys where its configuration is not ``record``."""
    with open(path) as f:
        old = json.load(f)
    mine, theirs = comparable(record), comparable(old.get("config", {}))
    if theirs != mine:
        keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"out_dir: {path} holds results of another configuration (differs in {keys}); "
                         f"choose another output directory or start over with resume=False (--no-resume)")
    return {**old, "config": record}


def comparable(config: dict) -> dict:
    """``config`` as a resume compares it: a reference by what it holds (count, sha256 of the converted
    images, conversion), not by the path it was given as, so the same images through another relative
    path, or after a move, resume."""
    reference = config.get("reference")
    if not isinstance(reference, dict):
        return config
    return {**config, "reference": {k: v for k, v in reference.items() if k != "path"}}


class ResultStore:
    """The state of a running grid with its finished cells and tuning runs looked up by key, saved (when
    ``out_dir`` is set) after every change. ``state`` is what :func:`covkernels.eval.evaluate` returns."""

    def __init__(self, config, say=None):
        record = config_record(config)
        self.out_dir = config.out_dir
        self.path = None if config.out_dir is None else results_path(config.out_dir, config.name)
        self.state = {"config": record, "floor": None, "tuning": [], "cells": []}
        if self.path and config.resume and os.path.exists(self.path):
            self.state = load_matching(self.path, record)
            if say:
                say(f"resuming {self.path}: {len(self.state['cells'])} finished cells and "
                    f"{len(self.state['tuning'])} tuning runs kept")
        self.cells = {(c["table"], c["sampler"], c["nfe_budget"]): c for c in self.state["cells"]}
        self.tuned = {tuning_key(t): t for t in self.state["tuning"]}

    def save(self) -> None:
        if self.path:
            os.makedirs(self.out_dir, exist_ok=True)
            write_atomically(self.path, self.state)

    def add_cell(self, cell: dict) -> None:
        """Keep a finished cell (the caller annotates the paired comparisons, then saves)."""
        self.state["cells"].append(cell)
        self.cells[cell["table"], cell["sampler"], cell["nfe_budget"]] = cell

    def add_tuning(self, run: dict) -> None:
        """Keep a finished tuning run and save: an interrupted tuning keeps its finished runs."""
        self.tuned[tuning_key(run)] = run
        self.state["tuning"].append(run)
        self.save()


def tuning_key(run: dict) -> tuple:
    return run["sampler"], run["nfe_budget"], run["schedule"], run["sigma_min"]
