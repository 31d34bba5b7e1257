#!/usr/bin/env python3
"""A steady TCP stream for the lab tests, run inside Pod network namespaces.

    stream.py server IP PORT                 accept one connection on IP:PORT, read until EOF,
                                             then print {"bytes":N,"chunks":C,
                                             "maxGapSecs":G,"secs":S} and exit
    stream.py client IP PORT SECONDS         connect (retrying for up to 15 s), print
                                             "connected", send a small chunk every 10 ms for
                                             SECONDS or until standard input is closed,
                                             whichever is first, shut down the write side,
                                             wait for the server to close, then print
                                             {"bytes":N,"chunks":C,"secs":S} and exit

maxGapSecs is the longest time between two successive reads that returned data: a tunnel
that stops carrying the stream for a while shows up there (TCP retransmits, nothing is lost,
but the data arrives late). The server binds only the given address, so it listens only in
the Pod it runs in.
"""
import json
import socket
import sys
import threading
import time

from tcp_ends import accept_one, connect

CHUNK = b"weft-stream-0123456789abcdef0123456789abcdef0123456789abcdef0123\n"
INTERVAL = 0.01
CLOSE_TIMEOUT = 30


def server(ip, port):
    conn = accept_one(ip, port, "stream.py server")
    if conn is None:
        return 1
    total = 0
    chunks = 0
    first = last = None
    max_gap = 0.0
    while True:
        data = conn.recv(65536)
        if not data:
            break
        now = time.monotonic()
        if last is not None:
            max_gap = max(max_gap, now - last)
        else:
            first = now
        last = now
        total += len(data)
        chunks += 1
    conn.close()
    secs = (last - first) if first is not None else 0.0
    print(json.dumps({"bytes": total, "chunks": chunks, "maxGapSecs": max_gap, "secs": secs}),
          flush=True)
    return 0


def client(ip, port, seconds):
    sock = connect(ip, port, "stream.py client")
    if sock is None:
        return 1
    stop = threading.Event()

    def watch_stdin():
        try:
            sys.stdin.read()
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("connected", flush=True)
    start = time.monotonic()
    end = start + seconds
    next_send = start
    total = 0
    chunks = 0
    while not stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        if now < next_send:
            time.sleep(next_send - now)
        sock.sendall(CHUNK)
        total += len(CHUNK)
        chunks += 1
        next_send += INTERVAL
    secs = time.monotonic() - start
    # Everything sent reaches the server before its EOF; its close tells us it has read it all.
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(CLOSE_TIMEOUT)
    try:
        while sock.recv(4096):
            pass
    except OSError as error:
        print("stream.py client: the server did not close: %s" % error, file=sys.stderr)
        return 1
    sock.close()
    print(json.dumps({"bytes": total, "chunks": chunks, "secs": secs}), flush=True)
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "server":
        return server(argv[2], int(argv[3]))
    if len(argv) == 5 and argv[1] == "client":
        return client(argv[2], int(argv[3]), float(argv[4]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
