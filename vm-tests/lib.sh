# shellcheck shell=bash
# Host-side helpers for the VM tests: install qemu/busybox/cpio, fetch Debian
# kernels, build a busybox initramfs per kernel, boot a guest command under
# qemu (TCG) and collect its exit code and output from the serial console.
#
# Source it from bash with `set -euo pipefail`; see vm-tests/run for a user.
#
# Layout (all under target/, which git ignores):
#   $VM_DIR/cache/*.deb               downloaded kernel packages
#   $VM_DIR/kernels/<package>/        the unpacked packages (dpkg -x)
#   $VM_DIR/initramfs-<package>.img   busybox initramfs for that kernel
#   $VM_DIR/tests.tar.zst, tests/     the nextest archive, and as extracted
#                                     for the guests (vm-tests/run)
#   $VM_DIR/scripts/<name>.sh         the guest script of one boot
#   $VM_DIR/logs/<name>.log           full console log of one boot
#   $VM_DIR/logs/<name>.out           the guest script's output only

VM_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$VM_TESTS_DIR/.." && pwd)
VM_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/vm
VM_DIR=$(mkdir -p "$VM_DIR" && cd "$VM_DIR" && pwd)

# Boot timeouts in seconds (TCG is slow; a hang must still end the run).
: "${VM_TIMEOUT:=300}"

vm_log() { echo "vm-tests: $*" >&2; }

# --- setup ------------------------------------------------------------------

apt_updated=
apt_update_once() {
    if [ -z "$apt_updated" ]; then
        vm_log "apt-get update"
        apt-get update -qq >&2
        apt_updated=1
    fi
}

# Install the Debian packages the VMs need if a command is missing.
vm_install_host_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    # The initramfs needs the static busybox (the `busybox` package is dynamic).
    dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
        missing+=(busybox-static)
    command -v cpio >/dev/null || missing+=(cpio)
    # tar --zstd extracts the nextest archive on the host (vm-tests/run).
    command -v zstd >/dev/null || missing+=(zstd)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_update_once
        vm_log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2
    fi
}

# kernel_package_pattern SERIES -> regex of the Debian package names for it.
# 5.10 comes from bullseye as the -unsigned package (the signed one only adds
# a signature we do not need); 7.2 from sid, where linux-image-* depends on
# linux-binary-* (vmlinuz), linux-modules-* and linux-base-* (modules.builtin).
kernel_package_pattern() {
    case "$1" in
    5.10) echo '^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$' ;;
    6.1) echo '^linux-image-6\.1\.0-[0-9]+-amd64$' ;;
    6.12) echo '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' ;;
    7.2) echo '^linux-image-7\.2\.[0-9]+\+deb[0-9]+-amd64$' ;;
    *)
        vm_log "unknown kernel series $1 (known: 5.10 6.1 6.12 7.2)"
        return 1
        ;;
    esac
}

# kernel_meta_package SERIES -> the Debian meta package that depends on the
# newest kernel of that series (none for 5.10: its meta package depends on
# the signed package; the newest -unsigned name is searched instead).
kernel_meta_package() {
    case "$1" in
    6.1) echo linux-image-amd64 ;;
    6.12) echo linux-image-6.12-amd64 ;;
    7.2) echo linux-image-amd64 ;;
    esac
}

# kernel_suite SERIES -> the Debian suite of a kernel that the host's own apt
# sources (bookworm) do not have; empty for the host's suites.
kernel_suite() {
    case "$1" in
    5.10) echo bullseye ;;
    7.2) echo sid ;;
    esac
}

# A suite the host does not list gets a private apt configuration under
# $VM_DIR/apt/SUITE (its own sources.list, lists and package cache); the
# host's sources, lists and cache stay as they are.
declare -gA apt_updated_suites=()
kernel_apt() { # kernel_apt SERIES apt-get|apt-cache ARGS...
    local suite dir
    suite=$(kernel_suite "$1")
    shift
    if [ -z "$suite" ]; then
        "$@"
        return
    fi
    dir=$VM_DIR/apt/$suite
    local tool=$1
    shift
    "$tool" -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
        -o Dir::State::Status=/dev/null "$@"
}
kernel_apt_update() { # kernel_apt_update SERIES: refresh its lists once per run
    local suite dir
    suite=$(kernel_suite "$1")
    if [ -z "$suite" ]; then
        apt_update_once
        return
    fi
    [ -z "${apt_updated_suites[$suite]:-}" ] || return 0
    dir=$VM_DIR/apt/$suite
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
        >"$dir/sources.list"
    vm_log "apt-get update ($suite, private lists in $dir)"
    kernel_apt "$1" apt-get update -qq -o APT::Sandbox::User=root >&2
    apt_updated_suites[$suite]=1
}

# resolve_kernel_package SERIES -> current package name from the apt lists:
# the meta package's dependency, else the highest matching name.
resolve_kernel_package() {
    local pattern name meta
    pattern=$(kernel_package_pattern "$1") || return 1
    meta=$(kernel_meta_package "$1")
    if [ -n "$meta" ]; then
        name=$(kernel_apt "$1" apt-cache depends "$meta" 2>/dev/null |
            awk '$1 == "Depends:" { print $2 }' | grep -E "$pattern" | head -n1) || true
    fi
    if [ -z "${name:-}" ]; then
        name=$(kernel_apt "$1" apt-cache search --names-only "${pattern%$}" 2>/dev/null |
            awk '{ print $1 }' | grep -E "$pattern" | sort -V | tail -n1) || true
    fi
    [ -n "${name:-}" ] && echo "$name"
}

# kernel_parts SERIES NAME -> NAME and the packages holding the kernel's files
# when NAME is only a dependency hub (sid: linux-binary-*, linux-modules-*,
# linux-base-* of the same version).
kernel_parts() {
    local series=$1 name=$2 version
    echo "$name"
    version=${name#linux-image-}
    kernel_apt "$series" apt-cache depends "$name" 2>/dev/null |
        awk '$1 == "Depends:" { print $2 }' |
        grep -E "^linux-(binary|modules|base)-$(sed 's/[.+]/\\&/g' <<<"$version")\$" || true
}

# all_cached NAME... : every package has a .deb in the cache.
all_cached() {
    local name
    for name in "$@"; do
        ls "$VM_DIR/cache/${name}_"*.deb >/dev/null 2>&1 || return 1
    done
}

# vm_kernel_dir SERIES -> directory of the unpacked kernel package (downloads
# and unpacks it on first use). Uses a cached .deb when apt cannot resolve one.
vm_kernel_dir() {
    local series=$1 pattern name deb version part parts=()
    pattern=$(kernel_package_pattern "$series") || return 1
    mkdir -p "$VM_DIR/cache" "$VM_DIR/kernels"
    name=$(resolve_kernel_package "$series") || true
    [ -z "$name" ] || mapfile -t parts < <(kernel_parts "$series" "$name")
    if [ -z "$name" ] || ! all_cached "${parts[@]}"; then
        # Not resolvable or not cached yet: refresh the lists once and retry.
        if [ -z "$name" ] || ! kernel_apt "$series" apt-cache policy "$name" 2>/dev/null |
            grep -q 'Candidate: [0-9]'; then
            kernel_apt_update "$series"
            name=$(resolve_kernel_package "$series") || true
            [ -z "$name" ] || mapfile -t parts < <(kernel_parts "$series" "$name")
        fi
    fi
    if [ -n "$name" ] && ! all_cached "${parts[@]}"; then
        vm_log "downloading ${parts[*]}"
        (cd "$VM_DIR/cache" && kernel_apt "$series" apt-get download -q \
            -o APT::Sandbox::User=root "${parts[@]}" >&2)
    fi
    if [ -z "$name" ]; then # offline: newest cached package of the series
        name=$(find "$VM_DIR/cache" -name '*.deb' -printf '%f\n' | sed 's/_.*//' |
            grep -E "$pattern" | sort -V | tail -n1) || true
        version=${name#linux-image-}
        parts=("$name")
        for part in linux-binary linux-modules linux-base; do
            ! all_cached "$part-$version" || parts+=("$part-$version")
        done
    fi
    [ -n "$name" ] || {
        vm_log "no Debian kernel package for $series"
        return 1
    }
    if [ ! -e "$VM_DIR/kernels/$name/.unpacked" ]; then
        rm -rf "$VM_DIR/kernels/$name"
        for part in "${parts[@]}"; do
            deb=$(ls "$VM_DIR/cache/${part}_"*.deb | sort -V | tail -n1)
            vm_log "unpacking $(basename "$deb")"
            dpkg -x "$deb" "$VM_DIR/kernels/$name"
        done
        # The package has no modules.dep (made at install time): make one.
        # busybox depmod reads .ko.xz; it takes a few seconds, once.
        local moddir
        moddir=$(kernel_moddir "$VM_DIR/kernels/$name")
        /bin/busybox depmod -b "${moddir%/lib/modules/*}" "$(basename "$moddir")"
        touch "$VM_DIR/kernels/$name/.unpacked"
    fi
    echo "$VM_DIR/kernels/$name"
}

# kernel_moddir KERNEL_DIR -> its lib/modules/<version> directory (under usr/
# in the merged-/usr packages of sid).
kernel_moddir() {
    local dir
    for dir in "$1"/lib/modules/* "$1"/usr/lib/modules/*; do
        [ -d "$dir" ] && echo "$dir" && return
    done
    vm_log "no lib/modules in $1"
    return 1
}

# kernel_image KERNEL_DIR -> its vmlinuz (boot/vmlinuz-*, or vmlinuz in the
# modules directory in sid's packages).
kernel_image() {
    local f
    for f in "$1"/boot/vmlinuz-* "$(kernel_moddir "$1")/vmlinuz"; do
        [ -f "$f" ] && echo "$f" && return
    done
    vm_log "no vmlinuz in $1"
    return 1
}

# module_load_order KMODDIR MODULE... -> module files (relative to KMODDIR) in
# an order insmod can load them: dependencies first, built-ins left out.
module_load_order() {
    local moddir=$1
    shift
    awk -v want="$*" '
        function key(path,   b) { b = path; sub(/.*\//, "", b); sub(/\.ko.*/, "", b); gsub(/-/, "_", b); return b }
        function visit(m,   n, i, d) {
            if (m in done) return
            done[m] = 1
            n = split(deps[m], d, " ")
            for (i = 1; i <= n; i++) visit(key(d[i]))
            print file[m]
        }
        FILENAME ~ /modules\.builtin$/ { builtin[key($1)] = 1; next }
        { f = $1; sub(/:$/, "", f); m = key(f); file[m] = f; $1 = ""; deps[m] = $0 }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) {
                m = w[i]; gsub(/-/, "_", m)
                if (m in builtin) continue
                if (!(m in file)) { print "missing module " m > "/dev/stderr"; exit 1 }
                visit(m)
            }
        }' "$moddir/modules.builtin" "$moddir/modules.dep"
}

# vm_build_initramfs KERNEL_DIR -> path of a gzip'd newc cpio with busybox,
# vm-tests/init and the modules for 9p over virtio and overlayfs.
vm_build_initramfs() {
    local kdir=$1 moddir img staging mod out
    moddir=$(kernel_moddir "$kdir")
    img="$VM_DIR/initramfs-$(basename "$kdir").img"
    staging=$(mktemp -d "$VM_DIR/initramfs.XXXXXX")
    mkdir -p "$staging"/{bin,dev,proc,sys,mnt,lib/modules}
    cp /bin/busybox "$staging/bin/busybox"
    cp "$VM_TESTS_DIR/init" "$staging/init"
    chmod 755 "$staging/init"
    mknod "$staging/dev/console" c 5 1 # stdio of /init before devtmpfs is up
    : >"$staging/modules.load"
    # Dependencies are added from modules.dep; on 6.1 this gives the order
    # VM.md found to work (virtio_ring, virtio, virtio_pci_*, 9pnet,
    # 9pnet_virtio, netfs, fscache, 9p, overlay). 6.12 builds virtio in and
    # has no separate fscache; 5.10 has fscache but no netfs and no
    # virtio_pci_*_dev; 7.2 builds virtio in and has netfs.
    local mods
    mods=$(module_load_order "$moddir" virtio_pci 9pnet_virtio 9p overlay)
    for mod in $mods; do
        out=$(basename "$mod")
        case "$mod" in
        *.ko.xz) out=${out%.xz} && /bin/busybox xz -dc "$moddir/$mod" >"$staging/lib/modules/$out" ;;
        *.ko.zst) out=${out%.zst} && zstd -qdc "$moddir/$mod" >"$staging/lib/modules/$out" ;;
        *.ko.gz) out=${out%.gz} && gzip -dc "$moddir/$mod" >"$staging/lib/modules/$out" ;;
        *) cp "$moddir/$mod" "$staging/lib/modules/$out" ;;
        esac
        echo "$out" >>"$staging/modules.load"
    done
    (cd "$staging" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$img.tmp"
    mv "$img.tmp" "$img"
    rm -rf "$staging"
    echo "$img"
}

# vm_prepare SERIES... : install packages, fetch kernels, build initramfs
# images. Fills VM_KERNEL[series] and VM_INITRD[series].
declare -gA VM_KERNEL=() VM_INITRD=()
vm_prepare() {
    local series kdir
    vm_install_host_packages
    for series in "$@"; do
        kdir=$(vm_kernel_dir "$series")
        VM_KERNEL[$series]=$(kernel_image "$kdir")
        VM_INITRD[$series]=$(vm_build_initramfs "$kdir")
    done
}

# --- running a guest --------------------------------------------------------

# vm_run [--systemd] [--name NAME] [--timeout SECS] SERIES GUEST_COMMAND
#
# Boots kernel SERIES (prepared by vm_prepare) with the host root as an
# overlay and runs GUEST_COMMAND (bash code, as root, cwd /) in it, then powers
# off. Default: busybox sh is PID 1 and a pure cgroup2 hierarchy is mounted at
# /sys/fs/cgroup with all controllers enabled in the root's subtree_control.
# With --systemd, the host's systemd is PID 1 (pure cgroup2) and the command
# runs as the unit kernel-command-line.service.
#
# Sets VM_RC (guest exit code; 255 when the VM hung, panicked or never ran the
# command), VM_LOG (console log), VM_OUT (the command's output only) and
# VM_SECS (wall time). Returns 0 iff the command exited 0. On a hang or panic
# the tail of the console log goes to stderr.
vm_run() {
    local mode=shell name="" timeout=$VM_TIMEOUT
    while [ $# -gt 0 ]; do
        case "$1" in
        --systemd) mode=systemd && shift ;;
        --name) name=$2 && shift 2 ;;
        --timeout) timeout=$2 && shift 2 ;;
        *) break ;;
        esac
    done
    local series=$1 command=$2
    [ -n "$name" ] || name="$series-$mode"
    [ -n "${VM_KERNEL[$series]:-}" ] || vm_prepare "$series"

    local script="$VM_DIR/scripts/$name.sh"
    mkdir -p "$VM_DIR/scripts" "$VM_DIR/logs"
    printf 'set -u\n%s\n' "$command" >"$script"
    VM_LOG="$VM_DIR/logs/$name.log"
    VM_OUT="$VM_DIR/logs/$name.out"
    VM_RC=255

    local append="console=ttyS0 panic=-1 loglevel=4 oops=panic"
    append+=" vmtest.name=$name vmtest.script=$script vmtest.mode=$mode"
    if [ "$mode" = systemd ]; then
        # fstab=no: the host's fstab is not ours. show_status=error: keep the
        # console readable; our unit writes to /dev/console itself.
        append+=" systemd.unified_cgroup_hierarchy=1 systemd.show_status=error"
        append+=" fstab=no systemd.gpt_auto=no"
        # Keep the host's /tmp visible: the repository may live under it.
        append+=" systemd.mask=tmp.mount"
        # systemd.run boots into kernel-command-line.target, which does not
        # pull in sockets.target: start D-Bus too (systemd-run --wait needs it).
        append+=" systemd.wants=dbus.socket"
        append+=" systemd.run=/vmtest/unit.sh"
        append+=" systemd.run_success_action=poweroff systemd.run_failure_action=poweroff"
    fi

    vm_log "booting $name (kernel ${VM_KERNEL[$series]#"$VM_DIR"/kernels/}, timeout ${timeout}s, log $VM_LOG)"
    local start=$SECONDS qemu_rc=0 attempt
    # KVM guests hang on these machines: TCG. The host root is shared
    # read-only; the guest's init puts a tmpfs overlay on top of it. `max`
    # offers 5-level paging, which the kernels then use: one level more for
    # every page walk TCG emulates. 30 starts of procscope took 10 s with it,
    # 7 s without (the suite as a whole gains less than a noisy host shows).
    local qemu=(timeout -k 10 "$timeout" qemu-system-x86_64
        -accel tcg -cpu max,la57=off -m 2048 -smp 2 -nographic -no-reboot
        -kernel "${VM_KERNEL[$series]}" -initrd "${VM_INITRD[$series]}"
        -append "$append"
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
        -nic none)
    for attempt in 1 2; do
        qemu_rc=0
        if [ "${VM_VERBOSE:-}" = 1 ]; then # stream the console to stderr too
            "${qemu[@]}" </dev/null 2>&1 | tee "$VM_LOG" >&2 || qemu_rc=${PIPESTATUS[0]}
        else
            "${qemu[@]}" </dev/null >"$VM_LOG" 2>&1 || qemu_rc=$?
        fi
        # Two kinds of panic are flakes of the emulation, not results: one
        # before our init ran, and an "Oops: int3" anywhere — a breakpoint of
        # the kernel's live code patching that TCG mis-emulates (seen in early
        # initcalls and in the page allocator on 6.12). Boot once more, and
        # show it; a second one counts as a failure.
        local flake=
        if ! grep -q VMTEST-BOOTED "$VM_LOG" && grep -q "Kernel panic" "$VM_LOG"; then
            flake="the kernel panicked before init ran"
        elif grep -q "Oops: int3" "$VM_LOG"; then
            flake="the kernel hit an int3 oops (a TCG flake of live code patching)"
        fi
        if [ "$attempt" = 1 ] && [ -n "$flake" ]; then
            cp "$VM_LOG" "$VM_LOG.boot-flake"
            vm_log "$name: $flake (log $VM_LOG.boot-flake); booting again:"
            tr -d '\r' <"$VM_LOG" | grep -A2 -m1 -E "Oops|BUG|Kernel panic" | sed 's/^/    | /' >&2
            continue
        fi
        break
    done
    VM_SECS=$((SECONDS - start))

    # The console uses CRLF; a kernel message may share a line with ours.
    tr -d '\r' <"$VM_LOG" | sed -n "/VMTEST-BEGIN $name\$/,/VMTEST-RESULT $name [0-9]*\$/p" |
        sed '1d;$d' >"$VM_OUT"
    local rc
    rc=$(tr -d '\r' <"$VM_LOG" | grep -oE "VMTEST-RESULT $name [0-9]+\$" | tail -n1 | awk '{ print $3 }') || true
    if [ -n "$rc" ]; then
        VM_RC=$rc
        vm_log "$name: guest command exited $VM_RC (${VM_SECS}s)"
    else
        local why="the VM ended without a result (qemu exit $qemu_rc)"
        [ "$qemu_rc" = 124 ] && why="timed out after ${timeout}s"
        vm_log "$name: FAILED: $why; console tail ($VM_LOG):"
        tr -d '\r' <"$VM_LOG" | tail -n 40 | sed 's/^/    | /' >&2
    fi
    [ "$VM_RC" = 0 ]
}
