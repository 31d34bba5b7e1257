#!/usr/bin/env python3
"""A tiny agnhost-like helper for the lab tests, run inside a Pod's network namespace.

    netprobe.py serve PORT...              echo server on TCP and UDP for each PORT
    netprobe.py probe TIMEOUT TARGET...    TARGET is IP:PORT/tcp or IP:PORT/udp; prints
                                           "TARGET ok" or "TARGET no" per target, probing all
                                           targets at once

A TCP probe succeeds when a connection is made and a byte comes back; a UDP probe when a
datagram comes back (sent every 0.2 s until TIMEOUT, so one lost datagram is not a denial).
"""
import socket
import sys
import threading
import time


def serve_tcp(port):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(128)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=echo_tcp, args=(conn,), daemon=True).start()


def echo_tcp(conn):
    try:
        conn.settimeout(5)
        data = conn.recv(64)
        if data:
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def serve_udp(port):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    while True:
        data, peer = server.recvfrom(2048)
        server.sendto(data, peer)


def probe_tcp(ip, port, timeout):
    try:
        with socket.create_connection((ip, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(b"p")
            return conn.recv(1) == b"p"
    except OSError:
        return False


def probe_udp(ip, port, timeout):
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while time.monotonic() < deadline:
            try:
                sock.sendto(b"p", (ip, port))
                sock.settimeout(min(0.2, max(0.01, deadline - time.monotonic())))
                data, _ = sock.recvfrom(16)
                if data == b"p":
                    return True
            except socket.timeout:
                continue
            except OSError:
                time.sleep(0.05)
    return False


def probe(timeout, targets):
    results = {}

    def run(target):
        address, proto = target.rsplit("/", 1)
        ip, port = address.rsplit(":", 1)
        check = probe_tcp if proto == "tcp" else probe_udp
        results[target] = check(ip, int(port), timeout)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for target in targets:
        print(target, "ok" if results[target] else "no")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        ports = [int(p) for p in sys.argv[2:]]
        for port in ports:
            threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
            threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
        print("serving", flush=True)
        while True:
            time.sleep(3600)
    elif len(sys.argv) >= 3 and sys.argv[1] == "probe":
        probe(float(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
