"""optuna-dashboard on the study storage and artifact store."""

from __future__ import annotations

from typing import Any

from lepton_search.storage import get_artifact_store, get_storage


def dashboard_app(storage_url: str, artifact_dir: str | None = None) -> Any:
    """The optuna-dashboard WSGI application for ``storage_url`` (for gunicorn or tests)."""
    from optuna_dashboard import wsgi

    store = get_artifact_store(artifact_dir, create=False) if artifact_dir else None
    return wsgi(get_storage(storage_url, create=False), artifact_store=store)


def serve(storage_url: str, artifact_dir: str | None, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serves the dashboard until interrupted. It has no authentication: keep ``host`` on loopback
    unless a proxy that authenticates stands in front."""
    from optuna_dashboard import run_server

    store = get_artifact_store(artifact_dir, create=False) if artifact_dir else None
    print(f"optuna-dashboard on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    run_server(get_storage(storage_url, create=False), host=host, port=port, artifact_store=store)
