#!/usr/bin/env python3
"""A gateway tick written with the official Python MCP SDK (`mcp` on PyPI).

Each job runs in its own thread with its own event loop, as gateways do. Jobs end
in one of three ways:

- ok:      initialize, list tools, call a quick tool, and leave cleanly;
- cancel:  a long tool call is cancelled by asyncio.wait_for; the SDK's own
           teardown runs (it SIGTERMs and SIGKILLs the server's process group);
- abandon: the job times out and its thread walks away from its loop, so no
           teardown runs at all: the case that leaks in real gateways;
- kill:    the gateway SIGKILLs the server it started (its pid, from the
           server's `pid` tool), then leaves as after an error.

In `procscope` mode every server command is prefixed with
`procscope exec --session <job> --`, and after the tick's threads have joined the
gateway runs `procscope end` for the finished jobs. In `naive` mode the servers
are started as they are.

Usage: gateway.py CONFIG_JSON   (see tests/mcp.rs for the fields)
Prints one JSON line with the results.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def server_params(cfg, job):
    cmd = cfg["servers"][job["server"]]
    # The tag marks every process of this run (inherited by all descendants),
    # so the test can find what is left, wherever it was reparented.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PSTAG": cfg["tag"]}
    if cfg["mode"] == "procscope":
        prefix = [cfg["procscope"], "exec", "--root", cfg["root"], "--session", job["id"], "--grace", "500ms", "--"]
        full = prefix + cmd
    else:
        full = cmd
    return StdioServerParameters(command=full[0], args=full[1:], env=env)


async def run_job(cfg, job, started):
    async with stdio_client(server_params(cfg, job)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = [t.name for t in (await session.list_tools()).tools]
            if job["behavior"] == "kill":
                reply = await session.call_tool("pid", {})
                os.kill(int(reply.content[0].text), signal.SIGKILL)
                return {"outcome": "killed"}
            quick, quick_args = cfg["quick_tool"][job["server"]]
            if job["behavior"] == "ok":
                result = await session.call_tool(quick, quick_args)
                return {"outcome": "ok", "tools": len(tools), "error": bool(getattr(result, "isError", False))}
            slow, slow_args = cfg["slow_tool"][job["server"]]
            started.set()
            call = session.call_tool(slow, slow_args)
            if job["behavior"] == "cancel":
                try:
                    await asyncio.wait_for(call, cfg["cancel_after_s"])
                except asyncio.TimeoutError:
                    return {"outcome": "cancelled"}
            await call  # abandon: never returns within the tick
            return {"outcome": "finished?"}


def thread_main(cfg, job, results, started):
    try:
        results[job["id"]] = asyncio.run(run_job(cfg, job, started))
    except BaseException as e:  # noqa: BLE001 - report everything
        results[job["id"]] = {"outcome": "error", "error": repr(e)[:300]}


def main():
    cfg = json.loads(sys.argv[1])
    results = {}
    threads = []
    for job in cfg["jobs"]:
        started = threading.Event()
        t = threading.Thread(target=thread_main, args=(cfg, job, results, started), daemon=True)
        t.start()
        threads.append((job, t, started))
    deadline = time.monotonic() + cfg["join_s"]
    for _, t, _ in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    abandoned = [job["id"] for job, t, _ in threads if t.is_alive()]
    for job_id in abandoned:
        results[job_id] = {"outcome": "abandoned"}
    # What the tick saw when it walked away; abandoned threads may still write
    # to `results` once `procscope end` closes their connections.
    snapshot = dict(results)
    end = None
    if cfg["mode"] == "procscope":
        finished = [job["id"] for job in cfg["jobs"]]
        out = subprocess.run(
            [cfg["procscope"], "end", "--root", cfg["root"], "--grace", "500ms", "--missing-ok", "--json", *finished],
            capture_output=True, text=True, check=False,
        )
        end = {"status": out.returncode, "report": json.loads(out.stdout) if out.stdout else None, "stderr": out.stderr}
    print(json.dumps({"results": snapshot, "abandoned": abandoned, "end": end}), flush=True)
    if cfg.get("hold"):
        # The test looks while the gateway still runs, then lets it go.
        sys.stdin.readline()
    # Walk away from the abandoned threads without any teardown.
    os._exit(0)


if __name__ == "__main__":
    main()
