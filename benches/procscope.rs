//! `scripts/bench`: procscope against the alternatives, in one run.
fn main() {
    println!("benchmarks: not written yet");
}
