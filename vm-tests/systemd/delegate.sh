#!/bin/bash
# systemd-mode scenario (run by vm-tests/run as kernel-command-line.service
# with systemd 252 as PID 1 and a pure cgroup2 hierarchy).
#
# Placeholder for the gateway scenario: checks that a transient unit with
# Delegate=yes runs and that systemd marks its cgroup as delegated with the
# trusted.delegate or user.delegate xattr. Exit 0 = pass.
#
# The host root is visible read-only (plus a tmpfs overlay), so binaries under
# the repository's target/ directory can be run from here by their host paths.
set -euo pipefail

# read_xattr PATH NAME -> the value of extended attribute NAME, or fail.
read_xattr() {
    if command -v getfattr >/dev/null; then
        getfattr --only-values -n "$2" "$1" 2>/dev/null
    elif command -v python3 >/dev/null; then
        python3 -c 'import os, sys; sys.stdout.write(os.getxattr(sys.argv[1], sys.argv[2]).decode())' "$1" "$2" 2>/dev/null
    else
        echo "delegate.sh: neither getfattr nor python3 to read xattrs" >&2
        return 2
    fi
}

# Inside the transient unit: show our cgroup and check its delegation marks.
in_unit() {
    cat /proc/self/cgroup
    local cg
    cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
    ls -la "$cg"
    local found=""
    for name in trusted.delegate user.delegate; do
        if value=$(read_xattr "$cg" "$name"); then
            echo "$name=$value on $cg"
            found=1
        fi
    done
    [ -n "$found" ] || {
        echo "FAIL: no trusted.delegate or user.delegate xattr on $cg"
        return 1
    }
}

if [ "${1:-}" = in-unit ]; then
    in_unit
    exit
fi

echo "systemd $(systemctl --version | head -n1 | awk '{ print $2 }'), cgroup of this script: $(cat /proc/self/cgroup)"
# --pipe connects the unit's stdout/stderr to ours; --wait returns its status.
systemd-run --quiet --pipe --wait --collect --unit=vmtest-delegate \
    -p Delegate=yes -- /bin/bash "$(realpath "$0")" in-unit
echo "delegate: ok"
