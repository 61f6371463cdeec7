"""Helpers shared by lepton-search's tests, benchmarks and plugin authors' own tests."""

from lepton_search.testing.cpus import SIMULATED_CPUS, cpu_probe, simulated_cpu
from lepton_search.testing.studies import FAST_MEASUREMENT, FAST_SPACE, study_dict, write_toml
from lepton_search.testing.tasks import FaultyDigitsTask, small_digits_task

__all__ = [
    "FAST_MEASUREMENT",
    "FAST_SPACE",
    "SIMULATED_CPUS",
    "FaultyDigitsTask",
    "cpu_probe",
    "simulated_cpu",
    "small_digits_task",
    "study_dict",
    "write_toml",
]
