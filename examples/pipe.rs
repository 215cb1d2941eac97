//! Two processes talking through a `Pipe` (Python's `a, b = Pipe(); a.send(x); b.recv()`).
//!
//! Run it with `cargo run --release --example pipe`.

use mproc::{Connection, Process};

/// Answers every number with its square until the other end hangs up.
fn squarer(conn: Connection<u64>) -> usize {
    let mut served = 0;
    while let Ok(x) = conn.recv() {
        conn.send(&(x * x)).expect("send");
        served += 1;
    }
    served
}

fn main() -> mproc::Result<()> {
    let (ours, theirs) = mproc::pipe::<u64>()?;
    let mut child = Process::spawn(squarer, theirs)?;
    for x in 1..=5 {
        ours.send(&x)?;
        println!("{x} squared is {}", ours.recv()?);
    }
    drop(ours); // hang up: the child's recv fails and it returns
    println!("the child answered {} requests", child.join()?);
    Ok(())
}
