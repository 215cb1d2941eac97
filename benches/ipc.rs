//! What a `Queue` and a `Pipe` cost, each figure beside a floor and Python measured in the
//! same run.
//!
//! Sections (one producer process -> the parent as consumer, unless noted):
//! 1. small-message throughput, msg/s: a `u64` and a 16-byte struct through a `Connection`
//!    (`mproc::pipe`) and through a `Queue`; floor: a forked child writing the same 8 or 16
//!    bytes per message with one `write(2)` each on a raw `UnixStream::pair`, the parent
//!    reading them through a 64 KiB buffer.
//! 2. 1 MiB-message throughput, msg/s: a 1 MiB `serde_bytes::ByteBuf` through a `Connection`
//!    and a `Queue` (`put` takes the value, so each put includes a 1 MiB clone); floor: the
//!    same bytes written whole per message on a raw socketpair, read into a reused buffer.
//! 3. round-trip latency, one `u64` there and back, one in flight: `Connection` ping-pong with
//!    an echoing child, and two `Queue`s (to and from the child); floor: an 8-byte ping-pong
//!    on a raw socketpair with a forked echo child.
//! 4. Python: `python3 bench/ipc_baseline.py --quick` (run last, under a timeout; JSON lines
//!    parsed by hand): `multiprocessing.Queue` and `Pipe` doing the same (an `int` and an
//!    `(int, int)` tuple for the small rows, `bytes` of 1 MiB with `send_bytes` for the pipe's
//!    large row). If python3 or the script is missing or fails, a `python: skipped` line says
//!    why.
//!
//! Method: no harness dependency. Throughput clocks run from the first message received to
//! the last, so process start-up is not counted. Within each section the series are
//! interleaved: every round runs each series once, in a rotated order, so that noise on a
//! shared machine hits every series alike; a figure is the median of the rounds, `spread` is
//! slowest/fastest (throughput) or p90/median over all round trips (latency).
//!
//! `ratio` is mproc's figure over the floor's or Python's: above 1 is better for rates, below
//! 1 for times.
//!
//! Run with `cargo bench --bench ipc` (about 30 s once built, Python included).

#[allow(dead_code)] // the fork+waitpid floor of the other benchmarks is not used here
mod common;
use common::{BoxResult, reap};

use std::hint::black_box;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproc::{Connection, Process, Queue, pipe};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Messages per throughput run, round trips per latency run, rounds per section.
const SMALL_N: usize = 100_000;
const LARGE_N: usize = 200;
const RTT_ITERS: usize = 2_000;
const ROUNDS: usize = 5;
const MIB: usize = 1 << 20;
/// Every blocking receive waits at most this long: a hang is an error, not a stuck bench.
const LIMIT: Duration = Duration::from_secs(60);
const PY_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/ipc_baseline.py");
const PY_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole run aborts past this, so that a hang is reported rather than waited on.
const WATCHDOG: Duration = Duration::from_secs(240);

/// The 16-byte struct of the small rows.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Pair {
    a: u64,
    b: u64,
}

/// A message of each kind, the same every time.
trait Sample: Serialize + DeserializeOwned + Clone + 'static {
    fn sample() -> Self;
}

impl Sample for u64 {
    fn sample() -> u64 {
        0x0123_4567_89ab_cdef
    }
}

impl Sample for Pair {
    fn sample() -> Pair {
        Pair {
            a: u64::MAX / 3,
            b: u64::MAX / 5,
        }
    }
}

impl Sample for ByteBuf {
    fn sample() -> ByteBuf {
        ByteBuf::from(vec![0x5a; MIB])
    }
}

// ---- the children ----

fn pipe_produce<T: Sample>((conn, n): (Connection<T>, usize)) -> bool {
    let v = T::sample();
    (0..n).all(|_| conn.send(&v).is_ok())
}

fn queue_produce<T: Sample>((q, n): (Queue<T>, usize)) -> bool {
    let v = T::sample();
    (0..n).all(|_| q.put(v.clone()).is_ok())
}

fn pipe_echo(conn: Connection<u64>) -> u64 {
    let mut n = 0;
    while let Ok(x) = conn.recv_timeout(LIMIT) {
        if conn.send(&(x + 1)).is_err() {
            break;
        }
        n += 1;
    }
    n
}

fn queue_echo((inq, outq): (Queue<u64>, Queue<u64>)) -> u64 {
    let mut n = 0;
    while let Ok(x) = inq.get_timeout(LIMIT) {
        if x == u64::MAX || outq.put(x + 1).is_err() {
            break;
        }
        n += 1;
    }
    n
}

// ---- throughput ----

/// Receives `n` messages with `recv` and returns messages per second from the first to the
/// last.
fn timed(n: usize, mut recv: impl FnMut() -> BoxResult<()>) -> BoxResult<f64> {
    recv()?;
    let start = Instant::now();
    for _ in 1..n {
        recv()?;
    }
    Ok((n - 1) as f64 / start.elapsed().as_secs_f64())
}

fn pipe_rate<T: Sample>(n: usize) -> BoxResult<f64> {
    let (ours, theirs) = pipe::<T>()?;
    let mut p = Process::spawn(pipe_produce::<T>, (theirs, n))?;
    let rate = timed(n, || {
        black_box(ours.recv_timeout(LIMIT)?);
        Ok(())
    })?;
    if !p.join_timeout(LIMIT)? {
        return Err("the pipe producer failed".into());
    }
    Ok(rate)
}

fn queue_rate<T: Sample>(n: usize) -> BoxResult<f64> {
    let q = Queue::<T>::new()?;
    let mut p = Process::spawn(queue_produce::<T>, (q.clone(), n))?;
    let rate = timed(n, || {
        black_box(q.get_timeout(LIMIT)?);
        Ok(())
    })?;
    if !p.join_timeout(LIMIT)? {
        return Err("the queue producer failed".into());
    }
    Ok(rate)
}

/// Forks a child that runs `body` on its end of a fresh socketpair, then `_exit`s.
///
/// `body` must make only async-signal-safe calls (raw `read`/`write` on the fd): the bench
/// process has threads (mproc's).
fn fork_with_socket(body: fn(libc::c_int, &[u8]), data: &[u8]) -> BoxResult<(UnixStream, i32)> {
    let (ours, theirs) = UnixStream::pair()?;
    let (ours_fd, theirs_fd) = (ours.as_raw_fd(), theirs.as_raw_fd());
    // SAFETY: the child closes the parent's end, runs `body` (raw read/write only, on memory
    // allocated before the fork) and `_exit`s, all async-signal-safe, so forking this
    // multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid == 0 {
        // SAFETY: in the child: `ours_fd` is its copy of the parent's end; `_exit` ends it
        // without running the parent's destructors.
        unsafe {
            libc::close(ours_fd);
            body(theirs_fd, data);
            libc::_exit(0);
        }
    }
    drop(theirs);
    Ok((ours, pid))
}

/// Writes all of `data` with `write(2)`; false on error.
fn write_all_raw(fd: libc::c_int, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: `data` is a valid slice for the call; write is async-signal-safe.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

/// The floor producer: `data` is `[count: u64][message]`; writes the message `count` times.
fn raw_produce(fd: libc::c_int, data: &[u8]) {
    let (count, msg) = data.split_at(8);
    let count = u64::from_le_bytes(count.try_into().unwrap_or([0; 8]));
    for _ in 0..count {
        if !write_all_raw(fd, msg) {
            return;
        }
    }
}

fn raw_rate(n: usize, size: usize) -> BoxResult<f64> {
    let mut data = (n as u64).to_le_bytes().to_vec();
    data.resize(8 + size, 0x5a);
    let (sock, pid) = fork_with_socket(raw_produce, &data)?;
    sock.set_read_timeout(Some(LIMIT))?;
    let mut buf = vec![0u8; size];
    let rate = if size < 64 << 10 {
        let mut r = BufReader::with_capacity(64 << 10, &sock);
        timed(n, || Ok(r.read_exact(&mut buf)?))?
    } else {
        let mut r = &sock;
        timed(n, || Ok(r.read_exact(&mut buf)?))?
    };
    drop(sock);
    reap(pid)?;
    Ok(rate)
}

// ---- latency ----

/// The floor's echo child: returns each 8-byte message until EOF.
fn raw_echo(fd: libc::c_int, _: &[u8]) {
    let mut b = [0u8; 8];
    loop {
        let mut got = 0;
        while got < 8 {
            // SAFETY: `b[got..]` is valid for writes; read is async-signal-safe.
            let n = unsafe { libc::read(fd, b[got..].as_mut_ptr().cast(), 8 - got) };
            if n <= 0 {
                return;
            }
            got += n as usize;
        }
        if !write_all_raw(fd, &b) {
            return;
        }
    }
}

/// Times `iters` round trips of `one`, returning each in seconds.
fn round_trips(iters: usize, mut one: impl FnMut(u64) -> BoxResult<()>) -> BoxResult<Vec<f64>> {
    one(0)?; // the child is up
    let mut out = Vec::with_capacity(iters);
    for i in 0..iters as u64 {
        let t = Instant::now();
        one(i)?;
        out.push(t.elapsed().as_secs_f64());
    }
    Ok(out)
}

fn pipe_rtt(iters: usize) -> BoxResult<Vec<f64>> {
    let (ours, theirs) = pipe::<u64>()?;
    let mut p = Process::spawn(pipe_echo, theirs)?;
    let times = round_trips(iters, |i| {
        ours.send(&i)?;
        black_box(ours.recv_timeout(LIMIT)?);
        Ok(())
    })?;
    drop(ours);
    p.join_timeout(LIMIT)?;
    Ok(times)
}

fn queue_rtt(iters: usize) -> BoxResult<Vec<f64>> {
    let (to, from) = (Queue::<u64>::new()?, Queue::<u64>::new()?);
    let mut p = Process::spawn(queue_echo, (to.clone(), from.clone()))?;
    let times = round_trips(iters, |i| {
        to.put(i).map_err(|e| e.into_error())?;
        black_box(from.get_timeout(LIMIT)?);
        Ok(())
    })?;
    to.put(u64::MAX).map_err(|e| e.into_error())?;
    p.join_timeout(LIMIT)?;
    Ok(times)
}

fn raw_rtt(iters: usize) -> BoxResult<Vec<f64>> {
    let (mut sock, pid) = fork_with_socket(raw_echo, &[])?;
    sock.set_read_timeout(Some(LIMIT))?;
    let mut b = [0u8; 8];
    let times = round_trips(iters, |i| {
        sock.write_all(&i.to_le_bytes())?;
        sock.read_exact(&mut b)?;
        Ok(())
    })?;
    drop(sock);
    reap(pid)?;
    Ok(times)
}

// ---- statistics and printing ----

fn median(xs: &[f64]) -> f64 {
    quantile(xs, 50)
}

/// The nearest-rank `pct` percentile of `xs`.
fn quantile(xs: &[f64], pct: usize) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() * pct).div_ceil(100).clamp(1, v.len()) - 1]
}

fn slowest_over_fastest(xs: &[f64]) -> f64 {
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(0.0, f64::max);
    hi / lo
}

fn fmt_time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

/// A figure: its value, how it prints and its spread.
#[derive(Clone, Copy)]
struct Figure {
    value: f64,
    spread: f64,
    is_time: bool,
}

impl Figure {
    fn rate(samples: &[f64]) -> Figure {
        Figure {
            value: median(samples),
            spread: slowest_over_fastest(samples),
            is_time: false,
        }
    }
    fn time(samples: &[f64]) -> Figure {
        let m = median(samples);
        Figure {
            value: m,
            spread: quantile(samples, 90) / m,
            is_time: true,
        }
    }
    fn show(&self) -> String {
        if self.is_time {
            fmt_time(self.value)
        } else {
            fmt_rate(self.value)
        }
    }
}

/// One printed line: mproc's figure, then each comparison with its ratio.
fn print_row(name: &str, fig: Figure, peers: &[(&str, Option<f64>)]) {
    let mut line = format!("{name:<34} {:>11} spread {:>4.2}", fig.show(), fig.spread);
    for (peer, value) in peers {
        match value {
            Some(v) => {
                let shown = Figure { value: *v, ..fig }.show();
                line += &format!("  | {peer} {shown:>10} ratio {:>6.2}x", fig.value / v);
            }
            None => line += &format!("  | {peer} {:>10} ratio      -", "-"),
        }
    }
    println!("{line}");
}

// ---- Python ----

/// Python's medians by row name.
fn run_python() -> Result<Vec<(String, f64)>, String> {
    if !Path::new(PY_SCRIPT).is_file() {
        return Err(format!("{PY_SCRIPT} not found"));
    }
    let started = Instant::now();
    let mut child = Command::new("python3")
        .args([PY_SCRIPT, "--quick"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(st) => break st,
            None if started.elapsed() > PY_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", PY_TIMEOUT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("python3 exited with {status}"));
    }
    Ok(stdout
        .lines()
        .filter_map(|l| Some((json_field(l, "name")?.to_string(), json_num(l, "value")?)))
        .collect())
}

/// The raw text of top-level field `key` in one flat JSON object line.
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\": ");
    let rest = &line[line.find(&pat)? + pat.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        s.split('"').next()
    } else {
        rest.split([',', '}']).next().map(str::trim)
    }
}

fn json_num(line: &str, key: &str) -> Option<f64> {
    json_field(line, key)?.parse().ok()
}

// ---- the run ----

/// A named measurement returning `T`.
type Named<T> = (&'static str, fn() -> BoxResult<T>);

type Series = (&'static str, fn() -> BoxResult<f64>);

/// Runs every series `ROUNDS` times, interleaved in a rotated order; samples per series.
fn interleaved<T>(series: &[Named<T>]) -> BoxResult<Vec<Vec<T>>> {
    let mut out: Vec<Vec<T>> = series.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for k in 0..series.len() {
            let i = (round + k) % series.len();
            out[i].push((series[i].1)()?);
        }
    }
    Ok(out)
}

fn main() -> BoxResult<()> {
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("ipc bench: watchdog fired after {} s", WATCHDOG.as_secs());
        std::process::abort();
    });
    let started = Instant::now();
    println!(
        "ipc: 1 producer process -> parent; small N = {SMALL_N}, 1 MiB N = {LARGE_N}, \
         {RTT_ITERS} round trips; {ROUNDS} interleaved rounds"
    );

    let small: [Series; 6] = [
        ("pipe u64", || pipe_rate::<u64>(SMALL_N)),
        ("pipe 16-byte struct", || pipe_rate::<Pair>(SMALL_N)),
        ("queue u64", || queue_rate::<u64>(SMALL_N)),
        ("queue 16-byte struct", || queue_rate::<Pair>(SMALL_N)),
        ("raw 8 B", || raw_rate(SMALL_N, 8)),
        ("raw 16 B", || raw_rate(SMALL_N, 16)),
    ];
    let s = interleaved(&small)?;
    let large: [Series; 3] = [
        ("pipe 1 MiB", || pipe_rate::<ByteBuf>(LARGE_N)),
        ("queue 1 MiB", || queue_rate::<ByteBuf>(LARGE_N)),
        ("raw 1 MiB", || raw_rate(LARGE_N, MIB)),
    ];
    let l = interleaved(&large)?;
    let rtt: [Named<Vec<f64>>; 3] = [
        ("pipe", || pipe_rtt(RTT_ITERS)),
        ("queue", || queue_rtt(RTT_ITERS)),
        ("raw", || raw_rtt(RTT_ITERS)),
    ];
    let r: Vec<Vec<f64>> = interleaved(&rtt)?
        .into_iter()
        .map(|runs| runs.concat())
        .collect();
    let rust_wall = started.elapsed();

    let py = run_python();
    let py_get = |name: &str| -> Option<f64> {
        py.as_ref()
            .ok()?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    };
    let (rate, time) = (Figure::rate, Figure::time);
    let floor = |samples: &[f64], f: fn(&[f64]) -> Figure| Some(f(samples).value);

    println!("\n-- throughput, small messages (msg/s; ratio above 1 is faster)");
    print_row(
        "pipe.send(u64)",
        rate(&s[0]),
        &[
            ("raw 8 B", floor(&s[4], rate)),
            ("py Pipe", py_get("pipe_small_u64")),
        ],
    );
    print_row(
        "pipe.send(16-byte struct)",
        rate(&s[1]),
        &[("raw 16 B", floor(&s[5], rate))],
    );
    print_row(
        "queue.put(u64)",
        rate(&s[2]),
        &[
            ("raw 8 B", floor(&s[4], rate)),
            ("py Queue", py_get("queue_small_u64")),
        ],
    );
    print_row(
        "queue.put(16-byte struct)",
        rate(&s[3]),
        &[
            ("raw 16 B", floor(&s[5], rate)),
            ("py Queue", py_get("queue_small_pair")),
        ],
    );
    println!("\n-- throughput, 1 MiB messages (msg/s; ratio above 1 is faster)");
    print_row(
        "pipe.send(1 MiB)",
        rate(&l[0]),
        &[
            ("raw 1 MiB", floor(&l[2], rate)),
            ("py Pipe", py_get("pipe_large_1mib")),
        ],
    );
    print_row(
        "queue.put(1 MiB)",
        rate(&l[1]),
        &[
            ("raw 1 MiB", floor(&l[2], rate)),
            ("py Queue", py_get("queue_large_1mib")),
        ],
    );
    println!("\n-- round trip, one u64 there and back (median; ratio below 1 is faster)");
    print_row(
        "pipe ping-pong",
        time(&r[0]),
        &[
            ("raw 8 B", floor(&r[2], time)),
            ("py Pipe", py_get("pipe_rtt_u64")),
        ],
    );
    print_row(
        "queue ping-pong (2 queues)",
        time(&r[1]),
        &[
            ("raw 8 B", floor(&r[2], time)),
            ("py Queue", py_get("queue_rtt_u64")),
        ],
    );
    println!();
    match &py {
        Ok(_) => println!(
            "python: {} --quick (run after the Rust rows, not interleaved)",
            PY_SCRIPT
        ),
        Err(e) => println!("python: skipped ({e})"),
    }
    println!(
        "wall: rust {:.1} s, total {:.1} s",
        rust_wall.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
