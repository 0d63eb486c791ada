"""``tradebus keys``: CURVE keypairs for running the bus on tcp.

``keys generate`` makes busd's keypair (once; it is kept afterwards) and a client keypair, and puts
the client's public key in busd's allow-list; ``keys list`` shows names and public keys. Both
work on ``<state>/keys`` (see ``bus.keys`` for the layout). Secret keys are written owner-only and
never printed.
"""
from __future__ import annotations

from pathlib import Path

import click

from bus.endpoints import DEFAULT_CLIENT_KEY
from bus.errors import EndpointError
from bus.keys import KeyStore


def _store(root: str | None, state_dir: Path | None) -> KeyStore:
    if state_dir is not None:
        return KeyStore.for_state_dir(state_dir)
    from services.config import ConfigError, find_root, load_config

    try:
        return KeyStore.for_state_dir(load_config(find_root(root)).paths.state)
    except ConfigError as exc:
        raise click.ClickException(f"{exc} (or pass --state-dir)") from None


root_option = click.option("--root", envvar="TRADEBUS_ROOT", default=None,
                           help="Installation folder holding supervisord.conf (default: current folder).")
state_option = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                            help="State folder to use instead of the installation's.")


@click.group("keys")
def keys() -> None:
    """CURVE keys for the tcp bus: busd's keypair and an allow-list of client keys."""


@keys.command("generate")
@click.option("--name", default=DEFAULT_CLIENT_KEY, show_default=True,
              help="Client key name (the [bus] client_key a machine's processes use).")
@root_option
@state_option
def generate(name: str, root: str | None, state_dir: Path | None) -> None:
    """Make busd's keypair if there is none, and a new client keypair NAME that busd allows."""
    store = _store(root, state_dir)
    try:
        server_public, created = store.ensure_server()
        client_public = store.create_client(name)
    except EndpointError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"server  {server_public.decode()}  ({'created' if created else 'kept'}: {store.server_public_file})")
    click.echo(f"{name}  {client_public.decode()}  (created: {store.client_public_file(name)}; allowed)")
    click.echo(f"secret keys stay in {store.dir} (owner-only); copy a client's .key_secret and "
               f"{store.server_public_file.name} to a machine that should join the bus")


@keys.command("list")
@root_option
@state_option
def list_keys(root: str | None, state_dir: Path | None) -> None:
    """Names and public keys (never secrets); clients show whether busd allows them."""
    store = _store(root, state_dir)
    try:
        infos = store.list()
    except EndpointError as exc:
        raise click.ClickException(str(exc)) from None
    if not infos:
        click.echo(f"no keys in {store.dir}: run `tradebus keys generate`")
        return
    for info in infos:
        status = "" if info.role == "server" else ("allowed" if info.allowed else "not allowed")
        click.echo(f"{info.role:<7} {info.name:<24} {info.public_key}  {status}".rstrip())
