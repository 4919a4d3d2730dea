"""MLflow logging under load: many concurrent trials, nothing lost, and what logging costs.

Each trial is its own process (as under Ray) and logs through the product's path,
`study.tracking.TrialLogger` (the trial's child run; `log_epoch` queues one `log_batch` per
epoch on the logger's background thread; `complete` drains it, uploads predictions and closes
the run). TrialLogger needs no Ray context, only a tracking URI, so nothing is re-implemented
here. An epoch's compute is simulated with a sleep (on a 2-core machine, 32 busy processes
would measure the CPU scheduler, not logging).

Then every value is read back with `get_metric_history` (per run and key): sent = stored,
each (step, value) exactly once, values bit-equal to what was sent; with a server this script
started, the `metrics` rows are also counted with SQL.

Figures: throughput (values stored / wall time of the logging phase; compare with the offered
rate trials x metrics / epoch time), and the logging share of trial time: seconds the trial's
own thread spent in logger calls (run creation, `log_epoch`, `complete`) / the trial's wall time.

    python benchmarks/mlflow_load.py [--trials 32] [--epochs 20] [--metrics 40]
        [--epoch-seconds 0.5] [--tracking-uri http://HOST:PORT] [--json out.json]

Without --tracking-uri it starts PostgreSQL (fsync on) and `mlflow server` on 127.0.0.1
(tests/servers.py; needs the PostgreSQL server binaries) and stops them afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one line per run

from mlflow.tracking import MlflowClient  # noqa: E402

from ksmodel.telemetry import TELEMETRY_KEYS  # noqa: E402
from study import record  # noqa: E402
from study.store import ensure_experiment  # noqa: E402
from study.tracking import TrialLogger, start_parent_run  # noqa: E402

# the coordinator's first telemetry keys (ksmodel.telemetry: standard library, no torch in each
# of the 32 trial processes)
TELEMETRY = TELEMETRY_KEYS[:6]
FOLD_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1", "loss", "ece", "brier")


def metric_keys(n: int) -> list[str]:
    """`n` per-epoch keys named as the record names a 5-fold trial's (val_auc, train_loss,
    coord/<key>, fold_<k>/val_<m>), padded with extra_<j>."""
    keys = [record.val_metric("auc"), record.TRAIN_LOSS,
            *(record.telemetry_metric(k) for k in TELEMETRY),
            *(record.fold_metric(f, record.val_metric(m)) for m in FOLD_METRICS
              for f in range(5))]
    keys += [f"extra_{j}" for j in range(max(0, n - len(keys)))]
    return keys[:n]


def value(trial: int, epoch: int, k: int) -> float:
    """A distinct, non-round value per (trial, epoch, key): a swap or a rounding shows."""
    return trial + epoch / 1000 + k / 1e6 + 1 / 3


def final_metrics(trial: int) -> dict[str, float]:
    return {record.final_metric("auc"): trial + 0.5 + 1 / 7, record.EPOCHS_RUN: 0.0 + trial}


def _count_failed_calls() -> list[str]:
    """Record the MLflow client calls that raised in this trial process (study.tracking retries
    them): a lost value would show in the read-back, a retried one only here."""
    errors: list[str] = []

    def counted(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}"[:400])
                raise
        return call

    for name in ("log_batch", "create_run", "search_runs", "log_artifact", "set_terminated"):
        setattr(MlflowClient, name, counted(getattr(MlflowClient, name)))
    return errors


def _trial(index: int, url: str, experiment_id: str, parent: str, epochs: int, keys: list[str],
           epoch_seconds: float, barrier: Any, results: Any) -> None:
    """One trial process: create its run, then per epoch compute (sleep) and log."""
    errors = _count_failed_calls()
    barrier.wait()
    start = time.perf_counter()
    t = time.perf_counter()
    logger = TrialLogger(url, experiment_id, parent, f"load{index:03d}",
                         {"lr": 1e-3 * (index + 1), "alpha": 0.5, "coordination": "cgcoord"},
                         {record.Tags.METHOD: "cgcoord", record.Tags.TASK: "diagnosis",
                          record.Tags.METRIC: "auc", record.Tags.NODE_ID: f"proc-{index}"})
    create_s = time.perf_counter() - t
    compute_s = log_epoch_s = 0.0
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        time.sleep(epoch_seconds)
        compute_s += time.perf_counter() - t
        values = {key: value(index, epoch, k) for k, key in enumerate(keys)}
        t = time.perf_counter()
        logger.log_epoch(epoch, values)
        log_epoch_s += time.perf_counter() - t
    t = time.perf_counter()
    predictions = pd.DataFrame({"case_id": [f"c{i}" for i in range(100)], "fold": 0,
                                "prob": 0.5})
    logger.complete(final_metrics(index), predictions, {record.Tags.WALL_SECONDS: 0})
    complete_s = time.perf_counter() - t
    wall = time.perf_counter() - start
    results.put({"trial": index, "run_id": logger.run_id, "wall_s": wall,
                 "failed_calls": len(errors), "errors": errors[:3],
                 "compute_s": compute_s, "create_s": create_s, "log_epoch_s": log_epoch_s,
                 "complete_s": complete_s, "end": time.time()})


def run_load(url: str, trials: int = 32, epochs: int = 20, metrics: int = 40,
             epoch_seconds: float = 0.5, db_uri: str | None = None) -> dict[str, Any]:
    """Run the load against the tracking server at `url`, verify, return figures + per-trial
    timings (`per_trial`)."""
    keys = metric_keys(metrics)
    client = MlflowClient(url)
    name = f"mlflow-load-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}"
    experiment_id = ensure_experiment(client, name, None)
    parent = start_parent_run(client, experiment_id, name, {record.Tags.STUDY: name}, [])
    # forkserver: trial processes start from a clean process that preloaded the logging code,
    # not from this one (a forked copy would share this process's pooled HTTP connections)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["study.tracking"])
    barrier, results = ctx.Barrier(trials + 1), ctx.Queue()
    procs = [ctx.Process(target=_trial, args=(i, url, experiment_id, parent, epochs, keys,
                                              epoch_seconds, barrier, results))
             for i in range(trials)]
    for p in procs:
        p.daemon = True  # they end with this process
        p.start()
    try:
        barrier.wait(timeout=300)
    except threading.BrokenBarrierError:
        dead = [p.exitcode for p in procs if not p.is_alive()]
        raise RuntimeError(f"trial processes did not start ({len(dead)} exited)") from None
    start, load_start = time.time(), os.getloadavg()[0]
    rows = []
    deadline = time.time() + 900 + epochs * epoch_seconds * 4
    while len(rows) < trials:
        try:
            rows.append(results.get(timeout=5))
        except queue.Empty:
            if time.time() > deadline or not any(p.is_alive() for p in procs):
                raise RuntimeError(f"{trials - len(rows)} trial processes never reported (exit "
                                   f"codes {[p.exitcode for p in procs]})") from None
    for p in procs:
        p.join(timeout=60)
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} trial processes failed: exit codes {failed}")
    wall = max(r["end"] for r in rows) - start
    client.set_terminated(parent, "FINISHED")

    check = verify(client, rows, keys, epochs)
    if db_uri is not None:
        check["sql_metric_rows"] = sql_metric_rows(db_uri, experiment_id)
    table = pd.DataFrame(rows).sort_values("trial")
    table["logging_s"] = table["create_s"] + table["log_epoch_s"] + table["complete_s"]
    table["logging_share"] = table["logging_s"] / table["wall_s"]
    sent = trials * (epochs * len(keys) + len(final_metrics(0)))
    return {
        "trials": trials, "epochs": epochs, "metrics_per_epoch": len(keys),
        "epoch_seconds": epoch_seconds, "values_sent": sent, **check,
        "wall_s": wall, "values_per_s": check["values_stored"] / wall,
        "offered_values_per_s": (trials * len(keys) / epoch_seconds if epoch_seconds
                                 else float("nan")),
        "failed_calls_retried": int(table["failed_calls"].sum()),
        "create_run_s_mean": table["create_s"].mean(),
        "log_epoch_ms_mean": 1000 * table["log_epoch_s"].sum() / (trials * epochs),
        "complete_s_mean": table["complete_s"].mean(),
        "complete_s_max": table["complete_s"].max(),
        "logging_s_per_trial_mean": table["logging_s"].mean(),
        "trial_wall_s_mean": table["wall_s"].mean(),
        "logging_share_mean": table["logging_share"].mean(),
        "logging_share_max": table["logging_share"].max(),
        # the machine's 1-minute load average when the logging started / after it ended:
        # these figures are only comparable between runs under similar load
        "cpus": os.cpu_count(), "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
        "per_trial": table.to_dict("records"),
    }


def verify(client: MlflowClient, rows: list[dict[str, Any]], keys: list[str],
           epochs: int) -> dict[str, int]:
    """Read every (run, key) history back: count stored values, missing, duplicated, wrong."""
    jobs = [(r["trial"], r["run_id"], k, key) for r in rows for k, key in enumerate(keys)]
    jobs += [(r["trial"], r["run_id"], -1, key) for r in rows for key in final_metrics(0)]

    def one(job: tuple[int, str, int, str]) -> tuple[int, int, int, int]:
        trial, run_id, k, key = job
        history = client.get_metric_history(run_id, key)
        if k < 0:
            expected = {(0, final_metrics(trial)[key])}
        else:
            expected = {(e, value(trial, e, k)) for e in range(1, epochs + 1)}
        got = [(m.step, m.value) for m in history]
        dupes = len(got) - len(set(got))
        wrong = len(set(got) - expected)
        missing = len(expected - set(got))
        return len(got), missing, dupes, wrong

    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(one, jobs))
    return {"values_stored": sum(c[0] for c in counts), "missing": sum(c[1] for c in counts),
            "duplicates": sum(c[2] for c in counts), "wrong": sum(c[3] for c in counts),
            "histories_checked": len(jobs)}


def sql_metric_rows(db_uri: str, experiment_id: str) -> int:
    """Metric rows of the experiment's trial runs, counted in PostgreSQL itself."""
    import psycopg2

    conn = psycopg2.connect("postgresql://" + db_uri.split("://", 1)[1])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                        "WHERE r.experiment_id = %s", (int(experiment_id),))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@contextlib.contextmanager
def local_server(workers: int) -> Iterator[tuple[str, str]]:
    """PostgreSQL (fsync on, as in production) + `mlflow server` on 127.0.0.1: (url, db_uri)."""
    from tests.servers import mlflow_server, postgres

    with postgres(fsync=True) as db_uri, tempfile.TemporaryDirectory() as tmp, \
            mlflow_server(db_uri, Path(tmp) / "artifacts", workers=workers) as url:
        yield url, db_uri


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=40, help="metrics per epoch")
    parser.add_argument("--epoch-seconds", type=float, default=0.5,
                        help="simulated compute per epoch (0: measure the server's capacity)")
    parser.add_argument("--tracking-uri", help="an existing MLflow server (default: start "
                                               "PostgreSQL + mlflow server locally)")
    parser.add_argument("--db-uri", help="with --tracking-uri: the server's backend store, to "
                                          "count the metric rows with SQL as well")
    parser.add_argument("--server-workers", type=int, default=2,
                        help="`mlflow server --workers` for the local server")
    parser.add_argument("--json", type=Path, help="write the figures and per-trial timings")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.tracking_uri:
            url, db_uri = args.tracking_uri, args.db_uri
        else:
            url, db_uri = stack.enter_context(local_server(args.server_workers))
        report = run_load(url, args.trials, args.epochs, args.metrics, args.epoch_seconds,
                          db_uri)
    per_trial = report.pop("per_trial")
    print("\n".join(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}"
                    for k, v in report.items()))
    messages = sorted({e for row in per_trial for e in row["errors"]})
    if messages:
        print("MLflow calls that failed and were retried (first few):\n  " +
              "\n  ".join(messages[:5]))
    ok = report["values_stored"] == report["values_sent"] and not (
        report["missing"] or report["duplicates"] or report["wrong"])
    print("every value arrived exactly once" if ok else "VALUES LOST, DUPLICATED OR WRONG")
    if args.json:
        args.json.write_text(json.dumps({**report, "per_trial": per_trial}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
