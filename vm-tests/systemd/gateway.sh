#!/bin/bash
# The systemd scenario, run inside a VM booted with systemd as PID 1 and a pure
# cgroup2 hierarchy: the example gateway as a unit with Delegate=yes.
#
# Checks: the gateway moves itself into supervisor/; sessions appear beside it
# with their limits; `procscope doctor` in a delegated unit says delegated;
# restart, SIGKILL of the main process, and stop each leave no process of the
# old sessions; nothing is written outside the unit's subtree or to the
# delegated top cgroup's own attributes.
set -u
# The repository, from where this script lies (vm-tests/systemd/).
ROOTDIR=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOTDIR/target/release/procscope
GATEWAY=$ROOTDIR/target/release/examples/gateway
UNIT_CG=/sys/fs/cgroup/system.slice/gw.service
# shellcheck source=../guest/scenario.bash
source "$ROOTDIR/vm-tests/guest/scenario.bash"
sessions() { ls -d "$UNIT_CG"/i-*/s-* 2>/dev/null; }
session_pids() { for s in $(sessions); do find "$s" -name cgroup.procs -exec cat {} +; done | tr "\n" " "; }
alive() { for p in "$@"; do [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null && return 0; done; return 1; }

mkdir -p /vmtest
cat > /vmtest/gw.json <<JSON
{
  "ticks": 0, "interval_ms": 100, "parallelism": null, "grace_ms": 500, "guardian": true,
  "servers": [
    {"name": "slow", "command": "$BIN", "args": ["demo-server", "--kind", "daemonizer"],
     "memory_max": "128M", "pids_max": 32, "jobs": 2,
     "tool": "slow", "arguments": {"ms": 600000}, "timeout_ms": 600000}
  ]
}
JSON
cat > /etc/systemd/system/gw.service <<UNIT
[Service]
ExecStart=$GATEWAY /vmtest/gw.json
Delegate=yes
KillMode=control-group
UNIT
systemctl daemon-reload
top_memory_before=$(cat /sys/fs/cgroup/system.slice/memory.max 2>/dev/null || echo none)

systemctl start gw.service
check "sessions appear in the unit" wait_for 60 sessions
main=$(systemctl show -P MainPID gw.service)
check "the gateway moved itself into supervisor/" grep -qx "0::/system.slice/gw.service/supervisor" /proc/$main/cgroup
first=$(sessions | head -1)
check "session limits: pids.max" grep -qx 32 "$first/pids.max"
check "session limits: memory.max" grep -qx $((128 << 20)) "$first/memory.max"
check "the unit top holds no process of its own" test -z "$(cat $UNIT_CG/cgroup.procs)"
check "the top cgroup's own memory.max is untouched" grep -qx max $UNIT_CG/memory.max
check "nothing made outside the unit (no /sys/fs/cgroup/procscope)" test ! -e /sys/fs/cgroup/procscope
doctor=$(systemd-run --wait --pipe --quiet -p Delegate=yes "$BIN" doctor --json 2>&1)
echo "doctor in a delegated unit: $doctor"
check "doctor in a delegated unit says delegated" grep -q '"delegated":true' <<<"$doctor"
check "doctor: clone3 into cgroup" grep -q '"spawn_mechanism":"clone3_into_cgroup"' <<<"$doctor"

old=$(session_pids)
echo "old session pids: $old"
systemctl restart gw.service
check "restart leaves no process of the old sessions" wait_for 10 bash -c "! { $(declare -f alive); alive $old; }"
check "sessions appear after the restart" wait_for 60 sessions

old=$(session_pids)
guardian=$(pgrep -f "procscope __guardian" | head -1)
systemctl kill -s KILL --kill-whom=main gw.service
start=$SECONDS
check "SIGKILL of the main process leaves no session process" wait_for 10 bash -c "! { $(declare -f alive); alive $old; }"
echo "session processes gone $((SECONDS - start))s after SIGKILL (guardian $guardian)"
systemctl reset-failed gw.service 2>/dev/null
systemctl start gw.service
check "sessions appear after the crash" wait_for 60 sessions
check "the crashed instance was recovered" test "$(ls -d $UNIT_CG/i-* | wc -l)" -eq 1

old=$(session_pids)
systemctl stop gw.service
check "stop leaves no process" bash -c "! { $(declare -f alive); alive $old; }"
check "stop removes the unit cgroup" test ! -e $UNIT_CG
check "system.slice memory.max unchanged" test "$(cat /sys/fs/cgroup/system.slice/memory.max 2>/dev/null || echo none)" = "$top_memory_before"
finish
