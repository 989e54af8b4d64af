#!/usr/bin/env python3
"""Drives the official neo4j Python driver (PyPI `neo4j`) in routing mode for tests.

Usage: driver_probe.py URI [--user USER --password PASSWORD]. URI is neo4j://HOST:PORT, or
over TLS neo4j+s:// (the server verified against the system trust store, which SSL_CERT_FILE
points at a test CA) or neo4j+ssc:// (any certificate). Keeps ONE driver (so its routing table and its
refresh behave as in an application) and reads commands on standard input:
  write   run `RETURN $n AS n` in a WRITE session (goes to the table's WRITE server)
  read    the same in a READ session (goes to a READ server)
  quit
Each command prints one JSON line: {"ok": true, "server": "host:port", "value": n} or
{"ok": false, "error": "...", "type": "ServiceUnavailable"}.
Auto-commit queries (session.run) are not retried, so a failure shows at once.

Sessions name the database ("memgraph", Memgraph's default). Without it the driver (6.x, no
server-side routing) resolves the home database with a ROUTE for database None, and with no
table for None it asks only its initial (seed) address: every new session would depend on
the seed, whatever the routing table says.
"""

import argparse
import json
import socket
import sys

import neo4j

# A client outside the cluster cannot resolve in-cluster names. Answer that here, as its DNS
# would, so that no lookup leaves this machine during the tests.
_getaddrinfo = socket.getaddrinfo


def _outside_cluster_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name.rstrip(".").endswith((".svc", ".cluster.local")):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _outside_cluster_getaddrinfo


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--user")
    parser.add_argument("--password", default="")
    args = parser.parse_args()
    auth = (args.user, args.password) if args.user else None
    driver = neo4j.GraphDatabase.driver(args.uri, auth=auth, connection_timeout=5.0, connection_acquisition_timeout=10.0)
    print(json.dumps({"driver": neo4j.__version__}), flush=True)
    count = 0
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command not in ("write", "read"):
            print(json.dumps({"ok": False, "error": f"unknown command {command!r}", "type": "Usage"}), flush=True)
            continue
        count += 1
        mode = neo4j.WRITE_ACCESS if command == "write" else neo4j.READ_ACCESS
        try:
            with driver.session(database="memgraph", default_access_mode=mode) as session:
                result = session.run("RETURN $n AS n", n=count)
                value = result.single(strict=True)["n"]
                summary = result.consume()
                server = f"{summary.server.address[0]}:{summary.server.address[1]}"
            print(json.dumps({"ok": True, "server": server, "value": value}), flush=True)
        except Exception as e:  # the test asserts on the message
            print(json.dumps({"ok": False, "error": str(e), "type": type(e).__name__}), flush=True)
    driver.close()


if __name__ == "__main__":
    main()
