"""Storage URLs, Optuna RDB storage and the artifact store; the only place a database is opened."""

from lepton_search.storage._artifacts import (
    DEFAULT_ARTIFACT_DIR,
    get_artifact_store,
    safe_join,
    safe_name,
)
from lepton_search.storage._cache import ResultCache, cache_key
from lepton_search.storage._coordination import StudyCoordination
from lepton_search.storage._ledger import RunLedger
from lepton_search.storage._rdb import (
    DEFAULT_STORAGE_URL,
    get_storage,
    mask_url,
    normalize_url,
    scrub,
    set_trial_user_attrs,
    sqlite_path,
)

__all__ = [
    "DEFAULT_ARTIFACT_DIR",
    "DEFAULT_STORAGE_URL",
    "ResultCache",
    "RunLedger",
    "StudyCoordination",
    "cache_key",
    "get_artifact_store",
    "get_storage",
    "mask_url",
    "normalize_url",
    "safe_join",
    "safe_name",
    "scrub",
    "set_trial_user_attrs",
    "sqlite_path",
]
