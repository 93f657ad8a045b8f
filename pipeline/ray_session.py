"""Starting (or joining) Ray for a pipeline job: the one place that calls ``ray.init``.

Local runs (no address, or a loopback address) put Ray in single-node mode so it binds to
127.0.0.1 only; ``address`` ("auto", "ray://head:10001", "head:6379") joins an existing cluster.
Worker logs stay in Ray's session folder (failures reach the manifest instead).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional

#: Ray's switch for single-node mode: with it "0", Ray binds to 127.0.0.1 instead of the
#: machine's routable address. Set for local runs (and loopback --address), never for a real
#: cluster; it only takes effect if set before Ray is first imported in the process.
RAY_SINGLE_NODE_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
#: Ray's token-authentication mode, set for local runs: "token" keeps Ray's default (a token
#: generated on first use, ``~/.ray/auth_token``) while saying so explicitly, which is what stops
#: Ray 2.6x printing its "Token authentication is enabled..." WARNING on every local run.
RAY_AUTH_ENV = ("RAY_AUTH_MODE", "token")
#: Environment of Ray workers: quiet native logs, one BLAS/OpenMP thread per task.
WORKER_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}


def is_loopback(address: str) -> bool:
    """True for Ray addresses on this machine's loopback (127.x, localhost, ::1)."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def prepare_environment(address: Optional[str]) -> None:
    """Set single-node mode and explicit token authentication for local runs; call before the
    first ``import ray``."""
    if address is None or is_loopback(address):
        os.environ.setdefault(*RAY_SINGLE_NODE_ENV)
        os.environ.setdefault(*RAY_AUTH_ENV)


@contextmanager
def ray_session(workers: Optional[int], address: Optional[str]) -> Iterator[Any]:
    """Yield the ``ray`` module with Ray running; shut down on exit only what this started."""
    prepare_environment(address)
    import ray

    started = False
    if not ray.is_initialized():
        init_args: dict[str, Any] = dict(
            logging_level=logging.WARNING,
            runtime_env={"env_vars": WORKER_ENV},
            configure_logging=True,
            log_to_driver=False,
        )
        if address:
            ray.init(address=address, **init_args)
        else:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, **init_args)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def cluster_cpus(address: str) -> int:
    """CPUs of the Ray cluster at ``address`` (``ray.cluster_resources``), at least 1."""
    with ray_session(None, address) as ray:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
