"""``names`` in a ``[[peers]]`` rule (issue 13): read from a real config file, ``{user}``
resolved to the peer's login name through the system's user database."""

from __future__ import annotations

import os
from pathlib import Path

from parrot_ipc.app.config_file import load_config
from parrot_ipc.core import PeerCredentials
from parrot_ipc.core.config import BrokerConfig


def test_names_with_user_resolve_per_peer_and_idle_release_is_off_by_default(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[server]\nname_idle_release_s = 3600\n\n[[peers]]\nuids = [0]\nnames = ["{user}-*", "ops"]\n')
    cfg.chmod(0o644)
    loaded = load_config(cfg, broker_uid=os.geteuid(), env={})
    assert loaded.server.name_idle_release_s == 3600 and BrokerConfig().name_idle_release_s == 0
    assert loaded.rules is not None and loaded.rules[0].names == ("{user}-*", "ops")
    adm = loaded.policy.admit(PeerCredentials(1, 0, 0))
    assert adm.names == ("root-*", "ops")
    assert adm.may_claim("root-1") and adm.may_claim("ops") and not adm.may_claim("eve-1")
