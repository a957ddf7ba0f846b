#!/usr/bin/env node
// A launcher as npm packages of native programs ship one: it runs its
// arguments as a child with the same stdio, passes SIGTERM, SIGINT and SIGHUP
// on, and exits as the child did. tests/gateways.rs runs
// `npx --package=<this directory> procscope-launcher procscope exec …`, so
// that npx, the shell npm runs bins through and this launcher all stand
// between the gateway and `procscope exec`.
import { spawn } from "node:child_process";
import { constants } from "node:os";

const [command, ...args] = process.argv.slice(2);
const child = spawn(command, args, { stdio: "inherit" });
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) {
  process.on(signal, () => child.kill(signal));
}
child.on("exit", (code, signal) => process.exit(code ?? 128 + constants.signals[signal]));
