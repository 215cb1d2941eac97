//! What Python cannot do: a process dies holding a lock, and the others carry on.
//!
//! A child takes the lock and is SIGKILLed while holding it; the parent, already waiting,
//! gets the lock and is told it was abandoned. Prints how long the handover took after the
//! kill (the kernel releases the dead process's locks as it exits), and what an uncontended
//! acquire + release costs.
//!
//! Run it with `cargo run --release --example abandoned_lock`.

use std::time::{Duration, Instant};

use mproc::{Event, Lock, Process};

const LIMIT: Duration = Duration::from_secs(30);

/// Takes the lock, says so, and waits to be killed (gives up after `LIMIT`).
fn hold((lock, held, never): (Lock, Event, Event)) {
    let _g = lock.acquire().expect("lock");
    held.set();
    never.wait_timeout(LIMIT);
}

fn main() -> mproc::Result<()> {
    let lock = Lock::new()?;
    let mut handovers = Vec::new();
    for _ in 0..20 {
        let (held, never) = (Event::new()?, Event::new()?);
        let mut child = Process::spawn(hold, (lock.clone(), held.clone(), never))?;
        assert!(held.wait_timeout(LIMIT), "the child never took the lock");
        let killed = Instant::now();
        child.kill()?;
        let guard = lock.acquire_timeout(LIMIT)?;
        handovers.push(killed.elapsed());
        assert!(guard.was_abandoned());
        drop(guard);
        let _ = child.join(); // reports the SIGKILL
    }
    handovers.sort();
    println!(
        "abandoned lock handed over after SIGKILL: median {:?}, max {:?} ({} runs)",
        handovers[handovers.len() / 2],
        handovers[handovers.len() - 1],
        handovers.len()
    );

    let n = 1_000_000;
    let start = Instant::now();
    for _ in 0..n {
        drop(lock.acquire()?);
    }
    println!("uncontended acquire + release: {:?}", start.elapsed() / n);
    Ok(())
}
