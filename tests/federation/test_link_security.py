"""The relay's link to NATS (docs/federation.md, "Security of the link"): a credentials file
others can read is refused before anything connects; over TLS with per-node nkey users whose
permissions cover only their own subjects, two nodes still talk, and one node's user cannot
read the other's mail."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import nkeys
import pytest
from fed_harness import NATS_BIN, NatsServer, Node, clean_env, drain, free_port, wait_until


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def test_the_relay_refuses_a_credentials_file_others_can_read(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    creds = _private(tmp_path / "h1.nk", seed + "\n", 0o644)
    cfg = _private(tmp_path / "c.toml", '[server]\nnode = "h1"\n[relay]\nservers = ["nats://127.0.0.1:9"]\n')
    res = subprocess.run([sys.executable, "-m", "parrot_ipc", "relay", "--socket", str(tmp_path / "s"),
                          "--config", str(cfg), "--credentials", str(creds)],
                         capture_output=True, text=True, timeout=30, env=clean_env())
    assert res.returncode == 1, res
    assert "refusing to start" in res.stderr and str(creds) in res.stderr and "Traceback" not in res.stderr
    assert "cannot reach NATS" not in res.stderr  # refused before connecting


def _tls_files(d: Path) -> None:
    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=test-ca", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
         "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext"), "-out", str(d / "server.pem"))


def node_user(node: str, public_key: str) -> str:
    """The nats-server user block of docs/federation.md for ``node``: publish to any node's
    subjects, read only its own (its durable consumer ``parrot-<node>`` on stream PARROT)."""
    return f'''    {{ nkey: "{public_key}"
      permissions: {{
        publish: {{ allow: ["parrot.*.>", "$JS.API.INFO", "$JS.API.STREAM.INFO.PARROT",
                           "$JS.API.CONSUMER.INFO.PARROT.parrot-{node}",
                           "$JS.API.CONSUMER.CREATE.PARROT.parrot-{node}.>",
                           "$JS.API.CONSUMER.DURABLE.CREATE.PARROT.parrot-{node}",
                           "$JS.API.CONSUMER.MSG.NEXT.PARROT.parrot-{node}",
                           "$JS.ACK.PARROT.parrot-{node}.>"] }}
        subscribe: {{ allow: ["_INBOX.>"] }}
      }} }}'''


@pytest.fixture
def tls_nats(tmp_path: Path):
    """A nats-server on 127.0.0.1 with TLS, JetStream, an admin user (who makes the stream)
    and per-node nkey users h1 and h2. Yields (server, {name: seed}, ca path)."""
    _tls_files(tmp_path)
    seeds = {n: nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER) for n in ("admin", "h1", "h2")}
    pub = {n: nkeys.from_seed(s).public_key.decode() for n, s in seeds.items()}
    users = ",\n".join([f'    {{ nkey: "{pub["admin"]}" }}', node_user("h1", pub["h1"]), node_user("h2", pub["h2"])])
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f'''listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{tmp_path / 'js'}" }}
tls {{ cert_file: "{tmp_path / 'server.pem'}", key_file: "{tmp_path / 'server.key'}" }}
authorization {{
  users: [
{users}
  ]
}}
''')
    srv = NatsServer(port, tmp_path / "js", tmp_path / "nats.log")
    srv.start = lambda: _start_conf(srv, conf)  # type: ignore[method-assign]
    srv.start()
    yield srv, {n: s.decode() for n, s in seeds.items()}, tmp_path / "ca.pem"
    srv.stop()


def _start_conf(srv: NatsServer, conf: Path) -> None:
    with srv.log_path.open("ab") as log:
        srv.proc = subprocess.Popen([NATS_BIN, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    wait_until(lambda: "Server is ready" in srv.log_path.read_text(errors="replace"), 10, "nats-server (TLS)")


async def _admin(url: str, seed: str, ca: Path, action: str) -> str:
    import ssl

    import nats
    ctx = ssl.create_default_context(cafile=str(ca))
    nc = await nats.connect(url, nkeys_seed_str=seed, tls=ctx, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        if action == "stream":
            await js.add_stream(name="PARROT", subjects=["parrot.>"])
            return "ok"
        try:  # as h1: try to read h2's mail through h2's consumer
            sub = await js.pull_subscribe("parrot.h2.>", durable="parrot-h2", stream="PARROT")
            await sub.fetch(1, timeout=2)
        except Exception as exc:
            return type(exc).__name__
        return "read"
    finally:
        await nc.close()


def test_two_nodes_over_tls_with_per_node_nkeys(tls_nats, nodes_factory_tls) -> None:
    srv, seeds, ca = tls_nats
    url = f"tls://127.0.0.1:{srv.port}"
    assert asyncio.run(_admin(url, seeds["admin"], ca, "stream")) == "ok"
    h1, h2 = nodes_factory_tls("h1", url, seeds["h1"], ca), nodes_factory_tls("h2", url, seeds["h2"], ca)
    alice, bob = h1.client("alice"), h2.client("bob")
    alice.send("bob@h2", "over tls")
    (got,) = drain(bob, 1, 20)
    assert (got.from_, got.content) == ("alice@h1", "over tls")
    # h1's user may not take h2's mail: its permissions cover only parrot-h1
    stolen = asyncio.run(_admin(url, seeds["h1"], ca, "steal"))
    print("h1 reading h2's consumer:", stolen)
    assert stolen not in ("read", "ConnectionRefusedError", "SSLError")
    assert "Publish Violation" in srv.log_path.read_text() and "PARROT.parrot-h2" in srv.log_path.read_text()


@pytest.fixture
def nodes_factory_tls(tmp_path: Path):
    made: list[Node] = []

    def make(name: str, url: str, seed: str, ca: Path) -> Node:
        root = tmp_path / name
        (root / "run").mkdir(parents=True, mode=0o700)
        creds = _private(root / "nats.nk", seed + "\n")
        _private(root / "config.toml", f'''[server]
node = "{name}"
[relay]
servers = ["{url}"]
credentials_file = "{creds}"
tls_ca_file = "{ca}"
create_stream = false

[[remote]]
nodes = ["*"]
''')
        node = Node(name, root, None)  # type: ignore[arg-type]
        made.append(node)
        node.start_broker()
        node.start_relay()
        return node

    yield make
    for node in made:
        for proc in reversed(node.procs):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
