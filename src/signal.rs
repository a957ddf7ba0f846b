//! [`Signal`]: the signals procscope sends, as a type of its own.

use std::fmt;

/// A signal to send through a pidfd ([`ContainedChild::signal`],
/// [`PidFd::send_signal`]).
///
/// The named POSIX signals Linux has, with the constant names of the `rustix`
/// crate (`Signal::TERM`, `Signal::KILL`, …). procscope's own type, so that a
/// major release of a dependency never changes procscope's API.
/// Real-time signals are not offered.
///
/// [`ContainedChild::signal`]: crate::ContainedChild::signal
/// [`PidFd::send_signal`]: crate::PidFd::send_signal
///
/// # Examples
/// ```
/// use procscope::Signal;
///
/// assert_eq!(Signal::TERM.as_raw(), 15);
/// assert_eq!(Signal::from_raw(9), Some(Signal::KILL));
/// assert_eq!(Signal::from_raw(0), None);
/// assert_eq!(Signal::TERM.to_string(), "SIGTERM");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signal(rustix::process::Signal);

macro_rules! signals {
    ($($(#[$cfg:meta])* $name:ident = $rustix:ident, $linux:literal, $doc:literal;)*) => {
        impl Signal {
            $(
                $(#[$cfg])*
                #[doc = $doc]
                pub const $name: Signal = Signal(rustix::process::Signal::$rustix);
            )*

            /// The signal's name, e.g. `"SIGTERM"`.
            pub fn name(self) -> &'static str {
                match self {
                    $($(#[$cfg])* Signal::$name => $linux,)*
                    _ => "SIG?",
                }
            }
        }
    };
}

signals! {
    HUP = HUP, "SIGHUP", "`SIGHUP`: hangup.";
    INT = INT, "SIGINT", "`SIGINT`: interrupt, as from Ctrl-C.";
    QUIT = QUIT, "SIGQUIT", "`SIGQUIT`: quit, with a core dump.";
    ILL = ILL, "SIGILL", "`SIGILL`: illegal instruction.";
    TRAP = TRAP, "SIGTRAP", "`SIGTRAP`: trace trap.";
    ABORT = ABORT, "SIGABRT", "`SIGABRT`: abort.";
    BUS = BUS, "SIGBUS", "`SIGBUS`: bus error.";
    FPE = FPE, "SIGFPE", "`SIGFPE`: arithmetic error.";
    KILL = KILL, "SIGKILL", "`SIGKILL`: kill, which cannot be caught or ignored.";
    USR1 = USR1, "SIGUSR1", "`SIGUSR1`.";
    SEGV = SEGV, "SIGSEGV", "`SIGSEGV`: invalid memory reference.";
    USR2 = USR2, "SIGUSR2", "`SIGUSR2`.";
    PIPE = PIPE, "SIGPIPE", "`SIGPIPE`: write to a pipe with no reader.";
    ALARM = ALARM, "SIGALRM", "`SIGALRM`: timer.";
    TERM = TERM, "SIGTERM", "`SIGTERM`: the polite request to exit.";
    #[cfg(not(any(target_arch = "mips", target_arch = "mips32r6", target_arch = "mips64", target_arch = "mips64r6", target_arch = "sparc", target_arch = "sparc64")))]
    STKFLT = STKFLT, "SIGSTKFLT", "`SIGSTKFLT`: stack fault (unused by Linux itself).";
    CHILD = CHILD, "SIGCHLD", "`SIGCHLD`: a child stopped or exited.";
    CONT = CONT, "SIGCONT", "`SIGCONT`: continue if stopped.";
    STOP = STOP, "SIGSTOP", "`SIGSTOP`: stop, which cannot be caught or ignored.";
    TSTP = TSTP, "SIGTSTP", "`SIGTSTP`: stop from the terminal.";
    TTIN = TTIN, "SIGTTIN", "`SIGTTIN`: background read from the terminal.";
    TTOU = TTOU, "SIGTTOU", "`SIGTTOU`: background write to the terminal.";
    URG = URG, "SIGURG", "`SIGURG`: urgent data on a socket.";
    XCPU = XCPU, "SIGXCPU", "`SIGXCPU`: CPU time limit exceeded.";
    XFSZ = XFSZ, "SIGXFSZ", "`SIGXFSZ`: file size limit exceeded.";
    VTALARM = VTALARM, "SIGVTALRM", "`SIGVTALRM`: virtual timer.";
    PROF = PROF, "SIGPROF", "`SIGPROF`: profiling timer.";
    WINCH = WINCH, "SIGWINCH", "`SIGWINCH`: the terminal's size changed.";
    IO = IO, "SIGIO", "`SIGIO`: I/O is possible.";
    POWER = POWER, "SIGPWR", "`SIGPWR`: power failure.";
    SYS = SYS, "SIGSYS", "`SIGSYS`: bad system call.";
}

impl Signal {
    /// The signal with this number, if it is one of the named signals.
    pub fn from_raw(sig: i32) -> Option<Signal> {
        rustix::process::Signal::from_named_raw(sig).map(Signal)
    }

    /// The signal's number, e.g. 15 for [`Signal::TERM`].
    pub fn as_raw(self) -> i32 {
        self.0.as_raw()
    }

    pub(crate) fn to_rustix(self) -> rustix::process::Signal {
        self.0
    }
}

impl std::hash::Hash for Signal {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_raw().hash(state);
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;

    #[test]
    fn every_named_signal_round_trips_through_its_number() {
        for raw in 1..=31 {
            let sig = Signal::from_raw(raw).unwrap_or_else(|| panic!("signal {raw} has no name"));
            assert_eq!(sig.as_raw(), raw);
            assert_ne!(sig.name(), "SIG?", "signal {raw}");
        }
        // Linux's own names (signal(7)), not the constants' spelling.
        let linux = [
            (1, "SIGHUP"),
            (2, "SIGINT"),
            (3, "SIGQUIT"),
            (4, "SIGILL"),
            (5, "SIGTRAP"),
            (6, "SIGABRT"),
            (7, "SIGBUS"),
            (8, "SIGFPE"),
            (9, "SIGKILL"),
            (10, "SIGUSR1"),
            (11, "SIGSEGV"),
            (12, "SIGUSR2"),
            (13, "SIGPIPE"),
            (14, "SIGALRM"),
            (15, "SIGTERM"),
            (16, "SIGSTKFLT"),
            (17, "SIGCHLD"),
            (18, "SIGCONT"),
            (19, "SIGSTOP"),
            (20, "SIGTSTP"),
            (21, "SIGTTIN"),
            (22, "SIGTTOU"),
            (23, "SIGURG"),
            (24, "SIGXCPU"),
            (25, "SIGXFSZ"),
            (26, "SIGVTALRM"),
            (27, "SIGPROF"),
            (28, "SIGWINCH"),
            (29, "SIGIO"),
            (30, "SIGPWR"),
            (31, "SIGSYS"),
        ];
        for (raw, name) in linux {
            assert_eq!(Signal::from_raw(raw).map(Signal::name), Some(name), "signal {raw}");
        }
        assert_eq!(Signal::from_raw(0), None);
        assert_eq!(Signal::from_raw(-1), None);
        assert_eq!(Signal::from_raw(libc::SIGRTMIN()), None);
    }
}
