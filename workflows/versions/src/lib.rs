//! One small workflow in several versions, chosen by cargo features, so
//! that the tests of `durable-host verify` replay real histories against
//! real new builds: the base (`a`, `b`, `c`), and a build that appends a
//! step, inserts one, renames one, changes a step's type, calls a step with
//! another input, or returns early.

use durable_sdk::{Context, Error};
use serde_json::{Value, json};

fn versions(ctx: &Context, _input: Value) -> Result<Value, Error> {
    #[cfg(not(feature = "retype"))]
    let a: u32 = ctx.step("a", || Ok(1))?;
    // The recorded `1` no longer decodes as a string.
    #[cfg(feature = "retype")]
    let a: u32 = ctx.step("a", || Ok("one".to_owned()))?.len() as u32;
    if cfg!(feature = "shorter") {
        return Ok(json!(a));
    }
    #[cfg(feature = "insert")]
    ctx.step("x", || Ok(0))?;
    let b_name = if cfg!(feature = "rename") { "b2" } else { "b" };
    // `b` records a fingerprint of its input.
    let b_input = if cfg!(feature = "reinput") { a + 10 } else { a };
    let b: u32 = ctx.step_with_input(b_name, &b_input, |_| Ok(a + 1))?;
    let c: u32 = ctx.step("c", || Ok(b + 1))?;
    #[cfg(feature = "append")]
    ctx.step("d", || Ok(c + 1))?;
    Ok(json!(c))
}

durable_sdk::workflow!(versions);
