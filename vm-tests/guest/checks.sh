#!/bin/bash
# Guest side: runs check scripts one after the other and reports each on the
# console as `VMTEST-CHECK <name> <exit code>` (name = file name without .sh).
# Exits 1 if any check failed.
set -uo pipefail
failed=0
for script in "$@"; do
    name=$(basename "$script" .sh)
    echo "== check $name"
    bash "$script"
    rc=$?
    echo "VMTEST-CHECK $name $rc"
    [ "$rc" = 0 ] || failed=1
done
exit "$failed"
