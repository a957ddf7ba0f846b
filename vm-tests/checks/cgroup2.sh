#!/bin/bash
# Shell-mode check (every kernel): the VM has a pure cgroup2 hierarchy with
# the controllers the tests need available and enabled for the root's children.
set -euo pipefail
cg=/sys/fs/cgroup
fail() {
    echo "FAIL: $*"
    exit 1
}
! awk '$3 == "cgroup" { found = 1 } END { exit !found }' /proc/self/mounts ||
    fail "a cgroup v1 hierarchy is mounted"
echo "controllers: $(cat $cg/cgroup.controllers)"
for c in cpu io memory pids; do
    grep -qw "$c" $cg/cgroup.controllers || fail "no $c controller"
    grep -qw "$c" $cg/cgroup.subtree_control || fail "$c not in the root's subtree_control"
done
mkdir $cg/vmtest-probe
trap 'rmdir $cg/vmtest-probe' EXIT
for f in cgroup.freeze memory.max pids.max; do
    [ -e "$cg/vmtest-probe/$f" ] || fail "no $f in a child cgroup"
done
# cgroup.kill came with 5.14: present from then on, absent before (5.10 is
# the kernel that proves procscope's freeze-and-kill fallback).
release=$(uname -r)
major=${release%%.*} minor=${release#*.} && minor=${minor%%[.-]*}
if [ "$major" -gt 5 ] || { [ "$major" = 5 ] && [ "$minor" -ge 14 ]; }; then
    [ -e "$cg/vmtest-probe/cgroup.kill" ] || fail "no cgroup.kill on $release"
else
    [ ! -e "$cg/vmtest-probe/cgroup.kill" ] || fail "cgroup.kill on $release (< 5.14)"
    echo "no cgroup.kill on $release: the freeze-and-kill fallback is in use"
fi
