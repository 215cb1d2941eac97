//! Ctrl-C aborts a running `map` at once, as `KeyboardInterrupt` does in Python.
//!
//! Workers lead their own process groups, so a terminal's Ctrl-C (SIGINT to the foreground
//! group) reaches this program only, never its workers. Without a handler the program dies,
//! and its workers die with it. With one, the program decides: here the handler calls
//! `pool.terminate()`, the running `map` returns at once with `ErrorKind::Closed` ("the pool was
//! terminated"), and `main` goes on (to print, save what it has, exit).
//!
//! Run it with `cargo run --release --example ctrl_c -- --wait` and press Ctrl-C. Without
//! `--wait` (as CI runs it) it sends itself SIGINT as soon as the first task has started.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Event, Pool};

/// Twenty of these on two workers take 20 s.
fn slow_square((started, x): (Event, u64)) -> u64 {
    started.set();
    std::thread::sleep(Duration::from_secs(2));
    x * x
}

fn main() -> mproc::Result<()> {
    let pool = Arc::new(Pool::new(2)?);

    // The recipe: the handler terminates the pool. A `Weak` lets the pool drop as usual; once it
    // is gone, Ctrl-C ends the program as it would without a handler.
    let weak: Weak<Pool> = Arc::downgrade(&pool);
    ctrlc::set_handler(move || match weak.upgrade() {
        Some(pool) => pool.terminate(),
        None => std::process::exit(130),
    })
    .expect("a Ctrl-C handler can be installed");

    let started = Event::new()?;
    if !std::env::args().any(|a| a == "--wait") {
        interrupt_once_started(started.clone());
    } else {
        println!("running 20 two-second tasks on 2 workers: press Ctrl-C");
    }
    let items: Vec<(Event, u64)> = (1..=20).map(|x| (started.clone(), x)).collect();
    let t = Instant::now();
    match pool.map(slow_square, items) {
        Ok(squares) => println!("finished in {:?}: {squares:?}", t.elapsed()),
        Err(e) if e.kind() == ErrorKind::Closed => {
            println!("interrupted after {:?}: {e}", t.elapsed());
            // Far less than the 20 s the map would have taken.
            assert!(t.elapsed() < Duration::from_secs(15));
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// What pressing Ctrl-C does, once a task has started: SIGINT to this process.
fn interrupt_once_started(started: Event) {
    std::thread::spawn(move || {
        if started.wait_timeout(Duration::from_secs(60)) {
            // SAFETY: `kill` takes two integers; the pid is this process's own.
            unsafe { libc::kill(std::process::id() as libc::pid_t, libc::SIGINT) };
        }
    });
}
