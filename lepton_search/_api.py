"""The Python API: what the command line does, as functions and one study object.

    import lepton_search

    study = lepton_search.load("studies/quickstart.toml")
    summary = study.run(n_trials=4)
    for record in study.frontier():
        print(record.number, record.label, record.values["accuracy"], record.speedup)
    study.report("quickstart-report.html")

:func:`load` reads and validates a study file (or takes a parsed :class:`StudySpec`) and resolves
where its study lives; the :class:`Study` it returns runs, reads and exports it. The module-level
:func:`run`, :func:`frontier`, :func:`report` and :func:`export` are the one-call forms, and
:func:`bench` measures two model files with the trials' protocol. Everything heavy (Optuna, Ray,
torch, ONNX Runtime) is imported on first use, so ``import lepton_search`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import optuna

    from lepton_search.objectives import BenchResult
    from lepton_search.search import Locations, RunSummary, StudySpec
    from lepton_search.search._record import TrialRecord


class Study:
    """A lepton-search study: its validated study file and where it is stored.

    Create it with :func:`load`. Running it again continues where the last run stopped; reading
    it (:meth:`frontier`, :meth:`report`, :meth:`export`) needs a study that has run.
    """

    def __init__(self, spec: StudySpec, locations: Locations) -> None:
        self.spec = spec
        self.locations = locations

    @property
    def name(self) -> str:
        return self.spec.study.name

    def __repr__(self) -> str:
        # The storage URL may hold a password: only the name and the artifact directory are shown.
        return f"Study({self.name!r}, artifacts={str(self.locations.artifact_dir)!r})"

    def run(
        self,
        *,
        n_trials: int | None = None,
        workers: int | None = None,
        ray_address: str | None = None,
        on_event: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> RunSummary:
        """Runs the study until its budget (``n_trials`` overrides ``[budget].n_trials``) on
        ``workers`` Ray workers, or on the cluster at ``ray_address``. ``on_event(kind, info)``
        receives the driver's progress events. Completed trials are kept if the run is
        interrupted (:class:`~lepton_search.errors.RunInterrupted`)."""
        from lepton_search.search import run_study

        return run_study(
            self.spec,
            locations=self.locations,
            n_trials=n_trials,
            workers=workers,
            ray_address=ray_address,
            on_event=on_event,
        )

    def optuna_study(self) -> optuna.Study:
        """The Optuna study itself, for Optuna's own tools.

        Raises:
            StudyNotFoundError: the study has not run yet.
        """
        from lepton_search.search import load_existing_study

        return load_existing_study(self.spec, self.locations)

    def frontier(self) -> list[TrialRecord]:
        """The Pareto frontier's trials, by trial number: every non-dominated feasible trial."""
        from lepton_search.search._frontier import frontier_records

        return frontier_records(self.optuna_study())

    def frontier_json(self) -> dict[str, Any]:
        """The frontier as ``lepton-search frontier --format json`` prints it: the trials, the
        baseline, the tie groups and where the speed comes from."""
        from lepton_search.search import frontier

        return frontier(self.optuna_study())

    def report(self, path: str | Path | None = None) -> Path:
        """Writes the HTML report (default ``<study name>-report.html``) and returns its path."""
        from lepton_search.search import write_report
        from lepton_search.storage import safe_name

        target = Path(path) if path is not None else Path(f"{safe_name(self.name)}-report.html")
        return write_report(self.optuna_study(), target)

    def export(self, trial_number: int, out_dir: str | Path) -> list[Path]:
        """Writes trial ``trial_number``'s deployable model, ``config.json`` and ``trial.json``
        into ``out_dir``; returns the paths written."""
        from lepton_search.search import export_trial

        return export_trial(self.spec, self.locations, trial_number, Path(out_dir))


def load(study: str | Path | StudySpec, *, storage: str | None = None, artifacts: str | Path | None = None) -> Study:
    """The study of ``study`` (a study file, or a :class:`~lepton_search.search.StudySpec`),
    stored at ``storage`` and ``artifacts`` when given (else where the study file says).

    Raises:
        ConfigError: the study file is missing or invalid (the message names the field and the fix).
    """
    from lepton_search.search import Locations, StudySpec, load_study_file

    spec = study if isinstance(study, StudySpec) else load_study_file(study)
    return Study(spec, Locations.resolve(spec, storage, str(artifacts) if artifacts is not None else None))


def run(
    study: str | Path | StudySpec,
    *,
    n_trials: int | None = None,
    workers: int | None = None,
    storage: str | None = None,
    artifacts: str | Path | None = None,
    ray_address: str | None = None,
) -> RunSummary:
    """Runs (or continues) ``study``: ``load(study, ...).run(...)``."""
    return load(study, storage=storage, artifacts=artifacts).run(
        n_trials=n_trials, workers=workers, ray_address=ray_address
    )


def frontier(
    study: str | Path | StudySpec, *, storage: str | None = None, artifacts: str | Path | None = None
) -> list[TrialRecord]:
    """The frontier of ``study`` as records: ``load(study, ...).frontier()``."""
    return load(study, storage=storage, artifacts=artifacts).frontier()


def report(
    study: str | Path | StudySpec,
    path: str | Path | None = None,
    *,
    storage: str | None = None,
    artifacts: str | Path | None = None,
) -> Path:
    """Writes the HTML report of ``study``: ``load(study, ...).report(path)``."""
    return load(study, storage=storage, artifacts=artifacts).report(path)


def export(
    study: str | Path | StudySpec,
    trial_number: int,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    artifacts: str | Path | None = None,
) -> list[Path]:
    """Writes one trial's deployable files: ``load(study, ...).export(trial_number, out_dir)``."""
    return load(study, storage=storage, artifacts=artifacts).export(trial_number, out_dir)


def bench(
    candidate: str | Path,
    baseline: str | Path | None = None,
    *,
    backend: str | None = None,
    threads: int = 1,
    sessions: int = 3,
    batch_size: int = 64,
    dims: Mapping[str, int] | None = None,
    noise_band: float | Literal["auto"] | None = None,
    aa_runs: int = 5,
) -> BenchResult:
    """Measures ``candidate`` (an ONNX model or a ``torch.export`` program) against ``baseline``,
    interleaved, with the protocol trials use (``lepton-search bench``)."""
    from lepton_search.objectives import MeasurementSettings
    from lepton_search.objectives import bench as measure

    return measure(
        Path(candidate),
        Path(baseline) if baseline is not None else None,
        settings=MeasurementSettings(threads=threads, sessions=sessions, batch_size=batch_size),
        backend=backend,
        dims=dict(dims) if dims else None,
        noise_band=noise_band,
        aa_runs=aa_runs,
    )
