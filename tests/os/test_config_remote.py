"""The federation keys of the config file (docs/federation.md, docs/configuration.md):
``[server] node``, ``[[remote]]`` and ``[relay]`` load into the policy and the relay's
settings, and a wrong one is refused naming the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from parrot_ipc.app.config_file import describe, load_config
from parrot_ipc.core.policy import remote_rules_of
from parrot_ipc.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_node_remote_and_relay_load(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '''
[server]
node = "h1"
[[remote]]
name = "farm"
nodes = ["build-*"]
names = ["ci-*"]
[[remote]]
nodes = ["h2"]
[relay]
servers = ["tls://nats.example.net:4222"]
create_stream = false
'''), broker_uid=os.geteuid(), env={})
    rules = remote_rules_of(cfg.policy)
    assert cfg.server.node == "h1"
    assert rules.allowing("build-7", "ci-x") == "farm" and rules.allowing("build-7", "bob") is None
    assert rules.allowing("h2", "bob") == "remote[1]" and rules.allowing("h3", "bob") is None
    assert cfg.relay.servers == ["tls://nats.example.net:4222"] and cfg.relay.create_stream is False
    assert describe(cfg)["remote"][0] == {"rule": "farm", "nodes": ["build-*"], "names": ["ci-*"]}


def test_no_remote_table_refuses_every_node(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[server]\nnode = "h1"\n'), broker_uid=os.geteuid(), env={})
    assert remote_rules_of(cfg.policy).allowing("h2", "bob") is None


@pytest.mark.parametrize(("text", "key"), [
    ('[server]\nnode = "h.1"\n', "node"),
    ('[[remote]]\nnodes = []\n', "nodes"),
    ('[[remote]]\nnodes = ["h2"]\nwho = 1\n', "who"),
    ('[relay]\nbatch = 0\n', "batch"),
    ('[[peers]]\nuids = [0]\nscopes = ["teleport"]\n', "scopes"),
])
def test_a_wrong_federation_key_is_refused_naming_it(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(_write(tmp_path, text), broker_uid=os.geteuid(), env={})
