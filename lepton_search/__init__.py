"""lepton-search: multi-objective search over model-compression configurations."""

__version__ = "0.1.0"
