"""Two Ray nodes on one machine (Ray's own multi-node test cluster), joined with --ray-address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lepton_search.testing import study_dict, write_toml

pytestmark = pytest.mark.slow

_DRIVER = textwrap.dedent(
    """
    import json, sys
    import optuna
    from ray.cluster_utils import Cluster
    from lepton_search.search import Locations, load_study_file, run_study

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1},
                                                           "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    spec = load_study_file(sys.argv[1])
    summary = run_study(spec, locations=Locations.resolve(spec), ray_address=cluster.address)
    study = optuna.load_study(study_name=spec.study.name, storage=spec.study.storage)
    nodes = [t.user_attrs["device"]["ray_node_id"] for t in study.trials if t.state.name == "COMPLETE"]
    print(json.dumps({"completed": summary.completed, "nodes": nodes,
                      "cluster_nodes": [node.node_id for node in cluster.list_all_nodes()]}))
    cluster.shutdown()
    """
)


def test_trials_spread_across_two_nodes_and_record_where_they_ran(tmp_path: Path, artifacts: Path) -> None:
    study_file = write_toml(tmp_path / "study.toml", study_dict(tmp_path, artifacts, budget={"n_trials": 4}))
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    result = subprocess.run(
        [sys.executable, str(script), str(study_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["completed"] == 4
    assert len(set(out["cluster_nodes"])) == 2
    assert set(out["nodes"]) == set(out["cluster_nodes"]), "both nodes evaluated trials"
