//! An adopter's gateway: a supervisor with a guardian, three sessions, each
//! running a server that leaves a `setsid` helper. Usage: `lib-gateway ROOT`.
//! Prints `guardian=PID`, `instance=PATH` and `ready`, then runs until killed.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let root = std::env::args().nth(1).expect("usage: lib-gateway ROOT");
    let sup = procscope::Supervisor::builder().root(root).guardian(true).start().await.expect("start the supervisor");
    let mut keep = Vec::new();
    for i in 0..3 {
        let session = sup.session(&format!("job-{i}")).expect("a session");
        let mut cmd = procscope::Command::new("sh");
        cmd.args(["-c", "setsid sleep 3600 & exec sleep 3600"]);
        keep.push((session.spawn(&mut cmd).expect("spawn"), session));
    }
    println!("guardian={}", sup.guardian_pid().expect("a guardian"));
    let instance = sup.instance().expect("a root was given: sessions are cgroups");
    println!("instance={}", instance.path().display());
    println!("ready");
    std::future::pending::<()>().await;
}
