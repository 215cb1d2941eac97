//! Producers and a consumer talking through a `Queue` (Python's
//! `q = Queue(); Process(target=producer, args=(q, i)).start(); q.get()`).
//!
//! Run it with `cargo run --release --example queue`.

use mproc::{ErrorKind, Process, Queue};

/// Python: `def producer(q, id): for i in range(5): q.put((id, i * i))`
fn producer((q, id): (Queue<(u32, u64)>, u32)) {
    for i in 0..5 {
        q.put((id, i * i)).expect("put");
    }
}

/// Takes values until the queue is closed and empty, then returns how many it saw.
fn consumer(q: Queue<(u32, u64)>) -> usize {
    let mut seen = 0;
    loop {
        match q.get() {
            Ok((id, square)) => {
                println!("consumer got {square} from producer {id}");
                seen += 1;
            }
            Err(e) if e.kind() == ErrorKind::Closed => return seen,
            Err(e) => panic!("{e}"),
        }
    }
}

fn main() -> mproc::Result<()> {
    let q = Queue::new()?;
    let mut c = Process::spawn(consumer, q.clone())?;
    let mut producers = (0..3)
        .map(|id| Process::spawn(producer, (q.clone(), id)))
        .collect::<mproc::Result<Vec<_>>>()?;
    for p in &mut producers {
        p.join()?;
    }
    q.close(); // no more puts: the consumer drains the rest, then sees `Closed`
    let seen = c.join()?;
    println!("the consumer saw {seen} values from 3 producers");
    assert_eq!(seen, 15);
    Ok(())
}
