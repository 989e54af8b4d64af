#!/usr/bin/env python3
"""A model of a Memgraph HA cluster as its clients see it, version by version, for tests.

Real Memgraph is the judge: every answer is taken from memgraph/memgraph at a release tag
and cited next to the code that gives it (path @ tag). `config["version"]` picks the release
played: 2.22, 3.0-3.7, 3.8, 3.9-3.12 differ where `Version` says. Something the source was
not read for is refused with a message starting "test server:", never answered.

Standard library only. Each instance (coordinators and data instances) gets its own TCP
listener, standing for its address (node IP:nodePort, pod IP); they share one instance table,
as Memgraph's coordinators share the Raft state:

- Bolt handshake (4.0, 4.1, 4.3, 5.2 by default), HELLO, LOGON (5.1+), RESET, GOODBYE,
  BEGIN/COMMIT/ROLLBACK, RUN/PULL/DISCARD, with FAILED/IGNORED semantics.
- ROUTE: the routing table as Memgraph builds it (Cluster.routing_table).
- A coordinator runs coordinator queries only: SHOW INSTANCES, UPDATE CONFIG (3.8+),
  ADD/REMOVE COORDINATOR, REGISTER/UNREGISTER INSTANCE, SET INSTANCE .. TO MAIN. Anything
  else, SHOW VERSION included, is refused as Memgraph refuses it.
- Writes on a follower: refused at 3.8 and before (with Memgraph's texts), forwarded to the
  leader from 3.9 (journaled on the leader as message "FORWARDED").
- An instance with "registered": false is not in the Raft state until ADD COORDINATOR /
  REGISTER INSTANCE names it; one without "listen" has no listener here.
- Data instances answer SHOW VERSION and `RETURN <literal or $param> AS <name>`.

Usage: memgraph_coordinator.py CONFIG.json. Prints one JSON line
{"listening": {name: "host:port"}} once every listener is bound. Commands on standard input,
one per line, each answered by "ok ..." or "error ...":
  down NAME, up NAME      close / reopen NAME's listener (health down / up)
  leader NAME             a Raft election won by coordinator NAME
  main NAME               a failover: NAME becomes the main
  alias NAME HOST:PORT    also serve NAME there;  unalias HOST  that machine is gone
  add JSON                a new instance (scale-out), listening
A journal of every request (JSON lines: instance, message, query) goes to config["journal"];
a request answered with FAILURE is followed by an entry with message "FAILURE".

TLS (Memgraph with --bolt-cert-file/--bolt-key-file): config["tls"] = {"cert", "key"} makes
every listener TLS-only; a client that does not complete the handshake is journaled as
"TLS handshake failed".
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


# ---------------------------------------------------------------- what a Memgraph version does
#
# Every answer below is read in memgraph/memgraph at a release tag; each is cited as
# "path @ tag". Anything the source was not read for is refused with a message starting
# "test server:", so a test can never pass on an answer real Memgraph would not give.

SUCCESS, RECORD, IGNORED, FAILURE = 0x70, 0x71, 0x7E, 0x7F

# src/communication/bolt/v1/states/handlers.hpp @ v3.8.0 (line 61): every ClientError, query
# and syntax errors alike, reaches the client under this one code.
CLIENT_ERROR = "Memgraph.ClientError.MemgraphError.MemgraphError"
# src/communication/bolt/v1/states/init.hpp @ v3.8.0 (line 36)
UNAUTHENTICATED = "Memgraph.ClientError.Security.Unauthenticated"
# src/query/interpreter.cpp @ v3.8.0 (line 275) kSocketErrorExplanation
SOCKET_EXPLANATION = (
    "The socket address must be a string defining the address and port, delimited by a "
    "single colon. The address must be valid and the port must be an integer."
)


def parse_version(text):
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


class Version:
    """The behaviours that change between releases, each with the tag it appears at."""

    def __init__(self, text):
        self.text = text
        v = parse_version(text)
        # UPDATE CONFIG: MemgraphCypher.g4 rule updateConfig, first at v3.8.0 (absent v3.7.2).
        self.update_config = v >= (3, 8, 0)
        # REMOVE COORDINATOR: MemgraphCypher.g4 rule removeCoordinatorInstance, v3.0.0 on
        # (absent v2.22.0).
        self.remove_coordinator = v >= (3, 0, 0)
        # `$param` as a config value: MemgraphCypher.g4 configKeyValuePair
        # `literal ':' ( literal | parameter )` @ v3.10.0 (`literal ':' literal` @ v3.8.0).
        self.config_parameters = v >= (3, 10, 0)
        # A follower forwards writes to the leader: src/coordination/coordinator_instance.cpp
        # @ v3.9.0, ForwardToLeader<...> in UpdateConfig, RegisterReplicationInstance, ...
        # @ v3.8.0 the same functions run locally and the Raft append fails on a follower.
        self.forwards_to_leader = v >= (3, 9, 0)
        # A follower answers SHOW INSTANCES with the leader's view (3.0+), its own
        # (health "unknown") when the leader is unreachable: coordinator_instance.cpp @ v3.8.0
        # ShowInstancesStatusAsFollower; shared/memgraph-ha.md.
        self.show_instances_forwarded = v >= (3, 0, 0)
        # ROUTE reply `db`: always null @ v2.22.0 (src/glue/SessionHL.cpp line 321); the
        # requested db or null from v3.6.0 (SessionHL.cpp; null-only @ v3.5.2).
        self.route_echoes_db = v >= (3, 6, 0)
        # ROUTE on a data instance: refused @ v3.12.0 (src/query/interpreter.cpp
        # Interpreter::Route "Cannot fetch routing table from a data instance!"); before,
        # answered with the routing context's address as WRITE (main) or READ.
        self.data_refuses_route = v >= (3, 12, 0)


class BoltFailure(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def query_error(message):
    return BoltFailure(CLIENT_ERROR, message)


# ---------------------------------------------------------------- the coordinator grammar
#
# src/query/frontend/opencypher/grammar/MemgraphCypher.g4 @ v3.8.0 / v3.10.0:
#   showInstances   : SHOW INSTANCES ;
#   updateConfig    : UPDATE CONFIG FOR ( INSTANCE instanceName | COORDINATOR coordinatorServerId ) configsMap=configMap ;
#   addCoordinatorInstance : ADD COORDINATOR coordinatorServerId WITH CONFIG configsMap=configMap ;
#   removeCoordinatorInstance : REMOVE COORDINATOR coordinatorServerId ;
#   registerInstanceOnCoordinator : REGISTER INSTANCE instanceName ( AS ASYNC | AS STRICT_SYNC ) ? WITH CONFIG configsMap=configMap ;
#   unregisterInstanceOnCoordinator : UNREGISTER INSTANCE instanceName ;
#   setInstanceToMain : SET INSTANCE instanceName TO MAIN ;
#   instanceName : symbolicName ;  coordinatorServerId : literal ;
#   configMap : '{' ( configKeyValuePair ( ',' configKeyValuePair )* )? '}' ;
# A symbolicName cannot start with a digit, so `instance 1abc` is a syntax error.

TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|`(?P<escaped>[^`]*)`|(?P<int>\d+)"
    r"|'(?P<sq>(?:[^'\\]|\\.)*)'|\"(?P<dq>(?:[^\"\\]|\\.)*)\"|\$(?P<param>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<punct>[{}:,;()\[\].=<>*+-]))",
    re.DOTALL,
)


def syntax_error(position, text):
    # The prefix is Memgraph's (src/query/frontend/opencypher/parser.hpp @ v3.8.0,
    # FirstMessageErrorListener); the ANTLR part after it is approximated.
    return query_error(
        f"Error on line 1 position {position + 1}. The underlying parsing error is {text}"
    )


def tokenize(query):
    tokens, pos = [], 0
    while pos < len(query):
        if query[pos:].strip() == "":
            break
        m = TOKEN.match(query, pos)
        if not m or m.end() == pos:
            at = len(query) - len(query[pos:].lstrip())
            raise syntax_error(at, f"token recognition error at: '{query[at:at + 10]}'")
        start = m.start(m.lastgroup)
        kind = m.lastgroup
        value = m.group(kind)
        if kind in ("sq", "dq"):
            kind, value = "str", re.sub(r"\\(.)", r"\1", value)
        elif kind == "escaped":
            kind = "name"
        elif kind == "int":
            value = int(value)
        tokens.append((kind, value, start))
        pos = m.end()
    while tokens and tokens[-1][:2] == ("punct", ";"):
        tokens.pop()
    return tokens


class Parser:
    def __init__(self, query, version):
        self.query = query
        self.tokens = tokenize(query)
        self.i = 0
        self.version = version

    def peek(self, n=0):
        return self.tokens[self.i + n] if self.i + n < len(self.tokens) else ("eof", "<EOF>", len(self.query))

    def fail(self, expecting):
        kind, value, pos = self.peek()
        shown = value if kind != "str" else f"'{value}'"
        return syntax_error(pos, f"mismatched input '{shown}' expecting {expecting}")

    def keyword(self, word):
        kind, value, _ = self.peek()
        if kind == "name" and value.upper() == word:
            self.i += 1
            return True
        return False

    def expect(self, word):
        if not self.keyword(word):
            raise self.fail(word)

    def words(self, *words):
        return all(
            self.peek(k)[0] == "name" and str(self.peek(k)[1]).upper() == w for k, w in enumerate(words)
        )

    def symbolic_name(self):
        kind, value, _ = self.peek()
        if kind != "name":
            raise self.fail("a symbolic name")
        self.i += 1
        return value

    def literal(self):
        kind, value, _ = self.peek()
        if kind not in ("int", "str"):
            raise self.fail("a literal")
        self.i += 1
        return value

    def punct(self, ch):
        kind, value, _ = self.peek()
        if (kind, value) != ("punct", ch):
            raise self.fail(f"'{ch}'")
        self.i += 1

    def config_map(self, params):
        self.punct("{")
        entries = []
        if self.peek()[:2] != ("punct", "}"):
            while True:
                key = self.literal()
                self.punct(":")
                if self.peek()[0] == "param" and self.version.config_parameters:
                    name = self.peek()[1]
                    self.i += 1
                    if name not in params:
                        # src/query/cypher_query_interpreter.cpp @ v3.10.0 (line 67)
                        raise query_error(f"Parameter ${name} not provided.")
                    value = params[name]
                else:
                    value = self.literal()
                entries.append((key, value))
                if self.peek()[:2] == ("punct", ","):
                    self.i += 1
                    continue
                break
        self.punct("}")
        # ParseConfigMap (src/query/interpreter.cpp @ v3.10.0 line 168): string keys and
        # values only, else "Failed to parse config map!".
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in entries):
            raise query_error("Failed to parse config map!")
        return dict(entries)

    def end(self):
        if self.peek()[0] != "eof":
            raise self.fail("<EOF>")

    def coordinator_query(self, params):
        """The statement as (action, fields), or None when it is not a coordinator query."""
        v = self.version
        if self.words("SHOW", "INSTANCES"):
            self.i += 2
            self.end()
            return "show_instances", {}
        if self.words("UPDATE", "CONFIG") and v.update_config:
            self.i += 2
            self.expect("FOR")
            if self.keyword("INSTANCE"):
                target = ("instance", self.symbolic_name())
            elif self.keyword("COORDINATOR"):
                target = ("coordinator", self.literal())
            else:
                raise self.fail("{COORDINATOR, INSTANCE}")
            config = self.config_map(params)
            self.end()
            return "update_config", {"target": target, "config": config}
        if self.words("ADD", "COORDINATOR"):
            self.i += 2
            coordinator_id = self.literal()
            self.expect("WITH")
            self.expect("CONFIG")
            config = self.config_map(params)
            self.end()
            return "add_coordinator", {"id": coordinator_id, "config": config}
        if self.words("REMOVE", "COORDINATOR") and v.remove_coordinator:
            self.i += 2
            coordinator_id = self.literal()
            self.end()
            return "remove_coordinator", {"id": coordinator_id}
        if self.words("REGISTER", "INSTANCE"):
            self.i += 2
            name = self.symbolic_name()
            if self.keyword("AS"):
                if not (self.keyword("ASYNC") or self.keyword("STRICT_SYNC")):
                    raise self.fail("{ASYNC, STRICT_SYNC}")
            self.expect("WITH")
            self.expect("CONFIG")
            config = self.config_map(params)
            self.end()
            return "register_instance", {"name": name, "config": config}
        if self.words("UNREGISTER", "INSTANCE"):
            self.i += 2
            name = self.symbolic_name()
            self.end()
            return "unregister_instance", {"name": name}
        if self.words("SET", "INSTANCE"):
            self.i += 2
            name = self.symbolic_name()
            self.expect("TO")
            self.expect("MAIN")
            self.end()
            return "set_main", {"name": name}
        for words in (("UPDATE", "CONFIG"), ("REMOVE", "COORDINATOR")):
            if self.words(*words):
                # Not in this release's grammar (see Version): the parser stops at the
                # first word it has no rule for.
                raise self.fail("a clause")
        return None


def parse_socket_address(address):
    """io::network::Endpoint::ParseAndCreateSocketOrAddress (src/io/network/endpoint.cpp
    @ v3.8.0 line 149): split on ':'; more than two parts (any IPv6 literal, bracketed or
    not) or no port is invalid; the port is cast to uint16 unchecked; the host is kept
    verbatim."""
    parts = address.split(":")
    if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
        return None
    return f"{parts[0]}:{int(parts[1]) % 65536}"


# src/query/interpreter.cpp @ v3.8.0 (lines 1768-2019): a coordinator query on a data instance.
ONLY_COORDINATOR = {
    "show_instances": "Only coordinator can run SHOW INSTANCES.",
    "update_config": "Only coordinator can update config!",
    "add_coordinator": "Only coordinator can add coordinator instance!",
    "remove_coordinator": "Only coordinator can remove coordinator instance!",
    "register_instance": "Only coordinator can register coordinator server!",
    "unregister_instance": "Only coordinator can unregister instance!",
    "set_main": "Only coordinator can register coordinator server!",
}

# src/query/interpreter.cpp @ v3.8.0: the NOT_LEADER answers of a follower (before 3.9).
NOT_LEADER = {
    "register_instance": "Couldn't register replica instance since coordinator is not a leader!",
    "unregister_instance": "Couldn't unregister replica instance since coordinator is not a leader!",
    "set_main": "Couldn't set instance to main since coordinator is not a leader!",
}

# ---------------------------------------------------------------- the cluster


class Cluster:
    def __init__(self, config):
        self.lock = threading.Lock()
        self.ttl = int(config.get("ttl", 300))
        self.version = Version(config.get("version", "3.8.0"))
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
        for spec in config.get("instances", []):
            self._insert(spec)
        self.listeners = {}
        self.aliases = {}

    def _insert(self, spec):
        inst = dict(spec)
        inst.setdefault("coordinator_server", "")
        inst.setdefault("management_server", "")
        inst.setdefault("replication_server", "")
        inst.setdefault("health", "up")
        inst.setdefault("registered", True)
        inst.setdefault("role", "follower" if inst["coordinator_server"] else "replica")
        self.instances[inst["name"]] = inst
        if inst["name"] not in self.order:
            self.order.append(inst["name"])
        self.connections = getattr(self, "connections", {})
        self.connections.setdefault(inst["name"], set())
        return inst

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

    @staticmethod
    def _close(sock):
        # shutdown() wakes a thread blocked in accept()/recv(); close() alone would not.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def down(self, name):
        with self.lock:
            self.instances[name]["health"] = "down"
            sock = self.listeners.pop(name, None)
            conns = list(self.connections[name])
            self.connections[name].clear()
        if sock:
            self._close(sock)
        for conn in conns:
            self._close(conn)

    def up(self, name):
        with self.lock:
            self.instances[name]["health"] = "up"
        return self.listen(name)

    def alias(self, name, address):
        """Also serve instance `name` on `address` (a node IP and its NodePort, a pod IP)."""
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
            self._close(sock)
        for conn in conns:
            try:
                if conn.getsockname()[0] == host:
                    self._close(conn)
            except OSError:
                pass
        return len(socks)

    def make_main(self, name):
        """Failover (the leader's doing): `name` becomes the Raft main, every other data
        instance a replica."""
        with self.lock:
            for other in self.order:
                if not self.is_coordinator(other):
                    self.instances[other]["role"] = "main" if other == name else "replica"

    def add(self, spec):
        """Scale-out: a new instance registered as the chart's setup Job would."""
        with self.lock:
            self._insert(spec)
        return self.listen(spec["name"])

    def make_leader(self, name):
        """A Raft election won by `name`."""
        with self.lock:
            for other in self.order:
                if self.is_coordinator(other):
                    self.instances[other]["role"] = "leader" if other == name else "follower"

    # -- the Raft state. Call with the lock held.
    def registered(self, coordinators):
        return [
            self.instances[n]
            for n in self.order
            if self.instances[n]["registered"] and self.is_coordinator(n) == coordinators
        ]

    def leader(self):
        return next((i for i in self.registered(True) if i["role"] == "leader"), None)

    @staticmethod
    def coordinator_id(inst):
        return int(inst["name"].rsplit("_", 1)[1])

    # -- what coordinators answer
    def routing_table(self, db):
        """src/coordination/include/coordination/utils.hpp @ v3.8.0 CreateRoutingTable
        (src/coordination/raft_state.cpp @ v2.22.0 GetRoutingTable): WRITE = the Raft main's
        bolt_server, READ = every other data instance (filtered by replication lag, which
        this server has none of; never by health), an empty WRITE or READ left out,
        ROUTE = every coordinator's bolt_server. ttl and db: src/glue/SessionHL.cpp."""
        with self.lock:
            data = self.registered(False)
            write = [i["bolt_server"] for i in data if i["role"] == "main"]
            read = [i["bolt_server"] for i in data if i["role"] != "main"]
            route = [i["bolt_server"] for i in self.registered(True)]
        servers = []
        if write:
            servers.append({"addresses": write, "role": "WRITE"})
        if read:
            servers.append({"addresses": read, "role": "READ"})
        servers.append({"addresses": route, "role": "ROUTE"})
        return {"ttl": self.ttl, "db": db if self.version.route_echoes_db else None, "servers": servers}

    def show_instances(self, on):
        """coordinator_instance.cpp @ v3.8.0: GetCoordinatorsInstanceStatus,
        ShowInstancesAsLeader (data role "unknown" and health "down" when unreachable) and
        ShowInstancesStatusAsFollower (every health "unknown"). Columns:
        src/query/interpreter.cpp @ v3.8.0 SHOW_INSTANCES."""
        fields = ["name", "bolt_server", "coordinator_server", "management_server", "health", "role", "last_succ_resp_ms"]
        with self.lock:
            leader = self.leader()
            me = self.instances[on]
            as_leader = me["role"] == "leader" or (
                self.version.show_instances_forwarded and leader is not None and leader["health"] == "up"
            )
            rows = []
            for inst in self.registered(True):
                health = inst["health"] if as_leader else "unknown"
                rows.append([inst["name"], inst["bolt_server"], inst["coordinator_server"],
                             inst["management_server"], health, inst["role"], 0])
            for inst in self.registered(False):
                if as_leader:
                    health = inst["health"]
                    role = inst["role"] if health == "up" else "unknown"
                else:
                    health, role = "unknown", inst["role"]
                rows.append([inst["name"], inst["bolt_server"], "", inst["management_server"], health, role, 0])
        return fields, rows

    def run_coordinator_query(self, on, action, fields):
        """One coordinator query on coordinator `on`; rows for SHOW INSTANCES, else none."""
        if action == "show_instances":
            return self.show_instances(on)
        with self.lock:
            me = self.instances[on]
            leader = self.leader()
            if me["role"] != "leader":
                self.follower_write(on, action, fields, leader)
                on = leader["name"]
            getattr(self, action)(fields)
        return [], []

    def follower_write(self, on, action, fields, leader):
        """A write sent to a follower. Lock held. Returns when the leader should apply it."""
        if self.version.forwards_to_leader:
            # coordinator_instance.hpp @ v3.9.0 ForwardToLeader; the answers:
            # src/query/interpreter.cpp @ v3.9.0 UpdateConfig (LEADER_NOT_FOUND, LEADER_FAILED).
            if leader is None:
                raise query_error("Tried to forward the request to the current leader but the leader couldn't be found!")
            if leader["health"] != "up":
                raise query_error(
                    "Request forwarded to the leader but leader failed with request processing! Check logs on "
                    "the leader to find out what happened!"
                )
            try:
                getattr(self, "check_" + action, lambda f: None)(fields)
            except BoltFailure:
                # The follower only learns that the leader's RPC failed.
                raise query_error(
                    "Request forwarded to the leader but leader failed with request processing! Check logs on "
                    "the leader to find out what happened!"
                )
            threading.Thread(target=self.journal, args=(leader["name"], "FORWARDED", None), daemon=True).start()
            return
        if action == "update_config":
            # coordinator_instance.cpp @ v3.8.0 UpdateConfig: the target is looked up in the
            # follower's copy of the state, then AppendClusterUpdate fails (RAFT_FAILURE).
            self.check_update_config(fields)
            raise query_error("Couldn't update config because appending to Raft log failed.")
        if action in NOT_LEADER:
            if leader is not None:
                raise query_error(
                    f"{NOT_LEADER[action]} Current leader is coordinator with id {self.coordinator_id(leader)} "
                    f"with bolt socket address {leader['bolt_server']}"
                )
            raise query_error(
                f"{NOT_LEADER[action]} Try contacting other coordinators as there might be leader election "
                "happening or other coordinators are down."
            )
        if action == "add_coordinator":
            # AddCoordinatorInstance has no NOT_LEADER @ v3.8.0; the Raft change a follower
            # cannot make ends as RAFT_LOG_ERROR (src/query/interpreter.cpp @ v3.8.0).
            raise query_error("Couldn't add coordinator because Raft log couldn't be accepted. Please try again!")
        raise query_error(f"test server: {action} on a follower before 3.9 is not modelled; send it to the leader")

    # -- the writes, as the leader applies them (lock held)
    def find_coordinator(self, coordinator_id):
        return next(
            (i for i in self.registered(True) if isinstance(coordinator_id, int) and self.coordinator_id(i) == coordinator_id),
            None,
        )

    def find_data(self, name):
        return next((i for i in self.registered(False) if i["name"] == name), None)

    def check_update_config(self, fields):
        # src/query/interpreter.cpp @ v3.8.0 UPDATE_CONFIG and CoordQueryHandler::UpdateConfig
        config = fields["config"]
        if len(config) != 1:
            raise query_error("Config map must contain exactly 1 entry: bolt_server!")
        if "bolt_server" not in config:
            raise query_error("Config map must contain bolt_server entry!")
        address = parse_socket_address(config["bolt_server"])
        if address is None:
            raise query_error(f"Invalid bolt socket address. {SOCKET_EXPLANATION}")
        kind, key = fields["target"]
        if kind == "coordinator":
            target = self.find_coordinator(key)
            if target is None:
                raise query_error(f"Couldn't update config for the coordinator {key} because it doesn't exist!")
        else:
            target = self.find_data(key)
            if target is None:
                raise query_error(f"Couldn't update config for the repl instance {key} because it doesn't exist!")
        return target, address

    def update_config(self, fields):
        target, address = self.check_update_config(fields)
        target["bolt_server"] = address

    def check_add_coordinator(self, fields):
        # src/query/interpreter.cpp @ v3.8.0 ADD_COORDINATOR_INSTANCE, AddCoordinatorInstance
        config = fields["config"]
        if len(config) != 3:
            raise query_error(
                "Config map must contain exactly 3 entries: coordinator_server, bolt_server and  management_server!"
            )
        for key in ("coordinator_server", "bolt_server", "management_server"):
            if key not in config:
                raise query_error(f"Config map must contain {key} entry!")
        for key, label in (("coordinator_server", "coordinator"), ("management_server", "management"),
                           ("bolt_server", "bolt")):
            if parse_socket_address(config[key]) is None:
                raise query_error(f"Invalid {label} socket address. {SOCKET_EXPLANATION}")
        if self.find_coordinator(fields["id"]) is not None:
            raise query_error("Couldn't add coordinator since instance with such id already exists!")
        others = self.registered(True)
        if any(i["management_server"] == config["management_server"] for i in others):
            raise query_error("Couldn't add coordinator since instance with such management endpoint already exists!")
        if any(i["coordinator_server"] == config["coordinator_server"] for i in others):
            raise query_error("Couldn't add coordinator since instance with such coordinator server already exists!")

    def add_coordinator(self, fields):
        self.check_add_coordinator(fields)
        config = fields["config"]
        name = f"coordinator_{fields['id']}"
        inst = self.instances.get(name) or self._insert({"name": name, "coordinator_server": config["coordinator_server"]})
        inst.update(registered=True, bolt_server=config["bolt_server"], management_server=config["management_server"],
                    coordinator_server=config["coordinator_server"])

    def check_remove_coordinator(self, fields):
        if self.find_coordinator(fields["id"]) is None:
            # src/query/interpreter.cpp @ v3.8.0 RemoveCoordinatorInstance (NO_SUCH_ID)
            raise query_error(
                f"Couldn't remove coordinator instance because coordinator with id {fields['id']} doesn't exist!"
            )

    def remove_coordinator(self, fields):
        self.check_remove_coordinator(fields)
        self.find_coordinator(fields["id"])["registered"] = False

    def check_register_instance(self, fields):
        # src/query/interpreter.cpp @ v3.8.0 REGISTER_INSTANCE, RegisterReplicationInstance
        config = fields["config"]
        if len(config) != 3:
            raise query_error(
                "Config map must contain exactly 3 entries: bolt_server, management_server and replication_server!"
            )
        for key in ("replication_server", "management_server", "bolt_server"):
            if key not in config:
                raise query_error(f"Config map must contain {key} entry!")
        for key, label in (("bolt_server", "bolt"), ("management_server", "management"),
                           ("replication_server", "replication")):
            if parse_socket_address(config[key]) is None:
                raise query_error(f"Invalid {label} socket address. {SOCKET_EXPLANATION}")
        others = self.registered(False)
        if any(i["name"] == fields["name"] for i in others):
            raise query_error("Couldn't register replica instance since instance with such name already exists!")
        if any(i["management_server"] == config["management_server"] for i in others):
            raise query_error(
                "Couldn't register replica instance since instance with such management server already exists!"
            )
        if any(i["replication_server"] == config["replication_server"] for i in others):
            raise query_error(
                "Couldn't register replica instance since instance with such replication endpoint already exists!"
            )

    def register_instance(self, fields):
        self.check_register_instance(fields)
        config = fields["config"]
        inst = self.instances.get(fields["name"]) or self._insert({"name": fields["name"]})
        inst.update(registered=True, **config)
        if inst.get("role") not in ("main", "replica"):
            inst["role"] = "replica"

    def check_unregister_instance(self, fields):
        # src/query/interpreter.cpp @ v3.8.0 UnregisterInstance
        inst = self.find_data(fields["name"])
        if inst is None:
            raise query_error("No instance with such name!")
        if inst["role"] == "main" and inst["health"] == "up":
            raise query_error(
                "Alive main instance can't be unregistered! Shut it down to trigger failover and then unregister it!"
            )

    def unregister_instance(self, fields):
        self.check_unregister_instance(fields)
        self.find_data(fields["name"])["registered"] = False

    def check_set_main(self, fields):
        # src/query/interpreter.cpp @ v3.8.0 SetReplicationInstanceToMain
        if self.find_data(fields["name"]) is None:
            raise query_error("No instance with such name!")
        if any(i["role"] == "main" for i in self.registered(False)):
            raise query_error("Couldn't set instance to main since there is already a main instance in cluster!")

    def set_main(self, fields):
        self.check_set_main(fields)
        for inst in self.registered(False):
            inst["role"] = "main" if inst["name"] == fields["name"] else "replica"


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
            raise BoltFailure(UNAUTHENTICATED, "Authentication failure")

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
            self.send(SUCCESS, {"rt": self.route(fields)})
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

    def route(self, fields):
        # ROUTE fields: routing context, bookmarks, then db (Bolt 4.3) or extra {db} (4.4+).
        context = fields[0] if fields and isinstance(fields[0], dict) else {}
        db = None
        if len(fields) > 2:
            db = fields[2].get("db") if isinstance(fields[2], dict) else fields[2]
        if self.cluster.is_coordinator(self.name):
            return self.cluster.routing_table(db)
        # A data instance: src/query/interpreter.cpp Interpreter::Route @ v3.8.0 / v3.12.0.
        if self.cluster.version.data_refuses_route:
            raise query_error("Cannot fetch routing table from a data instance!")
        if "address" not in context:
            raise query_error("Routing table must contain address field.")
        role = "WRITE" if self.cluster.instances[self.name]["role"] == "main" else "READ"
        return {"ttl": self.cluster.ttl, "db": db if self.cluster.version.route_echoes_db else None,
                "servers": [{"addresses": [context["address"]], "role": role}]}

    def run(self, query, params):
        parser = Parser(query, self.cluster.version)
        statement = parser.coordinator_query(params)
        if self.cluster.is_coordinator(self.name):
            if statement is None:
                # src/query/interpreter.cpp @ v2.22.0 (5565), v3.8.0 (8097), v3.12.0 (9939):
                # SHOW VERSION, RETURN 1 and every other non-coordinator query included.
                raise query_error("Coordinator can run only coordinator queries!")
            action, fields = statement
            columns, rows = self.cluster.run_coordinator_query(self.name, action, fields)
            return columns, rows, "r" if action == "show_instances" else "s"
        if statement is not None:
            raise query_error(ONLY_COORDINATOR[statement[0]])
        text = " ".join(query.strip().rstrip(";").split())
        if text.upper() == "SHOW VERSION":
            # Data instances answer it (src/query/interpreter.cpp @ v3.8.0 VersionQuery).
            return ["version"], [[self.cluster.version.text]], "r"
        m = re.fullmatch(r"RETURN\s+(\$\w+|-?\d+|'[^']*')\s+AS\s+(\w+)", text, re.IGNORECASE)
        if not m:
            raise query_error("test server: a data instance here answers only SHOW VERSION and RETURN <literal or $param> AS <name>")
        literal = m.group(1)
        if literal.startswith("$"):
            if literal[1:] not in params:
                # src/query/cypher_query_interpreter.cpp @ v3.10.0 (line 67)
                raise query_error(f"Parameter {literal} not provided.")
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
