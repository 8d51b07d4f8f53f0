"""CURVE's cost on a link: the same batches over loopback TCP with and without CURVE
(libzmq's CurveZMQ, as minard/curve.py sets it up), side by side in one run.

    .venv/bin/python bench/bench_curve.py [--megabytes 200] [--batch 4000]

Prints MB/s and the CPU seconds of this process (both ends run in it, in libzmq's I/O
threads) per 100 MB for each.
"""
import argparse
import os
import resource
import shlex
import sys
import tempfile
import threading
import time

import zmq
import zmq.auth

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(curve, megabytes, batch, record=416):
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    if curve:
        d = tempfile.mkdtemp()
        zmq.auth.create_certificates(d, "server")
        zmq.auth.create_certificates(d, "client")
        spub, ssec = zmq.auth.load_certificate(os.path.join(d, "server.key_secret"))
        cpub, csec = zmq.auth.load_certificate(os.path.join(d, "client.key_secret"))
        push.curve_secretkey, push.curve_publickey, push.curve_server = ssec, spub, True
        pull.curve_secretkey, pull.curve_publickey, pull.curve_serverkey = csec, cpub, spub
    port = push.bind_to_random_port("tcp://127.0.0.1")
    pull.connect("tcp://127.0.0.1:%d" % port)
    frames = [b"\0" * 8] + [os.urandom(record)] * batch
    size = sum(len(f) for f in frames)
    n = max(1, int(megabytes * 1e6 // size))
    done = threading.Event()

    def receive():
        for _ in range(n):
            pull.recv_multipart(copy=False)
        done.set()

    t = threading.Thread(target=receive)
    t.start()
    time.sleep(0.3)
    c0, w0 = cpu(), time.perf_counter()
    for _ in range(n):
        push.send_multipart(frames, copy=False)
    done.wait()
    c1, w1 = cpu(), time.perf_counter()
    t.join()
    push.close(0)
    pull.close(0)
    ctx.term()
    mbytes = n * size / 1e6
    return mbytes / (w1 - w0), (c1 - c0) / mbytes * 100


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--megabytes", type=float, default=200)
    p.add_argument("--batch", type=int, default=4000)
    a = p.parse_args()
    print("command: %s" % shlex.join([sys.executable] + sys.argv))
    print("libzmq %s, pyzmq %s, records of 416 B (an event of nhit 30), %d per message"
          % (zmq.zmq_version(), zmq.__version__, a.batch))
    for round_ in range(2):
        for curve in (False, True):
            rate, cost = run(curve, a.megabytes, a.batch)
            print("%-10s %8.1f MB/s  %5.2f CPU s per 100 MB  (= %.0f k events/s of nhit 30)"
                  % ("CURVE" if curve else "plain", rate, cost, rate * 1e6 / 416 / 1e3))


if __name__ == "__main__":
    main()
