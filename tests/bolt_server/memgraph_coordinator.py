#!/usr/bin/env python3
"""A Bolt server that behaves as a Memgraph HA cluster does towards clients, for tests.

Standard library only. Each instance of the cluster (coordinators and data instances) gets
its own TCP listener, standing for its external address (node IP:nodePort). They share one
in-memory instance table, the way Memgraph's coordinators share the Raft state:

- Bolt handshake (4.0, 4.1, 4.3, 5.2 by default: the versions Memgraph offers,
  shared/memgraph-ha.md "Bolt ROUTE, for tests"), HELLO, LOGON (5.1+), RESET, GOODBYE,
  BEGIN/COMMIT/ROLLBACK, RUN/PULL/DISCARD, with FAILED/IGNORED semantics.
- ROUTE (coordinators): {rt: {ttl, db, servers}} with ROUTE = every coordinator's
  bolt_server, WRITE = the healthy main's, READ = the healthy replicas'; ttl configurable.
- Coordinator queries: SHOW INSTANCES, SHOW VERSION, and on the leader
  UPDATE CONFIG FOR COORDINATOR <id> {'bolt_server': ..} / FOR INSTANCE <name> {...}
  (3.8+ syntax: only the bolt_server key), and what the chart's cluster-setup Job sends:
  ADD COORDINATOR <id> WITH CONFIG {...}, REGISTER INSTANCE <name> WITH CONFIG {...},
  SET INSTANCE <name> TO MAIN. Other queries fail as on a coordinator.
- An instance configured with "registered": false is not in the table (SHOW INSTANCES,
  ROUTE) until ADD COORDINATOR / REGISTER INSTANCE names it; one without "listen" has no
  listener here (it runs elsewhere, e.g. in its own pod).
- Data instances answer SHOW VERSION and `RETURN <literal or $param> AS <name>`.

Usage: memgraph_coordinator.py CONFIG.json. Prints one JSON line
{"listening": {name: "host:port"}} once every listener is bound. Commands on standard input,
one per line, each answered by "ok ..." or "error ...":
  down NAME     close NAME's listener and connections, mark it down
  up NAME       listen again on the same address, mark it up
  leader NAME   make coordinator NAME the leader (a Raft election)
A journal of every request (JSON lines: instance, message, query) goes to config["journal"];
a request answered with FAILURE is followed by an entry with message "FAILURE" (and the
query, for a RUN).

TLS (Memgraph with --bolt-cert-file/--bolt-key-file): config["tls"] = {"cert": PEM file,
"key": PEM file} makes every listener TLS-only, as Memgraph's Bolt port is then. A client
that does not complete the TLS handshake is journaled as message "TLS handshake failed".

Wording of failures that Memgraph's source was not checked for is marked "test server".
"""

import json
import re
import socket
import ssl
import struct
import sys
import threading

SERVER_AGENT = "Neo4j/v5.11.0 compatible graph database server - Memgraph"

# ---------------------------------------------------------------- PackStream


class Structure:
    def __init__(self, tag, fields):
        self.tag = tag
        self.fields = fields


def pack(value, out):
    if value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif isinstance(value, int):
        if -16 <= value <= 127:
            out += struct.pack(">b", value)
        elif -128 <= value <= 127:
            out += b"\xC8" + struct.pack(">b", value)
        elif -32768 <= value <= 32767:
            out += b"\xC9" + struct.pack(">h", value)
        elif -(2**31) <= value < 2**31:
            out += b"\xCA" + struct.pack(">i", value)
        else:
            out += b"\xCB" + struct.pack(">q", value)
    elif isinstance(value, float):
        out += b"\xC1" + struct.pack(">d", value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        _header(out, len(data), 0x80, 0xD0)
        out += data
    elif isinstance(value, (bytes, bytearray)):
        _header(out, len(value), None, 0xCC)
        out += value
    elif isinstance(value, list):
        _header(out, len(value), 0x90, 0xD4)
        for item in value:
            pack(item, out)
    elif isinstance(value, dict):
        _header(out, len(value), 0xA0, 0xD8)
        for key, item in value.items():
            pack(str(key), out)
            pack(item, out)
    elif isinstance(value, Structure):
        out.append(0xB0 | len(value.fields))
        out.append(value.tag)
        for item in value.fields:
            pack(item, out)
    else:
        raise TypeError(f"cannot pack {type(value)}")


def _header(out, size, tiny, marker8):
    if tiny is not None and size < 16:
        out.append(tiny | size)
    elif size < 0x100:
        out += bytes([marker8, size])
    elif size < 0x10000:
        out += bytes([marker8 + 1]) + struct.pack(">H", size)
    else:
        out += bytes([marker8 + 2]) + struct.pack(">I", size)


class Unpacker:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated PackStream value")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def size(self, marker, base):
        width = 1 << (marker - base)
        return int.from_bytes(self.take(width), "big")

    def value(self):
        marker = self.take(1)[0]
        if marker < 0x80:
            return marker
        if marker >= 0xF0:
            return marker - 0x100
        high = marker & 0xF0
        if high == 0x80:
            return self.take(marker & 0x0F).decode("utf-8")
        if high == 0x90:
            return [self.value() for _ in range(marker & 0x0F)]
        if high == 0xA0:
            return self.map(marker & 0x0F)
        if high == 0xB0:
            tag = self.take(1)[0]
            return Structure(tag, [self.value() for _ in range(marker & 0x0F)])
        if marker == 0xC0:
            return None
        if marker == 0xC1:
            return struct.unpack(">d", self.take(8))[0]
        if marker in (0xC2, 0xC3):
            return marker == 0xC3
        if marker in (0xC8, 0xC9, 0xCA, 0xCB):
            width = 1 << (marker - 0xC8)
            return int.from_bytes(self.take(width), "big", signed=True)
        if 0xCC <= marker <= 0xCE:
            return bytes(self.take(self.size(marker, 0xCC)))
        if 0xD0 <= marker <= 0xD2:
            return self.take(self.size(marker, 0xD0)).decode("utf-8")
        if 0xD4 <= marker <= 0xD6:
            return [self.value() for _ in range(self.size(marker, 0xD4))]
        if 0xD8 <= marker <= 0xDA:
            return self.map(self.size(marker, 0xD8))
        raise ValueError(f"unknown PackStream marker 0x{marker:02X}")

    def map(self, n):
        result = {}
        for _ in range(n):
            key = self.value()
            result[key] = self.value()
        return result


# ---------------------------------------------------------------- Bolt framing (both sides)


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def recv_message(conn):
    """One chunked Bolt message (NOOP chunks skipped), decoded."""
    data = b""
    while True:
        size = struct.unpack(">H", recv_exact(conn, 2))[0]
        if size == 0:
            if data:
                break
            continue  # NOOP
        data += recv_exact(conn, size)
    unpacker = Unpacker(data)
    message = unpacker.value()
    if not isinstance(message, Structure) or unpacker.pos != len(data):
        raise ValueError("not a Bolt message")
    return message


def send_message(conn, tag, *fields):
    body = bytearray()
    pack(Structure(tag, list(fields)), body)
    out = bytearray()
    for i in range(0, len(body), 0xFFFF):
        chunk = body[i : i + 0xFFFF]
        out += struct.pack(">H", len(chunk)) + chunk
    out += b"\x00\x00"
    conn.sendall(out)


# ---------------------------------------------------------------- the cluster

SUCCESS, RECORD, IGNORED, FAILURE = 0x70, 0x71, 0x7E, 0x7F


class BoltFailure(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Cluster:
    def __init__(self, config):
        self.lock = threading.Lock()
        self.ttl = int(config.get("ttl", 300))
        self.version = config.get("version", "3.8.0")
        self.bolt_versions = [
            tuple(int(p) for p in v.split(".")) for v in config.get("bolt_versions", ["5.2", "4.3", "4.1", "4.0"])
        ]
        self.auth = config.get("auth")
        self.tls = None
        if config.get("tls"):
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(config["tls"]["cert"], config["tls"]["key"])
        self.journal_path = config.get("journal")
        self.instances = {}
        self.order = []
        for spec in config["instances"]:
            inst = dict(spec)
            inst.setdefault("coordinator_server", "")
            inst.setdefault("health", "up")
            inst.setdefault("registered", True)
            self.instances[inst["name"]] = inst
            self.order.append(inst["name"])
        self.listeners = {}
        self.aliases = {}
        self.connections = {name: set() for name in self.order}

    def is_coordinator(self, name):
        return bool(self.instances[name]["coordinator_server"])

    def journal(self, instance, message, query=None):
        if not self.journal_path:
            return
        line = json.dumps({"instance": instance, "message": message, "query": query})
        with self.lock, open(self.journal_path, "a") as f:
            f.write(line + "\n")

    # -- listeners
    def listen(self, name):
        inst = self.instances[name]
        host, port = inst["listen"].rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(16)
        bound = f"{host}:{sock.getsockname()[1]}"
        inst["listen"] = bound
        if inst.get("bolt_server") == "@listen":
            inst["bolt_server"] = bound
        self.listeners[name] = sock
        threading.Thread(target=self.accept_loop, args=(name, sock), daemon=True).start()
        return bound

    def accept_loop(self, name, sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections[name].add(conn)
            threading.Thread(target=Session(self, name, conn).serve, daemon=True).start()

    def down(self, name):
        with self.lock:
            self.instances[name]["health"] = "down"
            sock = self.listeners.pop(name, None)
            conns = list(self.connections[name])
            self.connections[name].clear()
        if sock:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave
            # the socket listening until then.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def up(self, name):
        with self.lock:
            self.instances[name]["health"] = "up"
        return self.listen(name)

    def alias(self, name, address):
        """Also serve instance `name` on `address` (e.g. a node IP and its NodePort)."""
        host, port = address.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(16)
        with self.lock:
            self.aliases.setdefault(host, []).append(sock)
        threading.Thread(target=self.accept_loop, args=(name, sock), daemon=True).start()
        return f"{host}:{sock.getsockname()[1]}"

    def unalias(self, host):
        """The machine at `host` is gone: its listeners and open connections close."""
        with self.lock:
            socks = self.aliases.pop(host, [])
            conns = [c for cs in self.connections.values() for c in cs]
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for conn in conns:
            try:
                if conn.getsockname()[0] == host:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            except OSError:
                pass
        return len(socks)

    def make_main(self, name):
        """Failover: `name` becomes MAIN, every other data instance a REPLICA."""
        with self.lock:
            for other in self.order:
                if not self.is_coordinator(other):
                    self.instances[other]["role"] = "main" if other == name else "replica"

    def add(self, spec):
        """Scale-out: a new instance registered as the chart's setup Job would."""
        inst = dict(spec)
        inst.setdefault("coordinator_server", "")
        inst.setdefault("health", "up")
        inst.setdefault("registered", True)
        with self.lock:
            self.instances[inst["name"]] = inst
            self.order.append(inst["name"])
            self.connections[inst["name"]] = set()
        return self.listen(inst["name"])

    def make_leader(self, name):
        with self.lock:
            for other in self.order:
                if self.is_coordinator(other):
                    self.instances[other]["role"] = "leader" if other == name else "follower"

    # -- what coordinators answer
    def routing_table(self):
        with self.lock:
            insts = [self.instances[n] for n in self.order if self.instances[n]["registered"]]
            route = [i["bolt_server"] for i in insts if i["coordinator_server"]]
            write = [i["bolt_server"] for i in insts if i["role"] == "main" and i["health"] == "up"]
            read = [i["bolt_server"] for i in insts if i["role"] == "replica" and i["health"] == "up"]
        servers = []
        if write:
            servers.append({"addresses": write, "role": "WRITE"})
        servers.append({"addresses": read, "role": "READ"})
        servers.append({"addresses": route, "role": "ROUTE"})
        return {"ttl": self.ttl, "db": "memgraph", "servers": servers}

    def show_instances(self):
        fields = ["name", "bolt_server", "coordinator_server", "management_server", "health", "role", "last_succ_resp_ms"]
        with self.lock:
            registered = [n for n in self.order if self.instances[n]["registered"]]
            coordinators = [n for n in registered if self.is_coordinator(n)]
            data = [n for n in registered if not self.is_coordinator(n)]
            rows = [
                [self.instances[n][f] if f != "last_succ_resp_ms" else 0 for f in fields]
                for n in coordinators + data
            ]
        return fields, rows

    def update_config(self, on, query):
        m = re.fullmatch(
            r"\s*UPDATE\s+CONFIG\s+FOR\s+(COORDINATOR\s+(\d+)|INSTANCE\s+(\w+))\s*(\{.*\})\s*;?\s*",
            query,
            re.IGNORECASE | re.DOTALL,
        )
        if not m:
            raise BoltFailure("Memgraph.ClientError.Statement.SyntaxError", "test server: malformed UPDATE CONFIG")
        config = re.fullmatch(r"\{\s*['\"]bolt_server['\"]\s*:\s*['\"]([^'\"]+)['\"]\s*\}", m.group(4))
        if not config:
            raise BoltFailure(
                "Memgraph.ClientError.MemgraphError.MemgraphError",
                "test server: UPDATE CONFIG accepts only the bolt_server key",
            )
        address = config.group(1)
        if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}", address):
            raise BoltFailure("Memgraph.ClientError.MemgraphError.MemgraphError", f"test server: invalid bolt_server {address}")
        with self.lock:
            self.require_leader(on)
            if m.group(2) is not None:
                name = f"coordinator_{m.group(2)}"
                if name not in self.instances or not self.is_coordinator(name) or not self.instances[name]["registered"]:
                    raise BoltFailure("Memgraph.ClientError.MemgraphError.MemgraphError", f"test server: no coordinator with id {m.group(2)}")
            else:
                name = m.group(3)
                if name not in self.instances or self.is_coordinator(name) or not self.instances[name]["registered"]:
                    raise BoltFailure("Memgraph.ClientError.MemgraphError.MemgraphError", f"test server: no data instance named {name}")
            self.instances[name]["bolt_server"] = address

    def require_leader(self, on):
        """Writes go to the leader (3.8; later versions forward them). Call with the lock held."""
        if self.instances[on]["role"] != "leader":
            leader = next((n for n in self.order if self.instances[n]["role"] == "leader"), None)
            raise BoltFailure(
                "Memgraph.ClientError.MemgraphError.MemgraphError",
                f"test server: this coordinator is not the leader; the current leader is {leader}",
            )

    def register(self, on, query):
        """ADD COORDINATOR / REGISTER INSTANCE / SET INSTANCE .. TO MAIN, as the chart's
        cluster-setup Job sends them (on the leader)."""
        failure = "Memgraph.ClientError.MemgraphError.MemgraphError"
        with self.lock:
            self.require_leader(on)
        m = re.fullmatch(r"\s*SET\s+INSTANCE\s+(\w+)\s+TO\s+MAIN\s*;?\s*", query, re.IGNORECASE)
        if m:
            name = m.group(1)
            if name not in self.instances or self.is_coordinator(name) or not self.instances[name]["registered"]:
                raise BoltFailure(failure, f"test server: no registered data instance named {name}")
            self.make_main(name)
            return
        m = re.fullmatch(
            r"\s*(ADD\s+COORDINATOR\s+(\d+)|REGISTER\s+INSTANCE\s+(\w+))\s+WITH\s+CONFIG\s*(\{.*\})\s*;?\s*",
            query,
            re.IGNORECASE | re.DOTALL,
        )
        if not m:
            raise BoltFailure("Memgraph.ClientError.Statement.SyntaxError", "test server: malformed registration")
        config = dict(re.findall(r"['\"](\w+)['\"]\s*:\s*['\"]([^'\"]*)['\"]", m.group(4)))
        coordinator = m.group(2) is not None
        name = f"coordinator_{m.group(2)}" if coordinator else m.group(3)
        needed = ["bolt_server", "management_server", "coordinator_server" if coordinator else "replication_server"]
        missing = [key for key in needed if not config.get(key)]
        if missing:
            raise BoltFailure(failure, f"test server: {name}: missing {', '.join(missing)}")
        with self.lock:
            inst = self.instances.get(name)
            if inst is None:
                inst = {"name": name, "health": "up", "role": "follower" if coordinator else "replica"}
                self.instances[name] = inst
                self.order.append(name)
                self.connections[name] = set()
            elif inst["registered"]:
                raise BoltFailure(failure, f"test server: {name} is already registered")
            inst["registered"] = True
            inst["bolt_server"] = config["bolt_server"]
            inst["management_server"] = config["management_server"]
            inst["coordinator_server"] = config["coordinator_server"] if coordinator else ""
            if not coordinator and inst.get("role") not in ("main", "replica"):
                inst["role"] = "replica"


class Session:
    """One client connection to one instance."""

    def __init__(self, cluster, name, conn):
        self.cluster = cluster
        self.name = name
        self.conn = conn
        self.version = None
        self.state = "CONNECTED"  # CONNECTED, AUTHENTICATION, READY, FAILED, DEFUNCT
        self.pending = None  # (fields, rows, type) of the last RUN
        self.in_tx = False

    def send(self, tag, *fields):
        send_message(self.conn, tag, *fields)

    def handshake(self):
        data = recv_exact(self.conn, 20)
        if data[:4] != b"\x60\x60\xB0\x17":
            raise ConnectionError("not Bolt")
        for i in range(4):
            _, span, minor, major = data[4 + 4 * i : 8 + 4 * i]
            if (major, minor, span) == (0xFF, 0x01, 0x00) or major == 0:
                continue  # handshake manifest (not offered by Memgraph) or padding
            for offered in self.cluster.bolt_versions:
                if offered[0] == major and minor - span <= offered[1] <= minor:
                    self.version = offered
                    self.conn.sendall(bytes([0, 0, offered[1], offered[0]]))
                    return
        self.conn.sendall(b"\x00\x00\x00\x00")
        raise ConnectionError("no common version")

    def start_tls(self):
        raw = self.conn
        try:
            wrapped = self.cluster.tls.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.cluster.journal(self.name, "TLS handshake failed")
            raise
        # wrap_socket takes over the descriptor: `down` must shut down the wrapped socket.
        with self.cluster.lock:
            conns = self.cluster.connections[self.name]
            if raw in conns:
                conns.discard(raw)
                conns.add(wrapped)
        self.conn = wrapped

    def serve(self):
        try:
            if self.cluster.tls is not None:
                self.start_tls()
            self.handshake()
            while self.state != "DEFUNCT":
                self.handle(recv_message(self.conn))
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            with self.cluster.lock:
                self.cluster.connections[self.name].discard(self.conn)
            try:
                self.conn.close()
            except OSError:
                pass

    def check_auth(self, extra):
        auth = self.cluster.auth
        if auth is None:
            return
        if extra.get("scheme") != "basic" or extra.get("principal") != auth["user"] or extra.get("credentials") != auth["password"]:
            raise BoltFailure("Memgraph.ClientError.Security.Unauthenticated", "Authentication failure")

    def handle(self, msg):
        tag, fields = msg.tag, msg.fields
        names = {0x01: "HELLO", 0x6A: "LOGON", 0x6B: "LOGOFF", 0x02: "GOODBYE", 0x0F: "RESET", 0x10: "RUN", 0x3F: "PULL",
                 0x2F: "DISCARD", 0x11: "BEGIN", 0x12: "COMMIT", 0x13: "ROLLBACK", 0x66: "ROUTE"}
        name = names.get(tag, f"0x{tag:02X}")
        query = fields[0] if tag == 0x10 and fields else None
        self.cluster.journal(self.name, name, query)
        if tag == 0x02:
            self.state = "DEFUNCT"
            return
        if tag == 0x0F:
            self.state = "READY" if self.state in ("READY", "FAILED") else self.state
            self.pending, self.in_tx = None, False
            self.send(SUCCESS, {})
            return
        if self.state == "FAILED":
            self.send(IGNORED)
            return
        try:
            self.dispatch(tag, name, fields)
        except BoltFailure as failure:
            # Journaled too, so a test can tell a refused statement from an executed one.
            self.cluster.journal(self.name, "FAILURE", query)
            self.send(FAILURE, {"code": failure.code, "message": failure.message})
            self.state = "DEFUNCT" if self.state in ("CONNECTED", "AUTHENTICATION") else "FAILED"
            self.pending = None

    def dispatch(self, tag, name, fields):
        bolt5_1 = self.version >= (5, 1)
        if self.state == "CONNECTED":
            if tag != 0x01:
                raise BoltFailure("Memgraph.ClientError.Request.Invalid", f"test server: expected HELLO, got {name}")
            if not bolt5_1:
                self.check_auth(fields[0])
            self.state = "AUTHENTICATION" if bolt5_1 else "READY"
            self.send(SUCCESS, {"server": SERVER_AGENT, "connection_id": f"bolt-{id(self) & 0xFFFF}"})
            return
        if self.state == "AUTHENTICATION":
            if tag != 0x6A:
                raise BoltFailure("Memgraph.ClientError.Request.Invalid", f"test server: expected LOGON, got {name}")
            self.check_auth(fields[0])
            self.state = "READY"
            self.send(SUCCESS, {})
            return
        if tag == 0x6B and bolt5_1:
            self.state = "AUTHENTICATION"
            self.send(SUCCESS, {})
        elif tag == 0x66:
            if not self.cluster.is_coordinator(self.name):
                raise BoltFailure(
                    "Memgraph.ClientError.MemgraphError.MemgraphError",
                    "test server: this data instance is managed by coordinators; send ROUTE to a coordinator",
                )
            self.send(SUCCESS, {"rt": self.cluster.routing_table()})
        elif tag == 0x11:
            self.in_tx = True
            self.send(SUCCESS, {})
        elif tag in (0x12, 0x13):
            self.in_tx = False
            self.send(SUCCESS, {})
        elif tag == 0x10:
            fields_, rows, kind = self.run(fields[0], fields[1] if len(fields) > 1 else {})
            self.pending = (fields_, rows, kind)
            meta = {"fields": fields_, "t_first": 0}
            if self.in_tx:
                meta["qid"] = 0
            self.send(SUCCESS, meta)
        elif tag in (0x3F, 0x2F):
            if self.pending is None:
                raise BoltFailure("Memgraph.ClientError.Request.Invalid", f"test server: {name} without RUN")
            fields_, rows, kind = self.pending
            self.pending = None
            if tag == 0x3F:
                for row in rows:
                    self.send(RECORD, row)
            self.send(SUCCESS, {"has_more": False, "type": kind, "t_last": 0, "db": "memgraph"})
        else:
            raise BoltFailure("Memgraph.ClientError.Request.Invalid", f"test server: unsupported message {name}")

    def run(self, query, params):
        text = query.strip().rstrip(";").strip()
        upper = " ".join(text.upper().split())
        if upper == "SHOW VERSION":
            return ["version"], [[self.cluster.version]], "r"
        if self.cluster.is_coordinator(self.name):
            if upper == "SHOW INSTANCES":
                fields, rows = self.cluster.show_instances()
                return fields, rows, "r"
            if upper.startswith("UPDATE CONFIG"):
                self.cluster.update_config(self.name, text)
                return [], [], "s"
            if upper.startswith(("ADD COORDINATOR", "REGISTER INSTANCE", "SET INSTANCE")):
                self.cluster.register(self.name, text)
                return [], [], "s"
            raise BoltFailure("Memgraph.ClientError.MemgraphError.MemgraphError", "Coordinator can run only coordinator queries!")
        m = re.fullmatch(r"RETURN\s+(\$\w+|-?\d+|'[^']*')\s+AS\s+(\w+)", text, re.IGNORECASE)
        if not m:
            raise BoltFailure("Memgraph.ClientError.Statement.SyntaxError", "test server: only RETURN <literal or $param> AS <name> is supported")
        literal = m.group(1)
        if literal.startswith("$"):
            if literal[1:] not in params:
                raise BoltFailure("Memgraph.ClientError.Statement.SemanticError", f"Parameter {literal} not provided.")
            value = params[literal[1:]]
        elif literal.startswith("'"):
            value = literal[1:-1]
        else:
            value = int(literal)
        return [m.group(2)], [[value]], "r"


def main():
    with open(sys.argv[1]) as f:
        config = json.load(f)
    cluster = Cluster(config)
    bound = {name: cluster.listen(name) for name in cluster.order if cluster.instances[name].get("listen")}
    print(json.dumps({"listening": bound}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "unalias":
                print(f"ok unalias {words[1]} {cluster.unalias(words[1])}", flush=True)
                continue
            if words[0] == "add":
                spec = json.loads(line.split(None, 1)[1])
                print(f"ok add {spec['name']} {cluster.add(spec)}", flush=True)
                continue
            command, name = words[0], words[1]
            if name not in cluster.instances:
                raise KeyError(name)
            if command == "down":
                cluster.down(name)
                print(f"ok down {name}", flush=True)
            elif command == "up":
                print(f"ok up {name} {cluster.up(name)}", flush=True)
            elif command == "alias":
                print(f"ok alias {name} {cluster.alias(name, words[2])}", flush=True)
            elif command == "main":
                cluster.make_main(name)
                print(f"ok main {name}", flush=True)
            elif command == "leader":
                cluster.make_leader(name)
                print(f"ok leader {name}", flush=True)
            else:
                print(f"error unknown command {command}", flush=True)
        except (IndexError, KeyError, OSError, ValueError) as e:
            print(f"error {e!r}", flush=True)


if __name__ == "__main__":
    main()
