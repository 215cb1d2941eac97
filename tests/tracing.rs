//! With the `tracing` feature, the pool reports worker starts, exits (with their cause),
//! retries and timeouts as `tracing` events. Run: `cargo test --features tracing --test tracing`.
#![cfg(feature = "tracing")]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::LIMIT;
use mproc::Pool;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn crash_or_hang(x: u32) -> u32 {
    match x {
        1 => std::process::abort(),
        2 => loop {
            std::thread::sleep(Duration::from_millis(10));
        },
        _ => x,
    }
}

#[test]
fn the_pool_reports_its_workers_lives() {
    let out = Captured::default();
    let sink = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .max_retries(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut r = pool.apply_async(crash_or_hang, 1);
    assert!(r.get_timeout(LIMIT).unwrap_err().is_worker_lost());
    let mut r = pool.apply_async(crash_or_hang, 2);
    assert!(r.get_timeout(LIMIT).unwrap_err().is_timeout());
    pool.terminate();
    let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "worker started",
        "worker exited",
        "SIGABRT",
        "re-running a task lost to a dead worker",
        "task timed out",
    ] {
        assert!(log.contains(expected), "no {expected:?} in:\n{log}");
    }
}
