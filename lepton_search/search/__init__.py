"""Wires spaces and objectives into Optuna studies run on Ray: the study file, the driver, the
sampler registry, the frontier and the reports."""

from lepton_search.search._driver import Locations, RunInterrupted, RunSummary, load_existing_study, run_study
from lepton_search.search._executor import RayExecutor
from lepton_search.search._frontier import frontier
from lepton_search.search._report import write_report
from lepton_search.search._samplers import create_sampler, known_samplers
from lepton_search.search._spec import StudySpec, load_study_file, parse_study

__all__ = [
    "Locations",
    "RayExecutor",
    "RunInterrupted",
    "RunSummary",
    "StudySpec",
    "create_sampler",
    "frontier",
    "known_samplers",
    "load_existing_study",
    "load_study_file",
    "parse_study",
    "run_study",
    "write_report",
]
