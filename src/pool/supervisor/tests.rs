//! The supervisor with fake workers: a socket pair and a `sleep` child.
use super::assign::send_jobs;
use super::worker::{Phase, Worker};
use super::*;
use crate::pool::batch::Sink;
use crate::pool::result::Slot;
use std::io::{Read, Write};

/// A one-item job with a `body`-byte frame, answered into its own slot.
fn job(body: usize) -> (Batch, Arc<Slot>) {
    let slot = Arc::new(Slot::new(1));
    let mut f = frame::FrameBuf::with_capacity(body);
    f.buf.resize(f.buf.len() + body, 0xAB);
    let job = Batch::new(f.finish(), None, 1, Sink::Slot(Arc::clone(&slot), 0), 0);
    (job, slot)
}

/// A supervisor with one fake worker: `sock` is ours, the returned end plays the worker.
/// Its pid is a `sleep` child, so that a wrong kill hits nothing else and can be seen.
fn fake_pool() -> (Supervisor, UnixStream, std::process::Child) {
    let (shared, wake_rx) = Registry::new().unwrap();
    let (ours, theirs) = sys::socket_pair().unwrap();
    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let worker = Worker {
        id: 1,
        child: Arc::new(sys::ChildHandle::new(child.id() as i32, None)),
        sock: Some(Arc::new(ours)),
        published: false,
        reader: FrameReader::new(frame::DEFAULT_LIMIT),
        received: Received::default(),
        state: Phase::Active,
        inflight: VecDeque::new(),
        watch: Arc::new(Watch::create(false).unwrap()),
        answered: 0,
        head_since: Instant::now(),
        credit: Duration::ZERO,
        credit_item: (0, 0),
        loss: None,
        last_words: None,
        tasks: 0,
        served: true,
        ahead_bytes: LOOKAHEAD_BYTES,
    };
    let config = Config {
        processes: 1,
        method: StartMethod::Spawn,
        spec: Spec::default(),
        init: None,
        max_tasks_per_child: None,
        task_timeout: None,
    };
    let mut sup = Supervisor::new(shared, config, wake_rx);
    sup.workers.push(worker);
    // Started already, and fast tasks: `assign` tops up the look-ahead.
    (sup.filled_once, sup.running, sup.next_id) = (true, true, 1);
    sup.avg_task = Duration::from_micros(1);
    (sup, theirs, child)
}

/// The chaos test's failure, step by step: a worker answers its running job and dies
/// before the supervisor reads the answer; topping up its look-ahead then fails. The
/// answer must still complete the job (it used to fail it with "a worker answered without
/// a task" and kill the worker), and the jobs that were never sent go back to the queue.
#[test]
fn answer_from_a_worker_that_died_before_a_look_ahead_write_completes_its_job() {
    let (mut sup, theirs, mut child) = fake_pool();
    let (running, running_slot) = job(8);
    sup.workers[0].inflight.push_back(running);
    let mut queued_slots = Vec::new();
    {
        let mut q = sup.shared.lock();
        for _ in 0..8 {
            let (j, s) = job(8);
            q.jobs.push_back(j);
            queued_slots.push(s);
        }
    }
    // The worker answers, then dies: its end closes with the answer unread. `shutdown`,
    // not just `drop`: a `Fork` child of a parallel test may hold a copy of the fd.
    let mut answer = frame::FrameBuf::new();
    answer
        .buf
        .extend_from_slice(&crate::task::chunk::rebuild(1, 1, &[0]));
    (&theirs).write_all(&answer.finish()).unwrap();
    theirs.shutdown(std::net::Shutdown::Both).unwrap();
    drop(theirs);

    sup.assign(); // the look-ahead write fails: the peer is gone
    assert!(matches!(sup.workers[0].state, Phase::Ending));
    assert_eq!(sup.shared.lock().jobs.len(), 8, "unsent jobs are re-queued");
    sup.read_worker(0);

    assert!(running_slot.is_done(), "the answer settles the running job");
    let outcome = running_slot.take().pop().unwrap();
    assert!(outcome.iter().all(|p| p.what.is_ok()), "{outcome:?}");
    assert!(sup.workers[0].inflight.is_empty());
    assert_eq!(sup.shared.lock().jobs.len(), 8);
    assert!(queued_slots.iter().all(|s| !s.is_done()));
    assert!(
        child.try_wait().unwrap().is_none(),
        "no protocol error, so no kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A worker that dies while a batch is half written: the jobs written whole may have run
/// and are counted as sent; the rest are not.
#[test]
fn send_jobs_counts_the_jobs_written_whole_before_the_peer_died() {
    let (ours, theirs) = sys::socket_pair().unwrap();
    sys::set_send_buffer(std::os::fd::AsFd::as_fd(&ours), 4096).unwrap();
    let jobs: Vec<Batch> = (0..40).map(|_| job(1000).0).collect();
    let frame_len = jobs[0].frame.len();
    // The worker reads three whole frames, then dies; the writer is blocked by then, its
    // small send buffer long full.
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0; 3 * frame_len];
        (&theirs).read_exact(&mut buf).unwrap();
        // Not just the drop: a `Fork` child of a parallel test may hold a copy of the fd.
        theirs.shutdown(std::net::Shutdown::Both).unwrap();
    });
    let sent = send_jobs(&ours, &jobs);
    reader.join().unwrap();
    assert!(
        (3..jobs.len()).contains(&sent),
        "{sent} of {} counted as sent",
        jobs.len()
    );
    assert_eq!(send_jobs(&ours, &jobs), 0, "nothing goes to a dead worker");
}

/// A chunk job of `items` for cell `cell` of `slot`, as `map_chunks` makes them.
fn chunk_job(items: &[u64], slot: &Arc<Slot>, cell: usize) -> Batch {
    let mut f = msg::begin_run(0, b"id", 1, 2);
    crate::wire::codec::encode_into(items, &mut f.buf).unwrap();
    let sink = Sink::Slot(Arc::clone(slot), cell);
    Batch::new(f.finish(), None, items.len(), sink, 0)
}

/// One-item jobs of one `map`, queued side by side, travel to a worker as one chunk per run
/// (a job of another request in between ends a run); one answer fills all their cells.
#[test]
fn consecutive_jobs_of_one_map_travel_and_settle_as_one_chunk() {
    let (mut sup, theirs, mut child) = fake_pool();
    let (a, b) = (Arc::new(Slot::new(6)), Arc::new(Slot::new(1)));
    {
        let mut q = sup.shared.lock();
        for cell in 0..3 {
            q.jobs.push_back(chunk_job(&[cell as u64 * 10], &a, cell));
        }
        q.jobs.push_back(chunk_job(&[99], &b, 0));
        for cell in 3..6 {
            q.jobs.push_back(chunk_job(&[cell as u64 * 10], &a, cell));
        }
    }
    sup.assign();
    // The first job alone (the worker was idle), then the look-ahead, merged by runs.
    let mut reader = FrameReader::new(frame::DEFAULT_LIMIT);
    let mut sent = Vec::new();
    for _ in 0..4 {
        let body = reader.read_frame(&mut &theirs).unwrap();
        let run = msg::parse_run(&body).unwrap();
        sent.push(crate::wire::codec::decode::<Vec<u64>>(run.arg).unwrap());
    }
    assert_eq!(sent, [vec![0], vec![10, 20], vec![99], vec![30, 40, 50]]);
    assert_eq!(sup.workers[0].inflight.len(), 4);
    // The worker answers each chunk with its items doubled.
    for items in &sent {
        let mut bytes = Vec::new();
        for x in items {
            crate::wire::codec::encode_into(&(x * 2), &mut bytes).unwrap();
        }
        let n = items.len() as u64;
        let mut answer = frame::FrameBuf::new();
        answer
            .buf
            .extend_from_slice(&crate::task::chunk::rebuild(n, n, &bytes));
        (&theirs).write_all(&answer.finish()).unwrap();
    }
    while !sup.workers[0].inflight.is_empty() {
        sup.read_worker(0);
    }
    assert!(a.is_done() && b.is_done());
    let values = crate::pool::finish_map::<u64>(a.take()).unwrap();
    assert_eq!(values, [0, 20, 40, 60, 80, 100]);
    assert_eq!(crate::pool::finish_map::<u64>(b.take()).unwrap(), [198]);
    child.kill().unwrap();
    child.wait().unwrap();
}
