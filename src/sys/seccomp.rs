//! A seccomp filter that makes one system call fail with `ENOSYS`, as on a
//! kernel that lacks it: how procscope's tests show the refusal below the
//! kernel floor on any kernel. Only the `test-hooks` feature reaches it.
//!
//! # References
//! - seccomp(2), prctl(2) `PR_SET_SECCOMP`; Documentation/userspace-api/seccomp_filter.rst

use std::io;

/// `AUDIT_ARCH_*` of this architecture (`<linux/audit.h>`): a system call
/// made through another ABI (x32, 32-bit) has other numbers and is allowed.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets in `struct seccomp_data`: `nr` (int), then `arch` (u32).
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt, jf, k }
}

/// Installs, for the calling thread and everything it starts or executes
/// from now on, a filter under which system call `nr` fails with `ENOSYS`.
/// Sets `no_new_privs` first (required without `CAP_SYS_ADMIN`). Cannot be
/// undone.
///
/// # Errors
/// The errno of `prctl`.
pub(crate) fn deny_with_enosys(nr: libc::c_long) -> io::Result<()> {
    let nr = u32::try_from(nr).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let filter = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, OFFSET_ARCH),
        // Another ABI: allowed (skip to the last instruction).
        jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, AUDIT_ARCH, 0, 3),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, OFFSET_NR),
        jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, nr, 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `filter`, both alive for the call; the kernel
    // copies the program.
    if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, std::ptr::addr_of!(prog)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
