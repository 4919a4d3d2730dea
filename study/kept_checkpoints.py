"""The trial checkpoints a resume needs, kept until no saved state of Ray's refers to them.

Ray keeps a trial's latest ``num_to_keep`` checkpoints and deletes older ones the moment a new
one is registered, but saves its experiment state (which names the checkpoint each trial
restarts from) only every second or so, and copies it into the study folder in a background
thread. A study killed between the two leaves a saved state naming a checkpoint that no longer
exists; Ray then cannot restore that trial ("does not exist on storage anymore"), it fails
twice and the resumed study ends with a trial short - seen as a killed 3-trial study resuming
to 2 completed trials.

So every checkpoint is also hard-linked (no data copied) into
``<experiment>/.ks-kept/<trial folder>/<checkpoint>`` as Ray registers it. A kept copy is
removed only once both states a resume can start from - the state in the study folder and the
intact copy beside it (study/ray_state.py) - name a newer checkpoint of that trial; before a
resume, a named checkpoint that Ray deleted is put back from its kept copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from ray.tune.utils.serialization import TuneFunctionDecoder

KEPT = ".ks-kept"
STATE_GLOB = "experiment_state-*.json"
_INDEX = re.compile(r"checkpoint_(\d+)$")


def named_checkpoints(state: bytes) -> set[tuple[str, str]]:
    """(trial folder, checkpoint folder) that Ray restarts each trial of an experiment state
    from (under PBT, a trial may restart from another trial's checkpoint)."""
    trials = json.loads(state).get("trial_data", [])
    return {named for _, meta in trials if (named := _checkpoint_of(meta)) is not None}


_DECODED: dict[bytes, tuple[str, str] | None] = {}


def _checkpoint_of(meta: str) -> tuple[str, str] | None:
    """The checkpoint one trial's saved metadata names. Decoding unpickles the trial's
    checkpoint manager (~0.3 ms a trial), and a study's states are re-read every few seconds
    while most trials' entries stay as they were: so results are remembered by a digest of
    the entry (a large study's state holds tens of MB of them)."""
    key = hashlib.blake2b(meta.encode(), digest_size=16).digest()
    if key not in _DECODED:
        if len(_DECODED) >= 100_000:
            _DECODED.clear()
        # the study's own file: Ray reads the same payloads back on resume
        decoded = json.loads(meta, cls=TuneFunctionDecoder, allow_cloudpickle=True)
        latest = getattr(decoded.get("checkpoint_manager"), "latest_checkpoint_result", None)
        path = PurePosixPath(latest.checkpoint.path) if latest is not None and \
            latest.checkpoint is not None else None
        _DECODED[key] = (path.parent.name, path.name) if path is not None else None
    return _DECODED[key]


def newest_state(folder: Path) -> Path | None:
    """The experiment state Ray restores from: the newest session's (names sort by time)."""
    return max(folder.glob(STATE_GLOB), default=None) if folder.is_dir() else None


def keep(checkpoint: Path, experiment: Path) -> None:
    """Hard-link a checkpoint Ray just registered into the kept folder (OSError: not kept)."""
    target = experiment / KEPT / checkpoint.parent.name / checkpoint.name
    if not target.exists():
        _link_tree(checkpoint, target)


def prune(experiment: Path, states: list[bytes]) -> int:
    """Remove the kept copies of a trial folder older than every checkpoint of it that any of
    ``states`` names (a folder some state names nothing in keeps all). Returns how many."""
    named = [named_checkpoints(s) for s in states]
    common = set.intersection(*({f for f, _ in n} for n in named)) if named else set()
    oldest = {f: min(_index(c) for n in named for g, c in n if g == f) for f in common}
    removed = 0
    for trial in _kept_trials(experiment):
        for copy in trial.iterdir() if trial.name in oldest else ():
            if _index(copy.name) < oldest[trial.name]:
                shutil.rmtree(copy, ignore_errors=True)
                removed += 1
    return removed


def put_back(experiment: Path) -> list[str]:
    """Before a resume: every checkpoint the state to restore names but Ray had deleted, linked
    back from its kept copy. Returns ``<trial folder>/<checkpoint>`` of each put back."""
    path = newest_state(experiment)
    if path is None:
        return []
    restored = []
    for trial, name in sorted(named_checkpoints(path.read_bytes())):
        target, copy = experiment / trial / name, experiment / KEPT / trial / name
        if not target.exists() and copy.is_dir():
            _link_tree(copy, target)
            restored.append(f"{trial}/{name}")
    return restored


def _kept_trials(experiment: Path) -> list[Path]:
    kept = experiment / KEPT
    return [p for p in kept.iterdir() if p.is_dir()] if kept.is_dir() else []


def _index(name: str) -> int:
    match = _INDEX.search(name)
    return int(match.group(1)) if match else -1


def _link_tree(source: Path, target: Path) -> None:
    """``source``'s files hard-linked under ``target``, which appears whole or not at all."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, tmp, copy_function=os.link)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["KEPT", "keep", "named_checkpoints", "newest_state", "prune", "put_back"]
