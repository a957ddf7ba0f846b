#!/bin/bash
# The hostile-child scenario under systemd (pure cgroup2 with nsdelegate, as
# systemd mounts it): a root gateway in a Delegate=yes service starts a victim
# and then an attacker with `procscope exec`. The attacker, a uid-0 child
# without capabilities, tries to move into the root cgroup and into the unit's
# top cgroup, to create a cgroup in the unit, and to kill the victim's
# session. Sealed (the default), every attempt fails and the victim lives; the
# control, `--no-seal`, does each and kills the victim. Nothing is left behind.
set -u
ROOTDIR=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$ROOTDIR/target/release/procscope
FIXTURE=$ROOTDIR/target/release/examples/procscope-fixture
# shellcheck source=../guest/scenario.bash
source "$ROOTDIR/vm-tests/guest/scenario.bash"

mkdir -p /vmtest
cat > /vmtest/hostile-unit.sh <<UNIT
set -u
unit_cg=/sys/fs/cgroup\$(sed -n 's/^0:://p' /proc/self/cgroup)
"$BIN" exec --session victim -- sleep 1000 &
victim_exec=\$!
victim=
for _ in \$(seq 100); do
    victim=\$(find /sys/fs/cgroup -type d -name s-victim | head -1)
    [ -n "\$victim" ] && [ -n "\$(find "\$victim" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
    sleep 0.1
done
echo "unit=\$unit_cg"
echo "victim=\$victim"
attack() {
    "$BIN" exec --session attacker "\$@" -- "$FIXTURE" self \\
        try-write /sys/fs/cgroup/cgroup.procs 0 \\
        try-write "\$unit_cg/cgroup.procs" 0 \\
        try-mkdir "\$unit_cg/evil" \\
        try-write "\$victim/cgroup.kill" 1
}
echo "== sealed"
attack
echo "victim-after-sealed=\$(kill -0 \$victim_exec 2>/dev/null && echo alive || echo dead)"
echo "== unsealed"
attack --no-seal
wait \$victim_exec
echo "victim-exec-exit=\$?"
rmdir "\$unit_cg/evil" 2>/dev/null
echo "left=\$(find /sys/fs/cgroup -type d \( -name 'i-*' -o -name 's-*' \) | wc -l)"
UNIT

out=$(systemd-run --quiet --wait --pipe --collect -p Delegate=yes --unit=vmtest-hostile bash /vmtest/hostile-unit.sh 2>&1)
echo "$out"
sealed=$(sed -n '/^== sealed/,/^== unsealed/p' <<<"$out")
unsealed=$(sed -n '/^== unsealed/,$p' <<<"$out")
results() { grep -E '^try-' <<<"$1" | sed 's/.*=//' | tr '\n' ' '; }
check "the victim's session was found" grep -q '^victim=/' <<<"$out"
check "sealed: the child sees its session as its cgroup root" grep -qx 'cgroup=/' <<<"$sealed"
check "sealed: every attempt fails with EROFS ($(results "$sealed"))" test "$(results "$sealed")" = "E30 E30 E30 E30 "
check "sealed: the victim lives" grep -qx 'victim-after-sealed=alive' <<<"$out"
check "control (--no-seal): every attempt works ($(results "$unsealed"))" test "$(results "$unsealed")" = "ok ok ok ok "
check "control: the victim's session was killed" grep -qx 'victim-exec-exit=137' <<<"$out"
check "nothing left in the tree" grep -qx 'left=0' <<<"$out"
check "the unit is gone" test ! -e /sys/fs/cgroup/system.slice/vmtest-hostile.service
finish
