"""Endpoint paths, the owner-only bus folder and the unix-socket path limit."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bus.endpoints import IPC_PATH_MAX, Endpoints
from bus.errors import EndpointError


def test_ipc_endpoints_under_the_state_folder(tmp_path: Path) -> None:
    ep = Endpoints.for_state_dir(tmp_path)
    assert ep.pub_in == f"ipc://{tmp_path}/bus/pub.in"
    assert ep.pub_out == f"ipc://{tmp_path}/bus/pub.out"
    assert ep.rpc == f"ipc://{tmp_path}/bus/rpc"
    assert ep.ready_file == tmp_path / "bus" / "busd.ready"


def test_relative_state_folder_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Endpoints.for_state_dir("state").rpc == f"ipc://{tmp_path}/state/bus/rpc"


def test_ensure_dir_is_owner_only_even_if_it_existed(tmp_path: Path) -> None:
    (tmp_path / "bus").mkdir(mode=0o777)
    (tmp_path / "bus").chmod(0o777)
    ep = Endpoints.for_state_dir(tmp_path)
    ep.ensure_dir()
    assert stat.S_IMODE((tmp_path / "bus").stat().st_mode) == 0o700


def test_too_long_ipc_path_is_a_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * (IPC_PATH_MAX - len(str(tmp_path))))
    with pytest.raises(EndpointError, match="over the 107-byte limit"):
        Endpoints.for_state_dir(deep)


def test_tcp_endpoints() -> None:
    ep = Endpoints.tcp("127.0.0.1", 7000)
    assert (ep.pub_in, ep.pub_out, ep.rpc) == ("tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002")
    assert ep.ready_file is None
