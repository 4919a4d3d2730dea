"""Starting Ray for a study: a local Ray that listens on the loopback address only, or the
cluster named by ``--address``; a stop signal during the start ends the study like Ctrl-C.

Ray 2.60 binds its servers (GCS, raylet, object manager, every worker's RPC server, the
runtime-env agent) to the node's IP address, and to all interfaces unless that address is the
loopback one; a plain ``ray.init()`` on Linux takes the machine's outward-facing address. A
study that starts its own Ray needs no other machine to reach it, so it makes the node address
the loopback one (Ray's own switch for single-machine use, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
read when ``ray`` is first imported - so `prefer_loopback` runs before anything imports it) and
starts no dashboard. Joining a cluster (``--address``) leaves Ray's addresses as they are.

``ray.init`` replaces the process's SIGTERM handler with its own, which exits at once; a
SIGTERM during the start therefore arrives as ``SystemExit`` and is turned into the study's
ordinary stop (KeyboardInterrupt: every run closed, exit 130, ``--resume``), and the study's
handler is put back once Ray has started.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"


class StopSignal:
    """The SIGTERM handler (a batch system's stop) before the trials start: Ctrl-C's way out.
    Once Tune runs, its graceful stop takes the signal over (study/trial_callback.py).

    The KeyboardInterrupt it raises lands wherever the program is, and Python drops one raised
    inside a garbage-collector callback (seen: SQLAlchemy's weakref callback during the set-up,
    after which the study ran to the end and exited 0). So the stop is also remembered, and
    `check` raises it again between the set-up's steps."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the stop that a signal asked for, if one did."""
        if self.requested:
            raise KeyboardInterrupt


def prefer_loopback() -> None:
    """Make a local Ray take 127.0.0.1 as its node address (before ``ray`` is imported; a
    value already set in the environment is kept)."""
    os.environ.setdefault(LOOPBACK_ENV, "0")


def start_ray(address: str | None, num_cpus: int | None,
              on_sigterm: Callable[[int, Any], None], **init_kwargs: Any) -> None:
    """``ray.init`` for a study: the cluster at ``address``, else a local Ray of its own
    (never another Ray instance found on this machine) on the loopback address;
    ``init_kwargs`` go to ``ray.init`` as they are (its logging switches)."""
    import ray

    try:
        if address:
            ray.init(address=address, log_to_driver=True, **init_kwargs)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=True, **init_kwargs)
    except SystemExit as exc:  # Ray's own SIGTERM handler, installed by ray.init
        raise KeyboardInterrupt from exc
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)
    if not address:
        ip = ray.util.get_node_ip_address()
        if not ip.startswith("127."):
            print(f"warning: the local Ray listens on {ip}, reachable from other machines: "
                  f"Ray was imported before {LOOPBACK_ENV}=0 was set (set it in the "
                  "environment to keep a local study on the loopback address)",
                  file=sys.stderr, flush=True)


__all__ = ["LOOPBACK", "LOOPBACK_ENV", "StopSignal", "prefer_loopback", "start_ray"]
