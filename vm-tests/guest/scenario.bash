# Helpers for the systemd scenarios (sourced; not a scenario itself).
# ok/bad/check count results as VMCHECK lines; finish prints the summary and
# sets the exit code.
pass=0 fail=0
ok() { echo "VMCHECK PASS $*"; pass=$((pass + 1)); }
bad() { echo "VMCHECK FAIL $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
wait_for() { # wait_for SECONDS COMMAND...: poll a condition, bounded
    local end=$((SECONDS + $1)); shift
    while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.2; done
    return 1
}
finish() {
    echo "VMCHECK SUMMARY $pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}
