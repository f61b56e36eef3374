"""The process runtime's per-container shim (what conmon is to Podman).

Run as ``python -I -S .../shim.py EXIT_FILE [--cgroup PROCS_FILE]... --
COMMAND...`` by ``process.py`` as the leader of a new session. It starts the command
inside the container's cgroups (the child joins them between fork and exec; the shim
stays out, so its own memory is not charged to the container) and in the shim's
process group (so the runtime's SIGKILL of the group reaches everything), forwards
SIGTERM/SIGINT/SIGHUP to the command alone (as an engine signals a container's PID 1),
waits, and writes the exit status (Kubernetes' form: ``128 + signal`` for a signalled
command) to EXIT_FILE atomically. Because the status lives in a file rather than in a
``waitpid`` of the agent, an agent that restarts still learns how its adopted
containers ended. A command that cannot be executed is reported the same way, exit
code 127 (not found) or 126 (not executable), with the error text on the file's
second line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def _join(procs_files: list[str]) -> None:
    # The shim imports only the standard library
    # (it runs as ``python -I -S shim.py``: fast to start, blind to the pod's env).
    # Runs in the forked child before exec: only the command is in the container's
    # cgroup, so the shim's own memory never counts against the container's limit.
    for f in procs_files:
        with open(f, "w") as fh:
            fh.write(str(os.getpid()))


def _write(path: str, code: int, message: str = "") -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{code}\n{message}\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    exit_file, opts, command = argv[0], argv[1:sep], argv[sep + 1:]
    cgroups = [opts[i + 1] for i, o in enumerate(opts) if o == "--cgroup"]
    try:
        child = subprocess.Popen(command, preexec_fn=(lambda: _join(cgroups)) if cgroups
                                 else None)
    except subprocess.SubprocessError as e:  # _join failed in the child
        _write(exit_file, 126, f"cannot join the container's cgroup: {e}")
        return 126
    except FileNotFoundError as e:
        _write(exit_file, 127, f"exec: {e.filename or command[0]}: executable file not found")
        return 127
    except OSError as e:
        _write(exit_file, 126, f"exec: {command[0]}: {e.strerror}")
        return 126

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    rc = child.wait()
    code = rc if rc >= 0 else 128 - rc
    _write(exit_file, code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
