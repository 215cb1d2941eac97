//! A task's panic under `panic = "abort"` still comes back with its message and location.
//!
//! `.ci/run` builds this example a second time with `CARGO_PROFILE_RELEASE_PANIC=abort` and
//! runs it: the worker's panic hook writes the report to the parent before the runtime
//! aborts. It runs in the ordinary (unwinding) build too, where the panic is caught.
//! Exits with 1 if a panic comes back without its message or location.

use std::time::Duration;

fn explode(x: u64) -> u64 {
    if x > 2 {
        panic!("too big: {x}");
    }
    x
}

fn explode_at_5(x: u64) -> u64 {
    if x == 5 {
        panic!("too big: 3");
    }
    x
}

fn check(what: &str, err: &mproc::Error) -> bool {
    let Some(p) = err.remote_panic() else {
        eprintln!("{what}: expected a panic, got: {err}");
        return false;
    };
    let ok =
        p.message() == "too big: 3" && p.location().is_some_and(|l| l.contains("panic_abort.rs"));
    println!("{what}: {err}");
    if !ok {
        eprintln!("{what}: the panic lost its message or location: {p:?}");
    }
    ok
}

fn main() -> Result<(), mproc::Error> {
    let mode = if cfg!(panic = "abort") {
        "abort"
    } else {
        "unwind"
    };
    println!("panic = {mode:?}");
    let limit = Duration::from_secs(30);
    let err = mproc::Process::spawn(explode, 3)?
        .join_timeout(limit)
        .expect_err("the task panics");
    let mut ok = check("Process", &err);
    // A pool task alone in its chunk; under "abort" its worker dies after the report, and the
    // pool carries on with a new one. The next task may already have been written to the
    // dying worker (it answered, so it looked idle): `max_retries` re-runs it on the new one.
    let pool = mproc::Pool::builder().processes(1).max_retries(1).build()?;
    match pool.apply_async(explode, 3).get_timeout(limit) {
        Ok(v) => {
            eprintln!("Pool: expected a panic, got {v}");
            ok = false;
        }
        Err(e) => ok &= check("Pool", &e),
    }
    assert_eq!(pool.apply_async(explode, 2).get_timeout(limit)?, 2);
    // In the middle of a chunk: item 5 of a chunk of 10 panics (under `abort`, its worker
    // dies after reporting it); it alone fails, the others keep or get their results.
    let pool = mproc::Pool::builder().processes(2).chunksize(10).build()?;
    let mut it = pool.imap(explode_at_5, 0..10u64);
    for x in 0..10u64 {
        match it.next_timeout(limit) {
            Some(Ok(v)) if x != 5 && v == x => {}
            Some(Err(e)) if x == 5 => ok &= check("Pool chunk, item 5", &e),
            other => {
                eprintln!("Pool chunk, item {x}: unexpected {other:?}");
                ok = false;
            }
        }
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
