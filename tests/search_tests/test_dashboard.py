"""The real optuna-dashboard application on a study written by the driver."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import onnx
import pytest

from lepton_search.cli import dashboard
from lepton_search.search import Locations, parse_study, run_study
from lepton_search.search._dashboard import dashboard_app
from lepton_search.search._study import open_study
from lepton_search.storage import get_artifact_store
from lepton_search.testing import study_dict


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, artifacts: Path, ray_session: None) -> Iterator[tuple[str, Locations]]:
    spec = parse_study(study_dict(tmp_path, artifacts, budget={"n_trials": 2}))
    locations = Locations.resolve(spec)
    run_study(spec, locations=locations)
    app = dashboard_app(locations.storage_url, str(locations.artifact_dir))
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", locations
    server.shutdown()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_dashboard_shows_the_study_with_named_objectives_and_artifacts(served) -> None:
    base, _ = served
    studies = _get(f"{base}/api/studies")["study_summaries"]
    [study] = [s for s in studies if s["study_name"] == "test-study"]
    detail = _get(f"{base}/api/studies/{study['study_id']}?after=0")
    assert detail["objective_names"] == ["accuracy", "latency_ms", "cost_usd_per_million"]
    assert len(detail["trials"]) == 2
    trial = detail["trials"][0]
    attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
    assert "ratio_to_baseline" in attrs and "verdict" in attrs
    assert trial["artifacts"], "the exported ONNX model is listed as the trial's artifact"
    artifact = trial["artifacts"][0]
    url = f"{base}/artifacts/{study['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    model = onnx.load_model_from_string(body)  # the real exported model, not an error page
    assert model.graph.input[0].name == "input"
    assert artifact["filename"].endswith(".onnx")


def test_dashboard_binds_to_loopback_by_default() -> None:
    host = next(p for p in dashboard.params if p.name == "host")
    assert host.default == "127.0.0.1"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_dashboard_reads_while_the_driver_writes(
    request: pytest.FixtureRequest, tmp_path: Path, artifacts: Path, ray_session: None, backend: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    spec = parse_study(study_dict(tmp_path, artifacts, study={"storage": storage}, budget={"n_trials": 4}))
    locations = Locations.resolve(spec)
    # The dashboard is a reader: it opens an existing study and artifact store and creates neither.
    open_study(spec, locations)
    get_artifact_store(locations.artifact_dir)
    app = dashboard_app(locations.storage_url, str(locations.artifact_dir))
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"

    stop = threading.Event()
    reads: list[int] = []
    errors: list[str] = []

    def poll() -> None:
        while not stop.is_set():
            try:
                for summary in _get(f"{base}/api/studies")["study_summaries"]:
                    detail = _get(f"{base}/api/studies/{summary['study_id']}?after=0")
                    reads.append(len(detail["trials"]))
            except Exception as e:  # any failed read is what this test looks for
                errors.append(f"{type(e).__name__}: {e}")
            stop.wait(0.2)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        summary = run_study(spec, locations=locations)
    finally:
        stop.set()
        reader.join(timeout=30)
        server.shutdown()
    assert summary.completed == 4
    assert not errors, errors[:3]
    assert len(reads) >= 5 and reads[-1] == 4
