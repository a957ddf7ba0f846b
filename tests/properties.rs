//! Property tests: the parsers never panic on arbitrary input, and values that
//! are printed and parsed again come back the same.

use std::path::Path;

use procscope::cgroup::hierarchy::Hierarchy;
use procscope::cgroup::limits::{MemoryEvents, parse_bytes, parse_count, parse_cpu_max, parse_duration};
use procscope::names::validate_session_id;
use procscope::testing::parse_start_time;
use procscope::testing::{parse_mountinfo, parse_proc_cgroup_unified};
use procscope::{Events, Owner};
use proptest::prelude::*;

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Cases per property: 2,000, or `PROCSCOPE_PROPTEST_CASES` (the VMs run
/// fewer: the parsers do not depend on the kernel, and the host runs all).
fn cases() -> u32 {
    match std::env::var("PROCSCOPE_PROPTEST_CASES") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("PROCSCOPE_PROPTEST_CASES={v:?} is not a number")),
        Err(_) => 2000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let s = lossy(&bytes);
        let _ = parse_mountinfo(&s);
        let _ = parse_proc_cgroup_unified(&s);
        let _ = Hierarchy::from_texts(&s, &s, Path::new("x"));
        let _ = validate_session_id(&s);
        let _ = parse_bytes("memory.max", &s);
        let _ = parse_count("pids.max", &s);
        let _ = parse_cpu_max(&s);
        let _ = parse_duration("grace", &s);
        let _ = Events::parse(&s);
        let _ = MemoryEvents::parse(&s);
        let _ = parse_start_time(&s);
        let _ = Owner::from_instance_name(&s);
    }

    #[test]
    fn mountinfo_like_lines_never_panic(
        fields in proptest::collection::vec("[ -~]{0,12}", 0..14),
        sep in prop_oneof![Just(" - "), Just(" "), Just("-")],
    ) {
        let (a, b) = fields.split_at(fields.len() / 2);
        let line = format!("{}{sep}{}", a.join(" "), b.join(" "));
        let _ = parse_mountinfo(&line);
        let _ = parse_proc_cgroup_unified(&line.replace(' ', ":"));
    }

    /// A valid id is accepted; anything with a character outside the set, too
    /// long, or with a leading dot is refused.
    #[test]
    fn session_id_validator(id in "[A-Za-z0-9_.-]{1,64}") {
        let ok = validate_session_id(&id).is_ok();
        let kernel_like = id.split_once('.').is_some_and(|(p, _)| {
            ["cgroup", "cpu", "cpuset", "io", "memory", "pids", "rdma", "hugetlb", "misc", "irq",
             "net_cls", "net_prio", "perf_event", "freezer", "devices", "blkio"].contains(&p)
        });
        prop_assert_eq!(ok, !id.starts_with('.') && !kernel_like);
    }

    #[test]
    fn session_id_rejects_bad_characters(prefix in "[a-z]{0,10}", bad in "[^A-Za-z0-9_.-]", suffix in "[a-z]{0,10}") {
        let id = format!("{prefix}{bad}{suffix}");
        prop_assert!(validate_session_id(&id).is_err());
    }

    #[test]
    fn bytes_round_trip(n in 1u64..(1 << 23), unit in 0usize..5) {
        let suffix = ["", "K", "M", "G", "T"][unit];
        let shift = [0, 10, 20, 30, 40][unit];
        prop_assert_eq!(parse_bytes("memory.max", &format!("{n}{suffix}")).unwrap(), n << shift);
    }

    #[test]
    fn counts_and_cpu_round_trip(n in 1u64..1_000_000, quota in 1000u64..10_000_000, period in 1000u64..=1_000_000) {
        prop_assert_eq!(parse_count("pids.max", &n.to_string()).unwrap(), n);
        let cpu = parse_cpu_max(&format!("{quota} {period}")).unwrap();
        prop_assert_eq!((cpu.quota_us, cpu.period_us), (quota, period));
        prop_assert_eq!(parse_cpu_max(&cpu.to_string()).unwrap(), cpu);
    }

    #[test]
    fn durations_round_trip(ms in 0u64..600_000) {
        let d = parse_duration("grace", &format!("{ms}ms")).unwrap();
        prop_assert_eq!(d.as_millis() as u64, ms);
    }

    #[test]
    fn instance_names_round_trip(pid in 1i32..i32::MAX, start in any::<u64>()) {
        let owner = Owner { pid, start };
        prop_assert_eq!(Owner::from_instance_name(&owner.instance_name()), Some(owner));
    }

    /// The v2 line of /proc/<pid>/cgroup comes back whatever the path holds.
    #[test]
    fn proc_cgroup_round_trip(path in "/[ -~]{0,60}") {
        let text = format!("12:pids:/x\n0::{path}\n");
        prop_assert_eq!(parse_proc_cgroup_unified(&text), Some(path));
    }
}
