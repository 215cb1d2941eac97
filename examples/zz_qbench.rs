use mproc::{Process, Queue};
use std::time::Instant;
fn prod((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}
fn main() {
    for _ in 0..3 {
        let n = 1_000_000u64;
        let q = Queue::new().unwrap();
        let t = Instant::now();
        let mut p = Process::spawn(prod, (q.clone(), n)).unwrap();
        let mut s = 0u64;
        for _ in 0..n {
            s += q.get().unwrap();
        }
        let dt = t.elapsed();
        p.join().unwrap();
        println!("{:.0} msg/s (sum {s})", n as f64 / dt.as_secs_f64());
    }
}
