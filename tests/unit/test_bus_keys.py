"""CURVE keys (``bus.keys`` and ``tradebus keys``), the ``[bus]`` table, and the retry policy of
idempotent calls. No sockets."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq.auth
from click.testing import CliRunner

from bus.client import RETRY_CAP_S, retry_delay
from bus.endpoints import BusSettings, Endpoints
from bus.errors import BusUnavailable, EndpointError, NoWorker, RequestTimeout, UnknownService
from bus.keys import KeyFileError, KeyStore
from services.config import ConfigError, load_config
from services.keys_cli import keys


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secrets_in(folder: Path) -> list[bytes]:
    out = []
    for path in folder.rglob("*.key_secret"):
        _, secret = zmq.auth.load_certificate(path)
        assert secret is not None
        out.append(secret)
    return out


# ---------------------------------------------------------------------------- keys


def test_generate_writes_owner_only_secrets_and_allows_the_client(tmp_path: Path) -> None:
    # When `tradebus keys generate --name box2` runs on a fresh state folder
    result = CliRunner().invoke(keys, ["generate", "--name", "box2", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    store = KeyStore.for_state_dir(tmp_path)
    # Then the folders are owner-only and every secret file is 0600
    for folder in (store.dir, store.clients_dir, store.allowed_dir):
        assert mode(folder) == 0o700, folder
    assert mode(store.server_secret_file) == 0o600
    assert mode(store.client_secret_file("box2")) == 0o600
    # And the client's public key (only) is in busd's allow-list
    assert [p.name for p in store.allowed_dir.iterdir()] == ["box2.key"]
    assert zmq.auth.load_certificate(store.allowed_dir / "box2.key") == (store.client_keys("box2")[0], None)
    # And no secret key was printed
    assert len(secrets_in(store.dir)) == 2
    for secret in secrets_in(store.dir):
        assert secret.decode() not in result.output
    assert store.client_keys("box2")[0].decode() in result.output


def test_generate_keeps_the_server_key_and_refuses_a_duplicate_client(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(keys, ["generate", "--state-dir", str(tmp_path)]).exit_code == 0
    server = KeyStore.for_state_dir(tmp_path).server_keys()
    second = runner.invoke(keys, ["generate", "--name", "box2", "--state-dir", str(tmp_path)])
    assert second.exit_code == 0 and "kept" in second.output
    assert KeyStore.for_state_dir(tmp_path).server_keys() == server, "clients hold the server's public key"
    again = runner.invoke(keys, ["generate", "--state-dir", str(tmp_path)])
    assert again.exit_code != 0 and "already exists" in again.output


def test_list_shows_names_and_public_keys_only(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(keys, ["generate", "--state-dir", str(tmp_path)])
    runner.invoke(keys, ["generate", "--name", "box2", "--state-dir", str(tmp_path)])
    store = KeyStore.for_state_dir(tmp_path)
    (store.allowed_dir / "box2.key").unlink()  # revoked
    result = runner.invoke(keys, ["list", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["server", "server", store.server_public().decode()]
    assert lines[1].split() == ["client", "box2", store.client_keys("box2")[0].decode(), "not", "allowed"]
    assert lines[2].split() == ["client", "engine", store.client_keys("engine")[0].decode(), "allowed"]
    for secret in secrets_in(store.dir):
        assert secret.decode() not in result.output


@pytest.mark.parametrize("name", ["server", "Box", "-x", "a/b", "", "x" * 41])
def test_bad_client_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="bad client key name"):
        KeyStore.for_state_dir(tmp_path).create_client(name)


def test_a_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    store = KeyStore.for_state_dir(tmp_path)
    store.ensure_server()
    store.server_secret_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        store.server_keys()


# ---------------------------------------------------------------------------- [bus] and endpoints


def test_no_bus_table_means_ipc_as_before(tmp_path: Path) -> None:
    (tmp_path / "tradebus.toml").write_text("[engine]\ndemo = true\n")
    ep = Endpoints.for_state_dir(tmp_path / "state")
    assert ep.rpc == f"ipc://{tmp_path}/state/bus/rpc" and ep.curve is None


def test_tcp_bus_table_gives_curve_endpoints(tmp_path: Path) -> None:
    (tmp_path / "tradebus.toml").write_text(
        '[bus]\ntransport = "tcp"\nhost = "10.1.2.3"\npub_port = 5001\nsub_port = 5002\nrpc_port = 5003\n')
    store = KeyStore.for_state_dir(tmp_path / "state")
    store.ensure_server()
    store.create_client("engine")
    ep = Endpoints.for_state_dir(tmp_path / "state")
    assert (ep.pub_in, ep.pub_out, ep.rpc) == ("tcp://10.1.2.3:5001", "tcp://10.1.2.3:5002", "tcp://10.1.2.3:5003")
    assert ep.curve is not None and ep.curve.server_public == store.server_public()
    assert ep.curve.client_keys() == store.client_keys("engine")
    assert ep.ready_file == tmp_path / "state" / "bus" / "busd.ready"
    assert store.client_keys("engine")[1].decode() not in repr(ep)


def test_tcp_without_a_server_key_is_an_endpoint_error(tmp_path: Path) -> None:
    (tmp_path / "tradebus.toml").write_text('[bus]\ntransport = "tcp"\n')
    with pytest.raises(EndpointError, match="tradebus keys generate"):
        Endpoints.for_state_dir(tmp_path / "state")


@pytest.mark.parametrize(("table", "error"), [
    ({"transport": "udp"}, "bus.transport"),
    ({"pub_port": 0}, "bus.pub_port"),
    ({"rpc_port": "47662"}, "bus.rpc_port"),
    ({"sub_port": True}, "bus.sub_port"),
    ({"pub_port": 5000, "sub_port": 5000}, "must differ"),
    ({"host": "tcp://x"}, "bus.host"),
    ({"client_key": "Nope!"}, "bad client key name"),
    ({"colour": "blue"}, "unknown key"),
])
def test_bad_bus_tables_are_refused(table: dict, error: str) -> None:
    with pytest.raises(EndpointError, match=error):
        BusSettings.from_table(table)


def test_load_config_reads_and_validates_the_bus_table(tmp_path: Path) -> None:
    (tmp_path / "supervisord.conf").write_text("")
    assert load_config(tmp_path).bus == BusSettings()
    (tmp_path / "tradebus.toml").write_text('[bus]\ntransport = "tcp"\nrpc_port = 6000\n')
    assert load_config(tmp_path).bus == BusSettings(transport="tcp", rpc_port=6000)
    (tmp_path / "tradebus.toml").write_text('[bus]\ntransport = "carrier-pigeon"\n')
    with pytest.raises(ConfigError, match="tradebus.toml: bus.transport"):
        load_config(tmp_path)


# ---------------------------------------------------------------------------- retry policy


def test_retry_delay_reads_the_exception_type() -> None:
    assert retry_delay(1, NoWorker("no_worker", "x")) == pytest.approx(0.05)
    assert retry_delay(1, BusUnavailable("x")) is not None
    assert retry_delay(1, RequestTimeout("x")) is not None
    assert retry_delay(1, UnknownService("unknown_service", "x")) is None
    assert retry_delay(2, NoWorker("no_worker", "x")) == pytest.approx(0.1)
    assert retry_delay(50, NoWorker("no_worker", "x")) == RETRY_CAP_S
