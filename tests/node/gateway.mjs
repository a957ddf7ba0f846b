// A gateway tick written with the official TypeScript MCP SDK
// (@modelcontextprotocol/sdk, StdioClientTransport), as Node gateways run it.
//
// Usage: node gateway.mjs CONFIG_JSON   (fields: see tests/gateways.rs)
//
// Every server command is `procscope exec --session <job> --grace <grace> --
// <server>` (or the server alone, with "exec": false, the control; no --grace
// with "grace": null), optionally behind a launcher ("launcher": an argv
// prefix such as `npx --package=DIR procscope-launcher`, which runs the rest)
// and a watchdog (`sh -c '"$@"; exit $?'`, which stays in between). "env"
// adds to the servers' environment.
// Jobs end in one of these ways:
//   ok       call a tool, then client.close() (stdin closes; the server exits)
//   cancel   a long call aborted by an AbortSignal, then client.close()
//   abandon  a long call left running: no teardown at all
//   idle     connected, no call pending, no teardown
//   kill     the gateway SIGKILLs the process it started
//   close    client.close() alone: the SDK's own escalation (stdin, 2 s,
//            SIGTERM, 2 s, SIGKILL) against the server as it is
// After the tick the gateway ends its jobs: `procscope end --missing-ok` for
// all of them ("end"), or SIGKILL of every process it started that still runs
// ("sigkill", as mcpo's shutdown does), or nothing ("none"). It prints one JSON
// line, then waits for a line on stdin before it exits, so that the test can
// look while the gateway is still alive.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { createInterface } from "node:readline";

const cfg = JSON.parse(process.argv[2]);
const { Client } = await import(`${cfg.sdk}/dist/esm/client/index.js`);
const { StdioClientTransport } = await import(`${cfg.sdk}/dist/esm/client/stdio.js`);

function command(job) {
  const grace = cfg.grace === null ? [] : ["--grace", cfg.grace ?? "500ms"];
  const exec = [cfg.procscope, "exec", "--root", cfg.root, "--session", job.id, ...grace, "--"];
  const server = [...cfg.server, "--kind", job.kind];
  const contained = cfg.exec === false ? server : [...(cfg.launcher ?? []), ...exec, ...server];
  const full = cfg.watchdog ? ["sh", "-c", '"$@"; exit $?', "sh", ...contained] : contained;
  return { command: full[0], args: full.slice(1) };
}

const started = [];

async function run(job) {
  const env = { PATH: process.env.PATH, PSTAG: cfg.tag, ...(cfg.env ?? {}) };
  if (cfg.owner_env) env.PROCSCOPE_OWNER = String(process.pid);
  const transport = new StdioClientTransport({ ...command(job), env, stderr: "ignore" });
  const client = new Client({ name: "procscope-test-gateway", version: "1.0.0" });
  const result = { id: job.id };
  await client.connect(transport);
  const proc = transport._process;
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
  result.pid = transport.pid;
  started.push({ pid: transport.pid, exited: () => proc.exitCode !== null || proc.signalCode !== null });
  const reply = await client.callTool({ name: "pid", arguments: {} });
  result.server_pid = Number(reply.content[0].text);
  const t = Date.now();
  switch (job.behavior) {
    case "ok":
      await client.callTool({ name: "echo", arguments: { text: "hi" } });
      await client.close();
      break;
    case "cancel":
      try {
        await client.callTool({ name: "slow", arguments: { ms: 120000 } }, undefined, {
          signal: AbortSignal.timeout(500),
        });
      } catch {
        result.cancelled = true;
      }
      await client.close();
      break;
    case "abandon":
      client.callTool({ name: "slow", arguments: { ms: 120000 } }).catch(() => {});
      result.abandoned = true;
      return result;
    case "idle":
      return result;
    case "kill":
      process.kill(transport.pid, "SIGKILL");
      break;
    case "close":
      await client.close();
      break;
  }
  result.exit = await exited;
  result.ms = Date.now() - t;
  return result;
}

const results = await Promise.all(cfg.jobs.map(run));
// The instances under the root once the tick is done, before any ending.
const instances = readdirSync(cfg.root).filter((n) => n.startsWith("i-"));
let end = null;
if (cfg.shutdown === "end") {
  const out = spawnSync(
    cfg.procscope,
    ["end", "--root", cfg.root, "--grace", "500ms", "--missing-ok", "--json", ...cfg.jobs.map((j) => j.id)],
    { encoding: "utf8" },
  );
  end = { status: out.status, report: out.stdout ? JSON.parse(out.stdout) : null, stderr: out.stderr };
} else if (cfg.shutdown === "sigkill") {
  for (const s of started) {
    if (!s.exited()) {
      try {
        process.kill(s.pid, "SIGKILL");
      } catch {}
    }
  }
}
console.log(JSON.stringify({ gateway: process.pid, results, instances, end }));
const lines = createInterface({ input: process.stdin });
for await (const _ of lines) break;
process.exit(0);
