"""Wires spaces and objectives into Optuna studies run on Ray: the study file, the driver, the
sampler registry, the frontier and the reports."""

from lepton_search.errors import RunInterrupted
from lepton_search.search._dashboard import serve as serve_dashboard
from lepton_search.search._driver import load_existing_study, run_study
from lepton_search.search._executor import RayExecutor
from lepton_search.search._export import export_trial
from lepton_search.search._frontier import frontier, frontier_records
from lepton_search.search._nightly import run_nightly
from lepton_search.search._preflight import preflight
from lepton_search.search._progress import ProgressReporter, frontier_table
from lepton_search.search._record import LatencyRecord, TrialRecord
from lepton_search.search._report import write_report
from lepton_search.search._samplers import create_sampler, known_samplers
from lepton_search.search._spec import StudySpec, load_study_file, parse_study
from lepton_search.search._study import Locations, RunSummary

__all__ = [
    "LatencyRecord",
    "Locations",
    "ProgressReporter",
    "RayExecutor",
    "RunInterrupted",
    "RunSummary",
    "StudySpec",
    "TrialRecord",
    "create_sampler",
    "export_trial",
    "frontier",
    "frontier_records",
    "frontier_table",
    "known_samplers",
    "load_existing_study",
    "load_study_file",
    "parse_study",
    "preflight",
    "run_nightly",
    "run_study",
    "serve_dashboard",
    "write_report",
]
