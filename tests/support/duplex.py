#!/usr/bin/env python3
"""A two-way TCP stream for the lab tests, run inside Pod network namespaces.

    duplex.py server IP PORT PROGRESS    accept one connection on IP:PORT, send a small chunk
                                         every 10 ms and read everything the client sends;
                                         every 50 ms, replace the file PROGRESS with the number
                                         of bytes received so far
    duplex.py client IP PORT             connect (retrying for up to 15 s), print "connected",
                                         then send a small chunk every 10 ms and read whatever
                                         the server sends

Both ends run until they are killed: a stream the network stops just stalls (TCP keeps
retransmitting), which PROGRESS shows. The server binds only the given address, so it listens
only in the Pod it runs in.
"""
import os
import socket
import sys
import threading
import time

from tcp_ends import accept_one, connect

CHUNK = b"weft-duplex-0123456789abcdef0123456789abcdef0123456789abcdef012\n"
INTERVAL = 0.01
PROGRESS_INTERVAL = 0.05


def send_forever(sock):
    next_send = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if now < next_send:
                time.sleep(next_send - now)
            sock.sendall(CHUNK)
            next_send += INTERVAL
    except OSError:
        pass


def server(ip, port, progress):
    conn = accept_one(ip, port, "duplex.py server")
    if conn is None:
        return 1
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=send_forever, args=(conn,), daemon=True).start()
    received = [0]

    def read_forever():
        while True:
            data = conn.recv(65536)
            if not data:
                return
            received[0] += len(data)

    threading.Thread(target=read_forever, daemon=True).start()
    partial = progress + ".tmp"
    while True:
        with open(partial, "w") as out:
            out.write("%d\n" % received[0])
        os.replace(partial, progress)
        time.sleep(PROGRESS_INTERVAL)


def client(ip, port):
    sock = connect(ip, port, "duplex.py client")
    if sock is None:
        return 1
    threading.Thread(target=send_forever, args=(sock,), daemon=True).start()
    print("connected", flush=True)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    return 0


def main(argv):
    if len(argv) == 5 and argv[1] == "server":
        return server(argv[2], int(argv[3]), argv[4])
    if len(argv) == 4 and argv[1] == "client":
        return client(argv[2], int(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
