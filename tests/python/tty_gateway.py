#!/usr/bin/env python3
"""A gateway on a terminal: `pty.fork()` makes it a session leader whose
controlling terminal is a new pty. It starts
`procscope exec -- FIXTURE tty` with the terminal as stdin and stderr and a
pipe of its own as stdout (how it reads the server's report), and, with
"extra_fd", one more fd without FD_CLOEXEC (/dev/null), as a gateway that
hands a server an fd does. It reports what it is (pid, stat fields), the
fds it gave the server (number and target), the server's own report and
its exit status, as one JSON line on this script's stdout (not the
terminal).

Usage: tty_gateway.py CONFIG_JSON   (procscope, root, fixture, extra_fd)
"""

import json
import os
import pty
import subprocess
import sys
import threading


def stat():
    text = open("/proc/self/stat").read()
    f = text[text.rindex(")") + 2:].split()
    return {"ppid": int(f[1]), "pgrp": int(f[2]), "sid": int(f[3]), "tty_nr": int(f[4])}


def gateway(cfg, report):
    out_r, out_w = os.pipe()
    given = {
        "0": os.readlink("/proc/self/fd/0"),
        "1": f"pipe:[{os.fstat(out_w).st_ino}]",
        "2": os.readlink("/proc/self/fd/2"),
    }
    pass_fds = ()
    if cfg["extra_fd"]:
        extra = os.open("/dev/null", os.O_RDONLY)
        pass_fds = (extra,)
        given[str(extra)] = "/dev/null"
    cmd = [cfg["procscope"], "exec", "--root", cfg["root"], "--", cfg["fixture"], "tty"]
    server = subprocess.Popen(cmd, stdout=out_w, pass_fds=pass_fds)
    os.close(out_w)
    with os.fdopen(out_r) as f:
        lines = f.read().splitlines()
    status = server.wait()
    me = stat()
    me["pid"] = os.getpid()
    me["tty"] = os.ttyname(0)
    os.write(report, (json.dumps({"gateway": me, "given": given, "server_pid": server.pid,
                                  "server": lines, "status": status}) + "\n").encode())


def main():
    cfg = json.loads(sys.argv[1])
    report_r, report_w = os.pipe()
    pid, master = pty.fork()
    if pid == 0:
        os.close(report_r)
        try:
            gateway(cfg, report_w)
        finally:
            os._exit(0)
    os.close(report_w)
    # Drain the terminal (the server's stderr) so that nothing blocks on it.
    terminal = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            terminal.append(chunk)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    with os.fdopen(report_r) as f:
        line = f.readline()
    os.waitpid(pid, 0)
    t.join(5)
    os.close(master)
    report = json.loads(line) if line else {"error": "no report"}
    report["terminal"] = b"".join(terminal).decode(errors="replace")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
