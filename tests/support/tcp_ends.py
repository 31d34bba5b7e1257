"""What the two ends of the lab tests' TCP streams (duplex.py, stream.py) do alike: the server
accepts one connection on an address of its own Pod, the client connects, retrying while the
server is not listening yet. Imported by those scripts (it sits beside them); not run itself.
"""
import socket
import sys
import time

ACCEPT_TIMEOUT = 60
CONNECT_RETRY_SECS = 15


def accept_one(ip, port, who):
    """Listens on IP:PORT only and accepts one connection within ACCEPT_TIMEOUT seconds.

    Returns the connection (blocking), or None after saying on stderr, as `who`, that none came.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((ip, port))
    listener.listen(1)
    listener.settimeout(ACCEPT_TIMEOUT)
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        print("%s: no connection within %d s" % (who, ACCEPT_TIMEOUT), file=sys.stderr)
        return None
    listener.close()
    conn.settimeout(None)
    return conn


def connect(ip, port, who):
    """Connects to IP:PORT, retrying for up to CONNECT_RETRY_SECS seconds.

    Returns the socket (blocking, with TCP_NODELAY), or None after saying on stderr, as `who`,
    why it could not connect.
    """
    deadline = time.monotonic() + CONNECT_RETRY_SECS
    while True:
        try:
            sock = socket.create_connection((ip, port), timeout=5)
            break
        except OSError as error:
            if time.monotonic() > deadline:
                print("%s: cannot connect to %s:%d: %s" % (who, ip, port, error),
                      file=sys.stderr)
                return None
            time.sleep(0.2)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
