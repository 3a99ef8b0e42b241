"""Quality evaluation: a grid of samplers x NFE budgets on one testbed, S seeds of N samples per cell.

``evaluate(model="gmm", ...)`` (and ``covkernels eval``) runs every cell, writes the results after each
finished cell (``<out>/quality_<model>.json``; an interrupted run resumes where it stopped, losing no finished
cell or tuning run), then the CSV, Markdown tables and PNG plot (see :mod:`covkernels.eval.report`).

- Seeds: every cell runs the seeds ``seed, seed + 1, ..., seed + S - 1`` (each its own N samples, scored by
  its own scorer, so a sampled reference is drawn afresh per seed) and reports per metric the mean, a
  Student-t 95% interval over seeds and the per-seed values. All samplers share the seeds, so each cell
  also carries the paired difference to the best baseline of its NFE column (``vs_baseline``); a cell wins
  only where that paired interval excludes 0 (:mod:`covkernels.eval.intervals`).
- Two tables: ``default`` (every sampler on the common schedule) and ``best`` (every sampler on its best
  schedule of the grid ``schedules x sigma_mins``, the default included, chosen on a held-out seed:
  :mod:`covkernels.eval.tuning`). Budgets and NFE checks as in :mod:`covkernels.eval.plan`.
- Progress: one display over the whole grid, in model evaluations (N x budget per run), with an ETA.

The pieces: :class:`~covkernels.eval.config.EvalConfig` (what to run, checked), :mod:`.plan` (which cells
and schedules), :mod:`.runner` (sampling and scoring), :mod:`.store` (the results file),
:mod:`.distributed` (``torchrun``), :mod:`.report` (tables and plot).
"""
from __future__ import annotations

from ..progress import Progress
from .config import TABLES, EvalConfig
from .distributed import rank_and_world
from .intervals import annotate_paired, half_width, summarize_seeds
from .plan import TUNE_SIGMA_MINS, is_baseline, plan_grid
from .report import MIN_SEEDS, few_seeds_note, write_reports
from .runner import CellRunner, by_metric
from .store import ResultStore
from .tuning import chosen_plan, tune_cell


def evaluate(model: str = "gmm", samplers=None, nfes=None, num_samples: int = 1024, *, seed: int = 0,
             seeds: int = 5, batch_size: int = 256, schedule: str = "karras", sigma_min: float = 0.1,
             sigma_max: float = 80.0, rho: float = 7.0, tables=TABLES, tune_schedules=None,
             tune_sigma_mins=TUNE_SIGMA_MINS, tune_metric: str | None = None, tune_num_samples: int | None = None,
             jvp: str = "finite_difference", device="cpu",
             out_dir: str | None = None, resume: bool = True, options: dict | None = None, progress=print,
             command: str | None = None, reference: str | None = None, reference_resize: str | None = None,
             metrics=None, feature_cache: str | None = None) -> dict:
    """Run the grid; return ``{"config", "floor", "tuning", "cells"}`` (also written to ``out_dir`` on rank 0).

    The keywords are those of :class:`~covkernels.eval.config.EvalConfig` (which checks them) plus
    ``progress``: a callable for messages (None: silent, no progress display). Equivalent to
    ``run_evaluation(EvalConfig(model, ...), progress)``.
    """
    config = EvalConfig(model=model, samplers=samplers, nfes=nfes, num_samples=num_samples, seed=seed, seeds=seeds,
                        batch_size=batch_size, schedule=schedule, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                        tables=tables, tune_schedules=tune_schedules, tune_sigma_mins=tune_sigma_mins,
                        tune_metric=tune_metric, tune_num_samples=tune_num_samples, jvp=jvp, device=device,
                        out_dir=out_dir, resume=resume, options=options, command=command, reference=reference,
                        reference_resize=reference_resize, metrics=metrics, feature_cache=feature_cache)
    return run_evaluation(config, progress)


def run_evaluation(config: EvalConfig, progress=print) -> dict:
    """Run the grid of ``config``; see :func:`evaluate`."""
    if not isinstance(config, EvalConfig):
        raise TypeError(f"config must be an EvalConfig, got {type(config).__name__}")
    return _GridRun(config, progress).run()


def _silent(message: str) -> None:
    pass


class _GridRun:
    """One evaluation in progress: the plan, the progress display, the results store and the cell runner."""

    def __init__(self, config: EvalConfig, progress):
        self.config, self.testbed = config, config.testbed
        self.rank, _ = rank_and_world(config.device)
        self.plan = plan_grid(config)
        self.bar = Progress(self.plan.total_evaluations, desc=f"eval {config.name}", unit="evaluations",
                            disable=progress is None or self.rank != 0)
        self.say = self.bar.write if progress is print else (progress or _silent)  # print: beside the bar
        self.store = ResultStore(config, self.say)
        if config.seeds < MIN_SEEDS:
            self.say(f"warning: {few_seeds_note(config.seeds)}")
        self.runner = CellRunner(config, self.testbed, self.bar.update)

    def run(self) -> dict:
        cfg, state = self.config, self.store.state
        if self.rank == 0 and state["floor"] is None:
            state["floor"] = summarize_seeds(by_metric(self.runner.floors()))
        if self.rank == 0 and "best" in cfg.tables and cfg.tuning_num_samples != cfg.num_samples:
            self.runner.scorer(cfg.tuning_seed, cfg.tuning_num_samples)  # a tuning N it cannot score fails here
        for nfe in cfg.nfes:
            for label in cfg.samplers:
                plans = self.plan.plans(label, nfe)
                if plans is None:
                    continue  # fewer than 2 steps fit the budget on the default schedule: no cell
                if "default" in cfg.tables:
                    self.default_cell(label, nfe, plans[0])
                if "best" in cfg.tables:
                    self.best_cell(label, nfe, plans)
        self.bar.close()
        if self.rank == 0 and self.store.path:
            self.store.save()  # a resume with nothing left to sample still records the reference's path as given now
            self.write_reports()
        return self.store.state

    def skip_cell(self, nfe: int) -> None:
        """A cell that needs no sampling still counts in the progress total."""
        self.bar.update(self.config.num_samples * nfe * self.config.seeds)

    def default_cell(self, label: str, nfe: int, default_plan) -> None:
        if ("default", label, nfe) in self.store.cells:
            return self.skip_cell(nfe)
        schedule, plan = default_plan
        self.sample_cell("default", label, nfe, schedule, plan)

    def best_cell(self, label: str, nfe: int, plans: list) -> None:
        cfg = self.config
        scores = tune_cell(label, nfe, plans, cfg, self.store, self.runner)
        if ("best", label, nfe) in self.store.cells:
            return self.skip_cell(nfe)
        choice = chosen_plan(scores, self.testbed.metrics[cfg.tuning_metric][1], cfg.device)
        if choice == 0 and "default" in cfg.tables:  # the default schedule won: its cell has the same samples
            self.skip_cell(nfe)
            if self.rank == 0:
                self.record({**self.store.cells["default", label, nfe], "table": "best", "vs_baseline": {}})
            return
        schedule, plan = plans[choice]
        self.sample_cell("best", label, nfe, schedule, plan)

    def sample_cell(self, table: str, label: str, nfe: int, schedule: dict, plan) -> None:
        seeds = self.config.seed_list
        head, per_seed = self.runner.run(label, nfe, schedule, plan, seeds)
        if self.rank == 0:
            self.record({"table": table, **head, "seeds": seeds, **summarize_seeds(by_metric(per_seed))})

    def record(self, cell: dict) -> None:
        """Keep a finished cell, redo the paired comparisons of its column, save, and say its main figure."""
        self.store.add_cell(cell)
        annotate_paired(self.store.state, self.testbed.metrics, is_baseline)
        self.store.save()
        main = self.config.tuning_metric
        self.say(f"{cell['table']:>7} {cell['sampler']:<18} {cell['nfe_budget']:>3} NFE [{cell['steps']} steps, "
                 f"{cell['schedule']} {cell['sigma_min']}]: {main} {cell[main]:.4g} ± "
                 f"{half_width(cell[main + '_ci95']):.2g}")

    def write_reports(self) -> None:
        written = write_reports(self.store.state, self.config.out_dir, self.config.command)
        for name in written:
            self.say(f"wrote {name}")
        if not any(name.endswith(".png") for name in written):
            self.say("note: matplotlib is not installed (pip install 'covkernels[plot]'): no PNG plot written")
