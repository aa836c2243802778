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
from raycity.errors import Interrupted, brief
from raycity.run import RunError

LOG_FILE = "ray.log"

__all__ = ["Interrupted", "RayLogs", "StopSignals", "connect_ray", "probe_storage"]


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
        self.route_raylet_messages()

    def route_raylet_messages(self) -> None:
        """The raylet's error messages ("A worker died or was killed while executing a task by
        an unexpected system error. To troubleshoot…", a paragraph per kill) reach the driver
        through a thread of `ray.init` that prints them on stdout whatever `log_to_driver` says.
        The recorder says the same in one line ("[fold k] its worker stopped; restarting
        it…"), so they go to ray.log with Ray's other records (and to the console with
        --ray-logs). Ray's printer is private; if it moves, its messages are printed as before."""
        import ray._private.worker as ray_worker

        printer = getattr(ray_worker, "print_to_stdstream", None)
        if printer is None or getattr(printer, "raycity_route", False):
            return
        logger = self.logger

        def route(data: dict, ignore_prefix: bool) -> None:
            if data.get("pid") == "raylet":
                for line in data.get("lines", []):
                    logger.warning("(raylet) %s", line)
            else:
                printer(data, ignore_prefix)

        route.raycity_route = True  # type: ignore[attr-defined]
        ray_worker.print_to_stdstream = route

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
    """Join `--address` (else `$RAY_ADDRESS`, Ray's own way to name a cluster) or start a local
    Ray of our own — never one found running on this machine (another run's, or a `ray start`
    head's), which Ray would otherwise join and then refuse `--num-cpus` for. True when this call
    started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        flag = f"--address {address}" if opts.address else f"RAY_ADDRESS={address}"
        check_reachable(address, flag)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise RunError(f"{flag}: cannot connect to a Ray cluster ({brief(err)}); start one "
                           f"with `ray start --head`, or omit it for a local Ray") from err
        return True
    context = ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=opts.dashboard,
                       dashboard_host=opts.dashboard_host, log_to_driver=False,
                       configure_logging=False)
    if opts.dashboard and context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}\n  it asks for a login token: "
              f"`ray get-auth-token` prints it (it is kept in ~/.ray/auth_token)", flush=True)
    return True


def check_reachable(address: str, flag: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable GCS for minutes; a TCP probe answers at once. `flag` names
    where the address came from (`--address …` or `RAY_ADDRESS=…`)."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://").rsplit(":", 1)
    if len(host_port) != 2 or not host_port[1].isdigit():
        raise RunError(f"{flag}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host_port[0], int(host_port[1])), timeout=timeout_s).close()
    except OSError as err:
        raise RunError(f"{flag}: cannot connect to a Ray cluster ({brief(err)}); start one "
                       f"with `ray start --head`, or omit it for a local Ray") from err


def probe_storage(uri: str, timeout_s: float = 10.0) -> None:
    """--storage-path must take a file before trials launch: an s3:// bucket without network
    or credentials would otherwise stall the run. A small file is created, read back and
    deleted, in a thread given `timeout_s` (a client may retry for minutes)."""
    import threading

    outcome: dict[str, BaseException | bool] = {}

    def attempt() -> None:
        try:
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(uri)
            path = path.rstrip("/")
            probe = f"{path}/.raycity-probe-{os.getpid()}"
            fs.create_dir(path, recursive=True)
            with fs.open_output_stream(probe) as stream:
                stream.write(b"raycity")
            with fs.open_input_stream(probe) as stream:
                if stream.read() != b"raycity":
                    raise OSError("what was written did not read back")
            fs.delete_file(probe)
            outcome["ok"] = True
        except BaseException as err:  # reported below, in the driver's thread
            outcome["error"] = err

    thread = threading.Thread(target=attempt, name="raycity-storage-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "error" in outcome:
        raise RunError(f"--storage-path {uri}: cannot write there ({brief(outcome['error'])})")
    if not outcome.get("ok"):
        raise RunError(f"--storage-path {uri}: no answer in {timeout_s:g} s (network, "
                       f"credentials or endpoint?); check it, or omit the flag to keep the "
                       f"run's files under --output")


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) as a request to stop. Outside Tune's loop
    the first raises `Interrupted` at once; inside it the recorder forwards it to Tune (SIGUSR1,
    its graceful stop) from Tune's own loop, and `Interrupted` is raised once Tune has saved its
    state. A second signal (what `timeout -k`, Kubernetes and impatient users send) is absorbed
    with one line: raised inside Ray's core worker it would end in its traceback. A third ends
    the process at once, with the same line and exit code; what was written stays consistent
    and `--resume` continues it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, say: Any = None, end: Any = None) -> None:
        self.signum: int | None = None
        self.received = 0
        self.in_tune = False
        self.forwarded = False
        self._saved: dict[int, Any] = {}
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._end = end or os._exit

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
        self.received += 1
        if self.received == 1:
            self.signum = signum
            if not self.in_tune:
                raise Interrupted(signum)
            return
        name = signal.Signals(signum).name
        if self.received == 2:
            self._say(f"{name}: already stopping, saving what --resume needs (send it once more "
                      f"to end at once)")
            return
        self._say(f"interrupted ({name}) again: ending now; the tables are consistent up to "
                  f"the last epoch; continue with --resume")
        self._end(128 + (self.signum or signum))

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

