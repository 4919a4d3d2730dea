"""A multi-node study logging through a real MLflow tracking server (HTTP) on real PostgreSQL.

This is the production layout (docs/cluster.md): trials on worker nodes write their own runs to
the server, the driver closes the runs a trial could not close, and the rows end up in the
database - checked here through the MLflow client and, independently, with SQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.record import TRAIN_LOSS, Artifacts, Roles, Status, Tags, val_metric
from tests.servers import TrackingServer, psycopg2_dsn
from tests.study_helpers import ROOT, SMOKE, run_study, study_env

EPOCHS = yaml.safe_load(SMOKE.read_text())["epochs"]
VAL_AUC = val_metric("auc")


@pytest.mark.cluster
def test_multi_node_study_through_mlflow_server_on_postgres(
        tmp_path: Path, mlflow_on_postgres: TrackingServer) -> None:
    import psycopg2
    from ray.cluster_utils import Cluster

    server = mlflow_on_postgres
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        out = tmp_path / "study"
        # smoke.yaml as is: 4 trials, 4 epochs, ASHA stopping some of them early
        proc = run_study(out, "--address", cluster.address, "--tracking-uri", server.url,
                         timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        cluster.shutdown()

    assert not (out / "mlflow.db").exists()  # nothing went to the embedded default store
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    all_runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get(Tags.ROLE) == Roles.STUDY]
    trials = [r for r in all_runs if r.data.tags.get(Tags.ROLE) == Roles.TRIAL]
    assert len(parents) == 1 and len(trials) == 4, [r.data.tags for r in all_runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED"

    summary = pd.read_csv(out / "summary.csv").set_index("mlflow_run_id")
    assert set(summary.index) == {r.info.run_id for r in trials}
    for run in trials:
        tags = run.data.tags
        assert tags[Tags.PARENT] == parent.info.run_id
        assert run.info.status == "FINISHED", (run.info.run_id, run.info.status)
        assert tags[Tags.STATUS] in Status.USABLE
        assert tags[Tags.STATUS] == summary.loc[run.info.run_id, "status"]
        stopped = tags[Tags.STATUS] == Status.STOPPED_EARLY
        expected = int(tags[Tags.STOPPED_AT]) if stopped else EPOCHS
        assert expected == summary.loc[run.info.run_id, "epochs"]
        for key in (VAL_AUC, TRAIN_LOSS):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, expected + 1)), key
        if not stopped:  # artifacts went through the server's proxy
            assert Artifacts.PREDICTIONS in {a.path for a in
                                             client.list_artifacts(run.info.run_id)}
    assert any(r.data.tags[Tags.STATUS] == Status.COMPLETED for r in trials)

    # trials ran on both worker nodes, none on the CPU-less head
    nodes = {r.data.tags[Tags.NODE_ID] for r in trials}
    assert nodes == {w.node_id for w in workers}, nodes

    # the parent run's artifacts are files in the server's artifact destination
    assert {Artifacts.CONFIG, Artifacts.SUMMARY} <= {a.path for a in
                                                     client.list_artifacts(parent.info.run_id)}
    assert list(server.artifact_dir.rglob(Artifacts.SUMMARY))

    # the rows really are in PostgreSQL (read with SQL, not through MLflow)
    conn = psycopg2.connect(psycopg2_dsn(server.db_uri))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT run_uuid, status FROM runs WHERE experiment_id = %s",
                        (int(experiment.experiment_id),))
            rows = dict(cur.fetchall())
            cur.execute("SELECT run_uuid, count(*), count(DISTINCT step) FROM metrics "
                        "WHERE key = %s GROUP BY run_uuid", (VAL_AUC,))
            val_auc = {run_id: (n, distinct) for run_id, n, distinct in cur.fetchall()}
    finally:
        conn.close()
    assert rows == {r.info.run_id: "FINISHED" for r in all_runs}
    for run in trials:
        n, distinct = val_auc[run.info.run_id]
        assert n == distinct == len(client.get_metric_history(run.info.run_id, VAL_AUC))


@pytest.mark.slow
def test_concurrent_trial_loggers_lose_nothing(tmp_path: Path,
                                               mlflow_on_postgres: TrackingServer) -> None:
    """benchmarks/mlflow_load.py, reduced: 8 trial processes x 5 epochs x 40 metrics through
    TrialLogger over HTTP; every value read back exactly once, and counted in PostgreSQL."""
    report = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mlflow_load.py"),
         "--tracking-uri", mlflow_on_postgres.url, "--db-uri", mlflow_on_postgres.db_uri,
         "--trials", "8", "--epochs", "5", "--metrics", "40", "--epoch-seconds", "0.2",
         "--json", str(report)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=study_env())
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    assert proc.returncode == 0
    figures = json.loads(report.read_text())
    sent = 8 * (5 * 40 + 2)  # + final_auc and epochs_run per trial
    assert figures["values_sent"] == sent
    assert figures["values_stored"] == figures["sql_metric_rows"] == sent
    assert figures["missing"] == figures["duplicates"] == figures["wrong"] == 0
    assert figures["histories_checked"] == 8 * 42
    assert len(figures["per_trial"]) == 8
    assert figures["values_per_s"] > 0 and 0 < figures["logging_share_mean"] < 1
