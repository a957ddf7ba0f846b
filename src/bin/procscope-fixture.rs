//! Test and demo fixture: a process that misbehaves on request. See
//! `procscope::fixture` for the actions.

fn main() {
    procscope::fixture::main(std::env::args().skip(1).collect())
}
