//! seccomp filters.
//!
//! - [`install_signal_filter`]: every sealed child installs it before it
//!   drops its capabilities. It refuses `fcntl(fd, F_SETSIG, SIGKILL)` and
//!   `SIGSTOP` with `EPERM`. `F_SETOWN` records the caller's uids, and the
//!   kernel then signals the owner if the caller's effective uid was 0
//!   (fs/fcntl.c `sigio_perm`), whatever the owner's uids: without the filter,
//!   a uid-0 child without a capability could SIGKILL or SIGSTOP the guardian
//!   through a pipe made readable. Every other signal it could pick this way
//!   the guardian blocks.
//! - `deny_with_enosys` (tests only): a filter that makes one system call fail
//!   with `ENOSYS`, as on a kernel that lacks it: how procscope's tests show
//!   the refusal below the kernel floor on any kernel.
//!
//! # References
//! - seccomp(2), prctl(2) `PR_SET_SECCOMP`; Documentation/userspace-api/seccomp_filter.rst
//! - fcntl(2) `F_SETOWN`, `F_SETSIG`; fs/fcntl.c `sigio_perm`

use std::ptr;

/// `AUDIT_ARCH_*` of this architecture (`<linux/audit.h>`) and of its 32-bit
/// compat ABI, and the numbers of `fcntl` there: natively (and for x32, with
/// `__X32_SYSCALL_BIT`), and `fcntl`/`fcntl64` of the compat ABI (the same
/// numbers on i386 and arm).
#[cfg(all(target_arch = "x86_64", target_endian = "little"))]
mod arch {
    pub(super) const NATIVE: u32 = 0xC000_003E;
    pub(super) const FCNTL: u32 = 72;
    pub(super) const FCNTL_X32: u32 = 72 | 0x4000_0000;
    pub(super) const COMPAT: u32 = 0x4000_0003;
}
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
mod arch {
    pub(super) const NATIVE: u32 = 0xC000_00B7;
    pub(super) const FCNTL: u32 = 25;
    /// aarch64 has no second native ABI: the same number again.
    pub(super) const FCNTL_X32: u32 = 25;
    pub(super) const COMPAT: u32 = 0x4000_0028;
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const COMPAT_FCNTL: u32 = 55;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const COMPAT_FCNTL64: u32 = 221;

/// Offsets in `struct seccomp_data`: `nr` (int), `arch` (u32), then the
/// instruction pointer and `args[6]` (u64 each). On a little-endian machine
/// the low half of an argument comes first: `fcntl` reads its command as an
/// `unsigned int` and `F_SETSIG`'s argument as an `int`, so the high halves
/// do not matter.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const OFFSET_ARG1_LOW: u32 = 16 + 8;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const OFFSET_ARG2_LOW: u32 = 16 + 2 * 8;

/// `F_SETSIG` (`<linux/fcntl.h>`; the libc crate does not export it).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const F_SETSIG: u32 = 10;

const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt, jf, k }
}

/// The sealed child's filter, built at compile time: nothing is prepared or
/// allocated in the child. A jump's targets count from the next instruction.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
static SIGNAL_FILTER: [libc::sock_filter; 16] = [
    /* 0 */ stmt(LD_W_ABS, OFFSET_ARCH),
    /* 1 */ jump(JEQ, arch::NATIVE, 0, 3), // native: 2, else 5
    /* 2 */ stmt(LD_W_ABS, OFFSET_NR),
    /* 3 */ jump(JEQ, arch::FCNTL, 5, 0), // fcntl: 9, else 4
    /* 4 */ jump(JEQ, arch::FCNTL_X32, 4, 10), // fcntl: 9, else allow
    /* 5 */ jump(JEQ, arch::COMPAT, 0, 9), // compat: 6, else (unknown) allow
    /* 6 */ stmt(LD_W_ABS, OFFSET_NR),
    /* 7 */ jump(JEQ, COMPAT_FCNTL, 1, 0), // fcntl: 9, else 8
    /* 8 */ jump(JEQ, COMPAT_FCNTL64, 0, 6), // fcntl64: 9, else allow
    /* 9 */ stmt(LD_W_ABS, OFFSET_ARG1_LOW),
    /* 10 */ jump(JEQ, F_SETSIG, 0, 4), // F_SETSIG: 11, else allow
    /* 11 */ stmt(LD_W_ABS, OFFSET_ARG2_LOW),
    /* 12 */ jump(JEQ, libc::SIGKILL as u32, 1, 0), // refuse, else 13
    /* 13 */ jump(JEQ, libc::SIGSTOP as u32, 0, 1), // refuse, else allow
    /* 14 */ stmt(RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    /* 15 */ stmt(RET, libc::SECCOMP_RET_ALLOW),
];

/// No filter where procscope does not know the system call numbers: a
/// sealed child there can still pick SIGKILL or SIGSTOP for its SIGIO.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
static SIGNAL_FILTER: [libc::sock_filter; 0] = [];

/// Installs [`SIGNAL_FILTER`] for the calling thread and everything it
/// executes: `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)`. Needs
/// `CAP_SYS_ADMIN` in the caller's user namespace (a sealed child has it,
/// in the host's namespace or its own) or `no_new_privs`. Cannot be undone.
///
/// Async-signal-safe: one raw system call on a static program and a
/// `sock_fprog` on the stack; no allocation, no lock.
///
/// # Errors
/// The errno of `seccomp(2)`.
pub(super) fn install_signal_filter() -> Result<(), i32> {
    if SIGNAL_FILTER.is_empty() {
        return Ok(());
    }
    let prog = libc::sock_fprog { len: SIGNAL_FILTER.len() as u16, filter: SIGNAL_FILTER.as_ptr().cast_mut() };
    // SAFETY: `prog` points at a static program that the kernel only reads
    // (and copies); integer arguments otherwise.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, ptr::addr_of!(prog)) };
    if r < 0 {
        // SAFETY: reading errno of the current thread (in a CLONE_VM child,
        // the TLS of the suspended parent thread, which no one else reads
        // meanwhile).
        return Err(unsafe { *libc::__errno_location() });
    }
    Ok(())
}

thread_local! {
    /// Whether this (gateway) thread carries [`SIGNAL_FILTER`] itself.
    static THREAD_FILTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Puts [`SIGNAL_FILTER`] on the calling gateway thread, once, where that
/// thread holds `CAP_SYS_ADMIN` (so `no_new_privs` is not needed): children
/// cloned from it inherit the filter, and a sealed child need not attach one
/// of its own, which costs tens of microseconds per spawn (the kernel checks
/// the program and prepares its per-syscall cache each time). The filter
/// refuses nothing the gateway does: only `fcntl(F_SETSIG)` with SIGKILL or
/// SIGSTOP. Returns whether the thread carries it.
///
/// Everything started from such a thread inherits it, unsealed children and
/// other programs included.
pub(crate) fn filter_spawning_thread() -> bool {
    THREAD_FILTERED.with(|done| {
        if done.get() {
            return true;
        }
        if SIGNAL_FILTER.is_empty() {
            return false;
        }
        let filtered = super::has_sys_admin() && install_signal_filter().is_ok();
        done.set(filtered);
        filtered
    })
}

/// Installs, for the calling thread and everything it starts or executes
/// from now on, a filter under which system call `nr` fails with `ENOSYS`.
/// Sets `no_new_privs` first (required without `CAP_SYS_ADMIN`). Cannot be
/// undone.
///
/// # Errors
/// The errno of `prctl`.
#[cfg(feature = "test-hooks")]
pub(crate) fn deny_with_enosys(nr: libc::c_long) -> std::io::Result<()> {
    use std::io;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    let nr = u32::try_from(nr).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let filter = [
        stmt(LD_W_ABS, OFFSET_ARCH),
        // Another ABI: allowed (skip to the last instruction).
        jump(JEQ, AUDIT_ARCH, 0, 3),
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JEQ, nr, 0, 1),
        stmt(RET, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(RET, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `filter`, both alive for the call; the kernel
    // copies the program.
    if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, ptr::addr_of!(prog)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// The filter, installed on a thread of its own (filters are per
    /// thread): F_SETSIG SIGKILL and SIGSTOP are refused, other signals and
    /// other commands are not.
    #[test]
    fn refuses_sigkill_and_sigstop_as_the_sigio_signal() {
        std::thread::spawn(|| {
            // SAFETY (the calls below): plain fcntl on our own pipe; pipe2
            // fills a valid array.
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            let setsig = |sig: i32| {
                let r = unsafe { libc::fcntl(fds[0], F_SETSIG as i32, sig) };
                if r < 0 { std::io::Error::last_os_error().raw_os_error() } else { None }
            };
            assert_eq!(setsig(libc::SIGKILL), None, "before the filter");
            #[cfg(target_arch = "x86_64")]
            let compat = fcntl64_i386(fds[0], F_SETSIG, libc::SIGKILL as u32);
            let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            assert_eq!(nnp, 0);
            install_signal_filter().unwrap();
            assert_eq!(setsig(libc::SIGKILL), Some(libc::EPERM));
            assert_eq!(setsig(libc::SIGSTOP), Some(libc::EPERM));
            // Only the low 32 bits count for the kernel, and for the filter.
            let high = unsafe { libc::syscall(libc::SYS_fcntl, fds[0], F_SETSIG, 0x1_0000_0009u64) };
            assert_eq!(high, -1);
            assert_eq!(setsig(libc::SIGUSR1), None);
            // The same through the i386 ABI (`int 0x80`), where the kernel has it.
            #[cfg(target_arch = "x86_64")]
            {
                assert!(compat == 0 || compat == -libc::ENOSYS, "fcntl64 through int 0x80: {compat}");
                if compat == 0 {
                    assert_eq!(fcntl64_i386(fds[0], F_SETSIG, libc::SIGSTOP as u32), -libc::EPERM);
                    assert_eq!(fcntl64_i386(fds[0], F_SETSIG, libc::SIGUSR1 as u32), 0);
                }
            }
            assert_eq!(setsig(0), None);
            assert_eq!(unsafe { libc::fcntl(fds[0], libc::F_SETOWN, std::process::id() as i32) }, 0);
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
        })
        .join()
        .unwrap();
    }

    /// `fcntl64(fd, cmd, arg)` through the i386 ABI: `int 0x80` with the
    /// compat number 221. Returns the result, `-errno` on failure.
    #[cfg(target_arch = "x86_64")]
    fn fcntl64_i386(fd: i32, cmd: u32, arg: u32) -> i32 {
        let mut ret: u64 = COMPAT_FCNTL64 as u64;
        // SAFETY: the i386 system call convention (eax, ebx, ecx, edx); rbx
        // is LLVM's, so it is swapped in and out around the call.
        unsafe {
            core::arch::asm!(
                "xchg rbx, {fd}",
                "int 0x80",
                "xchg rbx, {fd}",
                fd = inout(reg) fd as u64 => _,
                inout("rax") ret,
                in("rcx") cmd as u64,
                in("rdx") arg as u64,
            );
        }
        ret as u32 as i32
    }
}
