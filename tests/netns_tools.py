"""Small programs the multi-host test runs inside its network namespaces
(`ip netns exec NS python -m tests.netns_tools ...`). Unix sockets are files, shared by
every network namespace: they carry the test's own traffic in and out of a namespace,
so that no address outside the namespaces is ever used.

  relay tcp-to-unix PORT PATH   listen on 127.0.0.1:PORT, forward to the unix socket PATH
  relay unix-to-tcp PATH PORT   listen on the unix socket PATH, forward to 127.0.0.1:PORT
  capture IFACE FILE            append every frame seen on IFACE to FILE until killed
"""
import os
import socket
import sys
import threading


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(listener, connect):
    while True:
        client, _ = listener.accept()
        try:
            upstream = connect()
        except OSError:
            client.close()
            continue
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()


def relay(mode, a, b):
    if mode == "tcp-to-unix":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(a)))
        path = b

        def connect():
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
    elif mode == "unix-to-tcp":
        if os.path.exists(a):
            os.unlink(a)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(a)
        port = int(b)

        def connect():
            return socket.create_connection(("127.0.0.1", port))
    else:
        raise SystemExit("unknown relay mode %r" % (mode,))
    listener.listen(64)
    print("ready", flush=True)
    serve(listener, connect)


def capture(interface, path):
    """Every frame on the interface, as raw bytes appended to path (a packet capture
    without tcpdump: AF_PACKET, all protocols)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((interface, 0))
    print("ready", flush=True)
    with open(path, "ab", buffering=0) as f:
        while True:
            f.write(s.recv(65536))


if __name__ == "__main__":
    if sys.argv[1:2] == ["relay"]:
        relay(*sys.argv[2:5])
    elif sys.argv[1:2] == ["capture"]:
        capture(*sys.argv[2:4])
    else:
        raise SystemExit(__doc__)
