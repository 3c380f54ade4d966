"""CURVE configuration without a network: settings checks, key files, and which sockets get secured.

The sockets themselves are tried across network namespaces in tests/test_network_security.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq

from online.transport import (
    LinkSecurity,
    LossyPublisher,
    TransportError,
    create_key_pair,
    is_local_endpoint,
    secure_client,
    secure_server,
    security_for,
)
from rig.cli import main as rig_main
from rig.settings import SettingsError, load_settings

REMOTE = {
    "network.bind_loopback_only": False,
    "network.control": "tcp://10.20.30.1:5556",
}


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, Path]:
    """A key folder for a machine named 10.20.30.1 and an authorised folder holding its public key."""
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    public, _ = create_key_pair(keys, "10.20.30.1")
    authorized.mkdir()
    (authorized / public.name).write_bytes(public.read_bytes())
    return keys, authorized


# --------------------------------------------------------------------------------------------------------
# settings


def test_a_remote_endpoint_without_keys_is_refused_at_load() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(overrides=REMOTE)
    text = str(info.value)
    assert "network.keys" in text and "network.authorized_keys" in text
    assert "tcp://10.20.30.1:5556" in text and "rig keys" in text


def test_a_remote_events_publisher_is_checked_against_bind_loopback_only() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={"network.events_pub": "tcp://10.20.30.1:5555"})
    assert "network.events_pub" in str(info.value)
    assert "bind_loopback_only" in str(info.value)


def test_remote_endpoints_with_keys_load_and_give_the_machine_identity(machine: tuple[Path, Path]) -> None:
    keys, authorized = machine
    settings = load_settings(overrides={**REMOTE, "network.keys": str(keys),
                                        "network.authorized_keys": str(authorized)})
    security = security_for(settings.network)
    assert security is not None
    assert security.name == "10.20.30.1"
    public, secret = zmq.auth.load_certificate(keys / "10.20.30.1.key_secret")
    assert (security.public_key, security.secret_key) == (public, secret)
    assert security.server_key("tcp://10.20.30.1:5556") == public


def test_loopback_settings_need_no_keys_and_give_no_security(tmp_path: Path) -> None:
    settings = load_settings(overrides={"network.keys": str(tmp_path / "absent")})
    assert security_for(settings.network) is None


# --------------------------------------------------------------------------------------------------------
# key files


def test_create_key_pair_writes_a_secret_only_the_owner_reads(tmp_path: Path) -> None:
    public, secret = create_key_pair(tmp_path / "keys", "rig-pc")
    assert public == tmp_path / "keys" / "rig-pc.key"
    assert secret == tmp_path / "keys" / "rig-pc.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) & 0o077 == 0
    assert zmq.auth.load_certificate(public)[1] is None  # the public file carries no secret
    assert zmq.auth.load_certificate(secret)[0] == zmq.auth.load_certificate(public)[0]
    with pytest.raises(TransportError, match="already exists"):
        create_key_pair(tmp_path / "keys", "rig-pc")


def test_rig_keys_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rig_main(["keys", "--folder", str(tmp_path / "k"), "--name", "analysis-pc"]) == 0
    out = capsys.readouterr().out
    assert "analysis-pc.key" in out and "authorized_keys" in out
    assert stat.S_IMODE((tmp_path / "k" / "analysis-pc.key_secret").stat().st_mode) == 0o600
    assert rig_main(["keys", "--folder", str(tmp_path / "k"), "--name", "analysis-pc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert rig_main(["keys", "--folder", str(tmp_path / "k"), "--name", "../x"]) == 2
    assert "name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda keys, auth: None, "no such folder"),
        (lambda keys, auth: keys.mkdir(), "no .key_secret file"),
        (lambda keys, auth: (create_key_pair(keys, "a"), create_key_pair(keys, "b")), "more than one"),
        (lambda keys, auth: os.chmod(create_key_pair(keys, "a")[1], 0o644), "chmod 600"),
        (lambda keys, auth: (keys.mkdir(), (keys / "a.key_secret").write_text("junk\n"),
                             os.chmod(keys / "a.key_secret", 0o600)), "not a CURVE"),
    ],
)
def test_bad_key_folders_are_one_clear_sentence(tmp_path: Path, setup, message: str) -> None:
    keys, authorized = tmp_path / "keys", tmp_path / "auth"
    authorized.mkdir()
    setup(keys, authorized)
    with pytest.raises(TransportError) as info:
        LinkSecurity.load(keys, authorized)
    assert message in str(info.value)
    assert str(keys) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_authorised_folder_is_refused(tmp_path: Path) -> None:
    create_key_pair(tmp_path / "keys", "a")
    with pytest.raises(TransportError, match="authorised keys folder"):
        LinkSecurity.load(tmp_path / "keys", tmp_path / "nothing-here")


def test_an_unknown_server_names_the_key_file_it_needs(machine: tuple[Path, Path]) -> None:
    security = LinkSecurity.load(*machine)
    with pytest.raises(TransportError) as info:
        security.server_key("tcp://10.20.30.9:5557")
    assert str(machine[1] / "10.20.30.9.key") in str(info.value)


# --------------------------------------------------------------------------------------------------------
# which sockets are secured


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.4.5:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/x", True),
        ("inproc://x", True),
        ("tcp://10.0.0.1:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://rig-pc:5555", False),
    ],
)
def test_is_local_endpoint(endpoint: str, local: bool) -> None:
    assert is_local_endpoint(endpoint) is local


def test_loopback_sockets_stay_plain_even_with_keys(machine: tuple[Path, Path]) -> None:
    security = LinkSecurity.load(*machine)
    context = zmq.Context()
    server, client = context.socket(zmq.REP), context.socket(zmq.REQ)
    try:
        release = secure_server(server, "tcp://127.0.0.1:5556", security)
        secure_client(client, "tcp://127.0.0.1:5556", security)
        assert server.mechanism == zmq.NULL and client.mechanism == zmq.NULL
        release()
    finally:
        server.close(linger=0)
        client.close(linger=0)
        context.term()


def test_remote_sockets_get_curve_and_refuse_to_go_plain(machine: tuple[Path, Path]) -> None:
    security = LinkSecurity.load(*machine)
    context = zmq.Context()
    server, client = context.socket(zmq.REP), context.socket(zmq.REQ)
    release = None
    try:
        with pytest.raises(TransportError, match="CURVE"):
            secure_server(server, "tcp://10.20.30.1:5556", None)
        with pytest.raises(TransportError, match="CURVE"):
            secure_client(client, "tcp://10.20.30.1:5556", None)
        release = secure_server(server, "tcp://10.20.30.1:5556", security)
        secure_client(client, "tcp://10.20.30.1:5556", security)
        assert server.mechanism == zmq.CURVE and server.curve_server
        assert client.mechanism == zmq.CURVE and not client.curve_server
    finally:
        server.close(linger=0)
        client.close(linger=0)
        if release is not None:
            release()
            release()  # twice is harmless
        context.term()  # returns: the authenticator of this context is gone


def test_an_endpoint_object_refuses_a_remote_address_without_security() -> None:
    with pytest.raises(TransportError, match="CURVE"):
        LossyPublisher("tcp://10.20.30.1:5555", allow_remote=True)


@pytest.mark.parametrize("command", [["run", "--no-gui", "--trials", "1"], ["status"], ["stop"]])
def test_commands_with_a_missing_key_folder_say_so_in_one_line(
        tmp_path: Path, machine: tuple[Path, Path], capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    _, authorized = machine
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "network: {control: 'tcp://10.20.30.1:5556', bind_loopback_only: false,\n"
        f"          keys: '{tmp_path / 'no-keys'}', authorized_keys: '{authorized}'}}\n", encoding="utf-8")
    extra = ["--data", str(tmp_path / "data")] if command[0] == "run" else []
    assert rig_main([*command, "--settings", str(settings), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"CURVE keys folder {tmp_path / 'no-keys'}: no such folder (make one with `rig keys`)"]
    assert not list(tmp_path.rglob("session.json"))  # refused before a session began
