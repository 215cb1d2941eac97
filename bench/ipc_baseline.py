#!/usr/bin/env python3
"""Python's multiprocessing.Queue and Pipe, measured the way benches/ipc.rs measures mproc.

Standard library only (CPython >= 3.8, Linux). Prints one JSON object per line on stdout:

    {"name": "queue_small_u64", "unit": "msg/s", "value": 123456.0, "samples": [...], ...}

Rows (1 producer process -> the parent as consumer; start-up not timed: the clock runs from
the first message received to the last):
  queue_small_u64     Queue.put(int) x N_SMALL, msg/s
  queue_small_pair    Queue.put((int, int)) x N_SMALL (the 16-byte struct), msg/s
  queue_large_1mib    Queue.put(bytes of 1 MiB) x N_LARGE, msg/s
  pipe_small_u64      Connection.send(int) x N_SMALL, msg/s
  pipe_large_1mib     Connection.send_bytes(1 MiB) x N_LARGE, msg/s
  queue_rtt_u64       ping-pong through two Queues, seconds per round trip (median)
  pipe_rtt_u64        ping-pong through one duplex Pipe, seconds per round trip (median)

Each figure is the median over ROUNDS runs; "samples" has every run. A final "wall" line
gives the script's own run time.

    python3 bench/ipc_baseline.py            # full sizes
    python3 bench/ipc_baseline.py --quick    # the sizes benches/ipc.rs uses
"""
import argparse
import json
import multiprocessing as mp
import statistics
import time

MIB = 1 << 20


def emit(name, unit, samples, **extra):
    value = statistics.median(samples)
    rec = {"name": name, "unit": unit, "value": value, "samples": samples}
    rec.update(extra)
    print(json.dumps(rec), flush=True)


def produce_queue(q, n, kind):
    if kind == "u64":
        item = 1234567
    elif kind == "pair":
        item = (1234567, 7654321)
    else:
        item = bytes(MIB)
    for _ in range(n):
        q.put(item)


def produce_pipe(conn, n, kind):
    if kind == "large":
        item = bytes(MIB)
        for _ in range(n):
            conn.send_bytes(item)
    else:
        for _ in range(n):
            conn.send(1234567)
    conn.close()


def timed_receive(receive, n):
    """Seconds from the first message received to the last (n - 1 intervals)."""
    receive()
    start = time.perf_counter()
    for _ in range(n - 1):
        receive()
    return time.perf_counter() - start


def queue_rate(ctx, n, kind):
    q = ctx.Queue()
    p = ctx.Process(target=produce_queue, args=(q, n, kind))
    p.start()
    secs = timed_receive(q.get, n)
    p.join()
    return (n - 1) / secs


def pipe_rate(ctx, n, kind):
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=produce_pipe, args=(theirs, n, kind))
    p.start()
    theirs.close()
    receive = ours.recv_bytes if kind == "large" else ours.recv
    secs = timed_receive(receive, n)
    p.join()
    ours.close()
    return (n - 1) / secs


def echo_queues(inq, outq):
    while True:
        x = inq.get()
        if x is None:
            return
        outq.put(x + 1)


def echo_pipe(conn):
    while True:
        x = conn.recv()
        if x is None:
            return
        conn.send(x + 1)


def rtt(send, recv, iters):
    times = []
    for i in range(iters):
        t = time.perf_counter()
        send(i)
        recv()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def queue_rtt(ctx, iters):
    a, b = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=echo_queues, args=(a, b))
    p.start()
    a.put(0)
    b.get()  # warm: the child runs
    r = rtt(a.put, b.get, iters)
    a.put(None)
    p.join()
    return r


def pipe_rtt(ctx, iters):
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=echo_pipe, args=(theirs,))
    p.start()
    ours.send(0)
    ours.recv()
    r = rtt(ours.send, ours.recv, iters)
    ours.send(None)
    p.join()
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    args = ap.parse_args()
    if args.quick:
        n_small, n_large, iters, rounds = 50_000, 100, 1000, 3
    else:
        n_small, n_large, iters, rounds = 200_000, 400, 5000, 5
    ctx = mp.get_context()
    common = {"start_method": ctx.get_start_method()}
    started = time.perf_counter()
    rows = [
        ("queue_small_u64", lambda: queue_rate(ctx, n_small, "u64"), "msg/s", n_small),
        ("queue_small_pair", lambda: queue_rate(ctx, n_small, "pair"), "msg/s", n_small),
        ("queue_large_1mib", lambda: queue_rate(ctx, n_large, "large"), "msg/s", n_large),
        ("pipe_small_u64", lambda: pipe_rate(ctx, n_small, "u64"), "msg/s", n_small),
        ("pipe_large_1mib", lambda: pipe_rate(ctx, n_large, "large"), "msg/s", n_large),
        ("queue_rtt_u64", lambda: queue_rtt(ctx, iters), "s", iters),
        ("pipe_rtt_u64", lambda: pipe_rtt(ctx, iters), "s", iters),
    ]
    for name, run, unit, n in rows:
        emit(name, unit, [run() for _ in range(rounds)], n=n, **common)
    print(json.dumps({"name": "wall", "unit": "s", "value": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
