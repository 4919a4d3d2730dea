"""Driver time of the state backup (study/ray_state.py) as a study grows to hundreds of trials.

Every second or so the driver copies Ray's experiment state beside it, checks it, and prunes
the kept checkpoints, which decodes every trial's entry of two states. This takes a real study's
experiment folder (``--experiment``, e.g. ``studies/smoke/ray/smoke``), replicates its trials'
entries to N trials in a temporary copy, and times one backup (write + prune) with every entry
decoded afresh (as before the decoded entries were remembered) and with the entries remembered
from the previous backup, side by side; then the share of the driver's time each takes at
StateBackup's interval (max(1 s, COST_FACTOR x the backup's own time)).

    python benchmarks/state_backup.py --experiment studies/smoke/ray/smoke [--trials 100 500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study import kept_checkpoints  # noqa: E402
from study.kept_checkpoints import STATE_GLOB  # noqa: E402
from study.ray_state import StateBackup, _prune_kept  # noqa: E402


def grown_copy(experiment: Path, n: int, into: Path) -> Path:
    """``experiment`` copied to ``into`` with its state's trial entries repeated to ``n``."""
    shutil.copytree(experiment, into, ignore=shutil.ignore_patterns("run_*", ".ks-*"))
    for path in into.glob(STATE_GLOB):
        state = json.loads(path.read_bytes())
        entries = state["trial_data"]
        state["trial_data"] = [
            [a, b.replace('"trial_id"', f'"_copy": {i}, "trial_id"', 1)]  # distinct entries
            for i, (a, b) in enumerate((entries * (n // len(entries) + 1))[:n])]
        path.write_text(json.dumps(state))
    return into


def one_backup(folder: Path, cached: bool) -> float:
    """Seconds for one backup of ``folder`` (its own staging) and the pruning after it."""
    if not cached:
        kept_checkpoints._DECODED.clear()
    start = time.perf_counter()
    state = StateBackup()._write(folder, folder)
    _prune_kept(folder, state)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", type=Path, required=True,
                    help="a finished study's Ray experiment folder (<out>/ray/<name>)")
    ap.add_argument("--trials", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if not any(args.experiment.glob(STATE_GLOB)):
        ap.error(f"{args.experiment}: no {STATE_GLOB} here (give <out>/ray/<study name>)")
    print(f"{'trials':>6} {'state MB':>8} {'decoded afresh s':>16} {'remembered s':>12} "
          f"{'driver share at 1 s':>19} {'adaptive share':>14}")
    for n in args.trials:
        with tempfile.TemporaryDirectory() as tmp:
            folder = grown_copy(args.experiment, n, Path(tmp) / "exp")
            size = max(p.stat().st_size for p in folder.glob(STATE_GLOB)) / 1e6
            one_backup(folder, cached=True)  # warm the file cache and the remembered entries
            fresh = statistics.median(one_backup(folder, False) for _ in range(args.repeats))
            kept = statistics.median(one_backup(folder, True) for _ in range(args.repeats))
        interval = max(1.0, StateBackup.COST_FACTOR * kept)
        print(f"{n:>6} {size:>8.1f} {fresh:>16.3f} {kept:>12.3f} {fresh / max(1.0, fresh):>19.0%} "
              f"{kept / interval:>14.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
