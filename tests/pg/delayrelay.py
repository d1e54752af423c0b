#!/usr/bin/python3
"""A TCP relay that delays every byte by a fixed time in each direction.

    delayrelay.py LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT

Used by the several-hosts tests (tests/integration/test_multihost.py) when
the kernel has no netem qdisc: it sits in the path between one jwksd
instance and PostgreSQL. It starts with no delay; SIGUSR1 sets the delay to
DELAY_MS (env, default 50) each way, SIGUSR2 back to none. Data keeps its
order: each chunk is sent at (time received + delay). It prints "ready"
once it listens, and runs until killed.
"""

import os
import queue
import signal
import socket
import sys
import threading
import time

DELAY = float(os.environ.get("DELAY_MS", "50")) / 1000.0
current_delay = 0.0


def on_signal(signum, _frame):
    global current_delay
    current_delay = DELAY if signum == signal.SIGUSR1 else 0.0


def pump(src, dst):
    """Read from src; a second thread writes each chunk to dst when due."""
    chunks = queue.Queue()

    def writer():
        while True:
            due, data = chunks.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if data is None:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    while True:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        chunks.put((time.monotonic() + current_delay, data or None))
        if not data:
            break
    thread.join()


def serve(client, target):
    try:
        upstream = socket.create_connection(target, timeout=5)
        upstream.settimeout(None)
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    a = threading.Thread(target=pump, args=(client, upstream), daemon=True)
    b = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    a.start()
    b.start()
    a.join()
    b.join()
    client.close()
    upstream.close()


def main(argv):
    if len(argv) != 5:
        print(f"usage: {argv[0]} LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    target = (argv[3], int(argv[4]))
    listener = socket.create_server((argv[1], int(argv[2])), reuse_port=False)
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
