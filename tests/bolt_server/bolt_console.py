#!/usr/bin/env python3
"""A stand-in for mgconsole in the Bolt test image: the chart's cluster-setup Job pipes its
queries into mgconsole; this runs each query given as an argument, in order, on one Bolt
connection, and stops at the first failure.

Usage: bolt_console.py HOST PORT QUERY... (credentials from MEMGRAPH_USER and
MEMGRAPH_PASSWORD when set, as the chart's Job passes them). The connection is retried for
up to 60 s: a Job may start before the coordinator listens or its Service is routed. Prints one line per query
("ok QUERY" or "error CODE: MESSAGE"); exit 0 when every query succeeded, 1 otherwise.
Standard library only; PackStream and Bolt framing from memgraph_coordinator.py next to it.
"""

import os
import socket
import sys
import time

from memgraph_coordinator import FAILURE, IGNORED, SUCCESS, recv_exact, recv_message, send_message

HELLO, LOGON, RUN, PULL, GOODBYE = 0x01, 0x6A, 0x10, 0x3F, 0x02


class Connection:
    def __init__(self, host, port):
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        offers = [(5, 2), (4, 3), (4, 1), (4, 0)]
        handshake = b"\x60\x60\xB0\x17" + b"".join(bytes([0, 0, minor, major]) for major, minor in offers)
        self.sock.sendall(handshake)
        agreed = recv_exact(self.sock, 4)
        if agreed == b"\x00\x00\x00\x00":
            raise ConnectionError("no common Bolt version")
        self.version = (agreed[3], agreed[2])

    def send(self, tag, *fields):
        send_message(self.sock, tag, *fields)

    def request(self, tag, *fields):
        """Send one message, read up to its summary; raise on FAILURE."""
        self.send(tag, *fields)
        while True:
            reply = recv_message(self.sock)
            if reply.tag == SUCCESS:
                return reply.fields[0]
            if reply.tag == FAILURE:
                meta = reply.fields[0]
                raise RuntimeError(f"{meta.get('code')}: {meta.get('message')}")
            if reply.tag == IGNORED:
                raise RuntimeError("the server ignored the request (an earlier failure)")


def main():
    if len(sys.argv) < 4:
        print("usage: bolt_console.py HOST PORT QUERY...", file=sys.stderr)
        return 2
    host, port, queries = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    user, password = os.environ.get("MEMGRAPH_USER"), os.environ.get("MEMGRAPH_PASSWORD")
    auth = {"scheme": "basic", "principal": user, "credentials": password} if user else {"scheme": "none"}
    try:
        conn = Connection(host, port)
        hello = {"user_agent": "bolt_console/1"}
        if conn.version >= (5, 1):
            conn.request(HELLO, hello)
            conn.request(LOGON, auth)
        else:
            conn.request(HELLO, {**hello, **auth})
        for query in queries:
            conn.request(RUN, query, {}, {})
            conn.request(PULL, {"n": -1})
            print(f"ok {query}", flush=True)
        conn.send(GOODBYE)
    except (OSError, ConnectionError, RuntimeError, ValueError) as e:
        print(f"error {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
