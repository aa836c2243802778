"""The driver's session with Ray: connecting, where Ray's own log lines go, and stopping on a
signal without losing anything.

Ray's warnings (the token-authentication notice, Tune's "operation took X s" hints) interleave
with raycity's one line per epoch and say nothing a user must act on; they go to the run's
`ray.log` (and to the console with `--ray-logs`). Ctrl-C and SIGTERM (what Slurm, Kubernetes and
`timeout` send) stop a run the way Tune stops on SIGUSR1: trials end, the experiment state is
saved, the tables stay as they were after the last epoch, and `--resume` continues.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raycity.config import RunOptions
from raycity.errors import brief
from raycity.tune.rundir import RunError

LOG_FILE = "ray.log"


class Interrupted(BaseException):
    """The run was stopped by a signal; tables are consistent and `--resume` continues it.

    A BaseException, like KeyboardInterrupt: raised from a signal handler anywhere, even inside
    library code that catches Exception, it must reach the CLI."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RayLogs:
    """Ray's Python log records, held in memory until the run directory exists, then written to
    its ray.log; also to stderr when asked."""

    def __init__(self, console: bool = False) -> None:
        import ray  # noqa: F401 — importing Ray installs its handlers; ours replace them after

        self.logger = logging.getLogger("ray")
        self.buffer = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
        self.active: list[logging.Handler] = [self.buffer]
        if console:
            self.active.append(logging.StreamHandler(sys.stderr))
        self.saved = (list(self.logger.handlers), self.logger.propagate, self.logger.level)
        self.apply()

    def apply(self) -> None:
        """(Again) after `ray.init`, which resets the "ray" logger's handlers."""
        self.logger.handlers = list(self.active)
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)

    def to_file(self, run_dir: Path) -> None:
        handler = logging.FileHandler(run_dir / LOG_FILE)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.buffer.setTarget(handler)
        self.buffer.flush()
        self.active = [h for h in self.active if h is not self.buffer] + [handler]
        self.apply()

    def close(self) -> None:
        for handler in [self.buffer, *self.active]:
            handler.close()
        self.logger.handlers, self.logger.propagate, level = self.saved
        self.logger.setLevel(level)


def connect_ray(opts: RunOptions) -> bool:
    """Join `--address` or start a local Ray; True when this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if opts.address:
        check_reachable(opts.address)
        try:
            ray.init(address=opts.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise RunError(f"--address {opts.address}: cannot connect to a Ray cluster ({brief(err)}); "
                           f"start one with `ray start --head` or omit --address") from err
        return True
    context = ray.init(num_cpus=opts.num_cpus, include_dashboard=opts.dashboard,
                       dashboard_host=opts.dashboard_host, log_to_driver=False,
                       configure_logging=False)
    if opts.dashboard and context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}\n  it asks for a login token: "
              f"`ray get-auth-token` prints it (it is kept in ~/.ray/auth_token)", flush=True)
    return True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable GCS for minutes; a TCP probe answers at once."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://").rsplit(":", 1)
    if len(host_port) != 2 or not host_port[1].isdigit():
        raise RunError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host_port[0], int(host_port[1])), timeout=timeout_s).close()
    except OSError as err:
        raise RunError(f"--address {address}: cannot connect to a Ray cluster ({brief(err)}); start one "
                       f"with `ray start --head` or omit --address") from err


class StopSignals:
    """SIGINT and SIGTERM as a request to stop. Outside Tune's loop they raise `Interrupted` at
    once; inside it the recorder forwards them to Tune (SIGUSR1, its graceful stop) from Tune's
    own loop, and `Interrupted` is raised once Tune has saved its state. A second signal does
    not wait."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_tune = False
        self.forwarded = False
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        """(Again) after `ray.init`, which sets a SIGTERM handler of its own."""
        for sig in self.SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._saved.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._saved.items():
            signal.signal(sig, previous)
        self._saved.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if not self.in_tune or not first:
            raise Interrupted(self.signum)

    def forward_to_tune(self) -> None:
        """Called from Tune's loop: a pending stop becomes Tune's graceful stop (once)."""
        if self.signum is not None and not self.forwarded:
            self.forwarded = True
            os.kill(os.getpid(), signal.SIGUSR1)

    @contextlib.contextmanager
    def tune_loop(self) -> Iterator[None]:
        # Tune's own SIGINT handler would swallow the first Ctrl-C into a stop we cannot see.
        before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self.in_tune = True
        try:
            yield
        finally:
            self.in_tune = False
            if before is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before
        if self.signum is not None:
            raise Interrupted(self.signum)

