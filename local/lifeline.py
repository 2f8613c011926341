"""Run a command that dies with the process that started it (Linux PR_SET_PDEATHSIG).

    python -m iot_telemetry.local.lifeline PARENT_PID COMMAND [ARG...]

Real mode's children run in sessions of their own, so that one can be killed with its
gunicorn workers; without a lifeline a killed `iot-telemetry local` would leave them
running and holding the ports. The death signal survives exec, and setting it here rather
than in a preexec_fn keeps the fork of a threaded parent free of Python code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m iot_telemetry.local.lifeline PARENT_PID COMMAND [ARG...]",
              file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[1:]
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        print(f"lifeline: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 1
    os.execvp(command[0], command)  # noqa: S606 (the command line of a known child)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
