"""The cluster recipes in cluster/ parse, have the keys their tools need, and run a valid study.

Each recipe's study command is extracted from the file (a YAML key, a comment, a shell line),
its arguments parsed with `study.run.parse_args` (the real parser), and its study file checked
to exist in search_spaces/. The Ray launcher YAML is validated against Ray's own schema.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from study.run import parse_args

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def study_commands(text: str) -> list[list[str]]:
    """Every `python -m study.run ...` in `text` as its argument list (after `study.run`).

    Shell line continuations are joined; a command ends at `&&`, `;`, `|`, `'` (the end of a
    quoted `ray exec` command) or the end of the line. `${VAR:+--flag}` (a flag the script adds
    when VAR is set) is kept as `--flag`."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        if "-m study.run" not in line:
            continue
        rest = line.split("-m study.run", 1)[1]
        rest = re.split(r"&&|;|\||'(?=\s*$)", rest)[0]
        rest = re.sub(r"\$\{\w+:\+(--[\w-]+)\}", r"\1", rest)
        commands.append(shlex.split(rest))
    return commands


def check_study_command(args: list[str]) -> None:
    """The arguments parse with study.run's own parser, join a cluster, use shared storage."""
    ns = parse_args(args)
    space = ns.space if ns.space.is_absolute() else ROOT / ns.space
    assert (ROOT / "search_spaces" / ns.space.name).is_file(), ns.space
    if not ns.space.is_absolute():
        assert space.is_file(), space
    assert ns.address, "a cluster recipe joins its Ray cluster (--address)"
    assert ns.storage and ns.storage.startswith(("/shared", "$")), \
        "Ray results must go to shared storage (--storage)"
    assert ns.tracking_uri and not ns.tracking_uri.startswith("sqlite"), \
        "trials on several nodes log to an MLflow server (--tracking-uri)"
    assert ns.out is not None and str(ns.out).startswith(("/shared", "$")), \
        "the study folder lives on shared storage"


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "kuberay-rayjob.yaml",
                                  "slurm-study.sbatch"])
def test_generated_cohorts_cached_on_shared_storage(name: str) -> None:
    """A --resume from another node finds the study's synthetic cohort where it was made."""
    from ksmodel.data import CACHE_ENV

    text = (CLUSTER / name).read_text()
    values = re.findall(CACHE_ENV + r"(?:=|, value: )(\S+)", text)  # shell, or a k8s env entry
    assert values, f"{name} does not set {CACHE_ENV}"
    for value in values:
        assert value.startswith("/shared") or "$KS_SHARED/" in value, value


def test_ray_launcher_yaml() -> None:
    text = (CLUSTER / "ray-cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    for key in ("cluster_name", "provider", "head_node_type", "available_node_types",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert len(cfg["available_node_types"]) >= 2  # head + a worker type
    # Ray's own schema for cluster configs (unknown keys and wrong types are errors there)
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "mlflow server" in head
    assert "postgresql" in text and "--backend-store-uri" in head
    assert "ray start --address" in " ".join(cfg["worker_start_ray_commands"])
    setup = " ".join(cfg["setup_commands"])
    assert "download.pytorch.org/whl/cu" in setup  # the CUDA torch build, before the project
    assert setup.index("torch==") < setup.index("pip install -q -e .")
    commands = study_commands(text)
    assert len(commands) == 1
    check_study_command(commands[0])


def test_kuberay_rayjob() -> None:
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    workers = cluster["workerGroupSpecs"]
    assert workers and all(w["template"]["spec"]["containers"] for w in workers)
    gpu = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" in gpu
    # one shared PVC on every pod, and every pod pointed at the MLflow Service
    pods = [head, *(w["template"]["spec"] for w in workers)]
    claims = {v["persistentVolumeClaim"]["claimName"] for p in pods for v in p["volumes"]
              if "persistentVolumeClaim" in v}
    assert len(claims) == 1
    uris = {e["value"] for p in pods for c in p["containers"] for e in c.get("env", [])
            if e["name"] == "MLFLOW_TRACKING_URI"}
    assert len(uris) == 1
    (uri,) = uris
    commands = study_commands(spec["entrypoint"])
    assert len(commands) == 1
    check_study_command(commands[0])
    assert parse_args(commands[0]).tracking_uri == uri

    # the companion manifest provides that PVC and that Service, on PostgreSQL
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay-mlflow.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert kinds["PersistentVolumeClaim"]["metadata"]["name"] == next(iter(claims))
    assert "ReadWriteMany" in kinds["PersistentVolumeClaim"]["spec"]["accessModes"]
    service = kinds["Service"]
    port = service["spec"]["ports"][0]["port"]
    assert uri == f"http://{service['metadata']['name']}:{port}"
    server = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(server["command"] + server["args"])
    assert "mlflow server" in args and "--backend-store-uri" in args
    assert f"{service['metadata']['name']}:{port}" in args  # allowed Host header


def test_slurm_script() -> None:
    path = CLUSTER / "slurm-study.sbatch"
    text = path.read_text()
    assert text.startswith("#!/bin/bash")
    sbatch = re.findall(r"^#SBATCH (--[\w-]+)", text, flags=re.M)
    assert {"--nodes", "--time"} <= set(sbatch)
    # #SBATCH lines count only before the first command
    first_command = next(i for i, line in enumerate(text.splitlines()[1:], 1)
                         if line.strip() and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(text.splitlines())
               if line.startswith("#SBATCH"))
    body = re.sub(r"\\\n\s*", " ", text)
    assert re.search(r"srun .*ray start --head", body)
    assert re.search(r"srun .*ray start --address", body)
    assert "mlflow server" in body and "KS_MLFLOW_DB" in body
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    commands = study_commands(text)
    assert len(commands) == 1
    check_study_command(commands[0])
    assert "--resume" in commands[0]  # resubmitting the job continues the study


def test_command_extraction_rejects_a_bad_command() -> None:
    """The check above would catch a recipe whose study command went stale."""
    (args,) = study_commands("python -m study.run --space search_spaces/nope.yaml "
                             "--address auto --storage /shared/ray --tracking-uri http://h:5000 "
                             "--out /shared/s")
    with pytest.raises(AssertionError):
        check_study_command(args)
    (args,) = study_commands("python -m study.run --space search_spaces/full.yaml --adress auto")
    with pytest.raises(SystemExit):
        check_study_command(args)
