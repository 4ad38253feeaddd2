//! A WASI command component (it exports `wasi:cli/run`, not `run`): the
//! host must refuse it with a clear message.

fn main() {
    println!("I am a command, not a workflow");
}
