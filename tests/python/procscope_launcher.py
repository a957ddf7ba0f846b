"""A launcher as PyPI packages of native programs ship one: it runs its
arguments as a child with the same stdio, passes SIGTERM, SIGINT and SIGHUP
on, and exits as the child did. tests/gateways.rs packs it into a wheel
(launcher_wheel.py) and runs `uvx --from <wheel> procscope-launcher
procscope exec …`, so that uv and this launcher stand between the gateway
and `procscope exec`."""

import signal
import subprocess
import sys


def main():
    child = subprocess.Popen(sys.argv[1:])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda n, _frame: child.send_signal(n))
    code = child.wait()
    sys.exit(code if code >= 0 else 128 - code)
