"""``tradebus journal``: look into busd's journal and replay it.

    tradebus journal ls
    tradebus journal cat [--topic P] [--since T] [--from-seq N] [--kind pub|req|rep] [--json]
    tradebus journal stats [--topic P] [--since T]
    tradebus journal replay --into-strategy SESSION --strategy NAME --param k=v ...
    tradebus journal replay --publish [--topic P] [--since T] [--pace recorded|fast]

The lead registers the group in ``services.cli`` (``main.add_command(journal)``).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import msgspec

from bus.journal import KINDS, JournalReader, segment_info, segment_paths
from bus.replay import envelopes

CONNECT_TIMEOUT_S = 10.0  # --publish: how long to wait for the bus to be reachable


def _journal_dir(value: str | None) -> Path:
    if value:
        return Path(value)
    from services.config import ConfigError, load_config

    try:
        return load_config().paths.journal
    except ConfigError as exc:
        raise click.ClickException(f"{exc} (or pass --journal-dir)") from None


def parse_time(value: str | None) -> int | None:
    """ns since the epoch, from an integer (ns) or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return None
    if value.strip().isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither nanoseconds nor an ISO time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _iso(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def envelope_json(envelope: Any) -> dict[str, Any]:
    """An envelope as plain JSON (Decimals as strings, the body as a dict)."""
    fields = {f: getattr(envelope, f) for f in envelope.__struct_fields__}
    fields["body"] = msgspec.to_builtins(envelope.body, enc_hook=str)
    return json.loads(json.dumps(msgspec.to_builtins(fields, enc_hook=str), default=_jsonable))


journal_dir_option = click.option("--journal-dir", default=None,
                                  help="journal folder (default: the installation's state/journal)")


@click.group("journal")
def journal() -> None:
    """Look into busd's journal, and replay it."""


@journal.command("ls")
@journal_dir_option
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(journal_dir: str | None, as_json: bool) -> None:
    """Segments with first/last sequence and time, record count and size."""
    for first_seq, path in segment_paths(_journal_dir(journal_dir)):
        info = segment_info(first_seq, path)
        row = {"segment": path.name, "first_seq": info.first_seq, "last_seq": info.last_seq,
               "records": info.records, "first": _iso(info.first_ns), "last": _iso(info.last_ns),
               "bytes": info.size, "damage": info.damage.reason if info.damage else None}
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(f"{row['segment']}  seq {row['first_seq']}..{row['last_seq']}  {row['records']} records  "
                       f"{row['first']} .. {row['last']}  {row['bytes']} bytes"
                       + (f"  DAMAGED: {row['damage']}" if row["damage"] else ""))


def _records(journal_dir: str | None, topic: str | None, since: str | None, kind: tuple[str, ...],
             from_seq: int | None = None, until: str | None = None, to_seq: int | None = None):
    reader = JournalReader(_journal_dir(journal_dir))
    return reader, reader.records(topic_prefix=topic, since_ns=parse_time(since), kinds=tuple(kind) or None,
                                  from_seq=from_seq, until_ns=parse_time(until), to_seq=to_seq)


range_options = [
    click.option("--topic", default=None, help="topic prefix (segment-aware)"),
    click.option("--since", default=None, help="ISO time or ns"),
    click.option("--until", default=None, help="ISO time or ns (exclusive)"),
    click.option("--from-seq", type=int, default=None),
    click.option("--to-seq", type=int, default=None),
    click.option("--kind", type=click.Choice(KINDS), multiple=True),
]


def _range(f):
    for option in reversed(range_options):
        f = option(f)
    return f


@journal.command("cat")
@journal_dir_option
@_range
@click.option("--json", "as_json", is_flag=True, help="one object per line with the decoded envelope")
def cat_cmd(journal_dir, topic, since, until, from_seq, to_seq, kind, as_json) -> None:
    """Print records."""
    reader, records = _records(journal_dir, topic, since, kind, from_seq, until, to_seq)
    for item in envelopes(records, skip_undecodable=False):
        r, e = item.record, item.envelope
        if as_json:
            click.echo(json.dumps({"seq": r.seq, "recv_ns": r.recv_ns, "kind": r.kind, "topic": r.topic,
                                   "envelope": envelope_json(e)}))
        else:
            click.echo(f"{r.seq:>8} {_iso(r.recv_ns)} {r.kind:<3} {r.topic:<28} {e.type:<22} "
                       f"{msgspec.json.encode(e.body, enc_hook=str).decode()}")
    for d in reader.damage:
        click.echo(f"damaged: {d.segment.name} at byte {d.offset}: {d.reason}", err=True)


@journal.command("stats")
@journal_dir_option
@_range
@click.option("--depth", type=int, default=1, help="topic segments to group by")
@click.option("--json", "as_json", is_flag=True)
def stats_cmd(journal_dir, topic, since, until, from_seq, to_seq, kind, depth, as_json) -> None:
    """Counts per topic prefix, message type and kind; first/last time and rate."""
    reader, records = _records(journal_dir, topic, since, kind, from_seq, until, to_seq)
    by_topic: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    first = last = None
    total = 0
    for item in envelopes(records, skip_undecodable=True):
        r = item.record
        total += 1
        by_topic[".".join(r.topic.split(".")[:depth])] += 1
        by_type[item.envelope.type] += 1
        by_kind[r.kind] += 1
        first = r.recv_ns if first is None else first
        last = r.recv_ns
    span_s = (last - first) / 1e9 if first is not None and last is not None else 0.0
    out = {"records": total, "first": _iso(first), "last": _iso(last), "span_s": round(span_s, 3),
           "rate_per_s": round(total / span_s, 3) if span_s > 0 else None,
           "by_topic": dict(by_topic.most_common()), "by_type": dict(by_type.most_common()),
           "by_kind": dict(by_kind.most_common()),
           "damage": [f"{d.segment.name}@{d.offset}: {d.reason}" for d in reader.damage]}
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{total} records, {out['first']} .. {out['last']} ({out['span_s']} s, {out['rate_per_s']}/s)")
    for title in ("by_kind", "by_topic", "by_type"):
        click.echo(f"{title.replace('_', ' ')}:")
        for k, v in out[title].items():
            click.echo(f"  {v:>8}  {k}")
    for d in out["damage"]:
        click.echo(f"damaged: {d}", err=True)


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: use key=value")
        params[key] = value
    return params


@journal.command("replay")
@journal_dir_option
@click.option("--into-strategy", "session", default=None, help="session whose recorded events to feed")
@click.option("--strategy", "strategy_name", default=None, help="strategy to feed them to (e.g. sma_cross)")
@click.option("--param", "params", multiple=True, help="strategy parameter k=v (repeatable)")
@click.option("--session-id", type=int, default=None, help="to print client order ids <session>.<id>.<signal>")
@click.option("--symbol", default=None, help="the session's contract (default: learnt from the journal)")
@click.option("--publish", is_flag=True, help="publish recorded messages onto the running bus")
@click.option("--topic", default=None)
@click.option("--since", default=None)
@click.option("--until", default=None)
@click.option("--from-seq", type=int, default=None)
@click.option("--to-seq", type=int, default=None)
@click.option("--pace", type=click.Choice(["fast", "recorded"]), default="fast")
@click.option("--root", envvar="TRADEBUS_ROOT", default=None, help="installation folder (for --publish)")
def replay_cmd(journal_dir, session, strategy_name, params, session_id, symbol, publish, topic, since, until,
               from_seq, to_seq, pace, root) -> None:
    """Feed a session's recorded events into a fresh strategy core and print its instructions (JSON
    lines), or publish recorded messages onto a running bus."""
    if bool(session) == publish:
        raise click.UsageError("give exactly one of --into-strategy SESSION or --publish")
    if session:
        from services.replay import instruction_json, replay_session
        from services.strategy.core import ParamError

        if not strategy_name:
            raise click.UsageError("--into-strategy needs --strategy")
        try:
            produced = replay_session(_journal_dir(journal_dir), session, strategy_name, _params(params),
                                      symbol=symbol)
        except (ParamError, KeyError) as exc:
            raise click.ClickException(str(exc)) from None
        for r in produced:
            click.echo(json.dumps({"seq": r.seq, "recv_ns": r.recv_ns,
                                   **instruction_json(r.instruction, session, session_id)}))
        return
    _publish(_journal_dir(journal_dir), root, topic, since, until, from_seq, to_seq, pace)


def _publish(directory: Path, root: str | None, topic, since, until, from_seq, to_seq, pace: str) -> None:
    """Send recorded ``pub`` envelopes, bytes unchanged, onto the bus's publish socket."""
    from bus.client import BusClient
    from bus.endpoints import Endpoints
    from bus.errors import BusUnavailable
    from services.config import ConfigError, Paths, find_root

    try:
        state = Paths(find_root(root)).state
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    client = BusClient(Endpoints.for_state_dir(state), source="journal-replay")
    sent = 0
    try:
        publisher = client.publisher()
        # ZeroMQ drops what a PUB sends before it is connected and knows busd's subscription: send
        # nothing until a probe has gone through busd and come back.
        try:
            client.subscriber([]).wait_connected(publisher, timeout_s=CONNECT_TIMEOUT_S)
        except BusUnavailable as exc:
            raise click.ClickException(f"{exc} (is busd running under {state}?)") from None
        reader = JournalReader(directory)
        start_wall = first_ns = None
        for r in reader.records(topic_prefix=topic, since_ns=parse_time(since), until_ns=parse_time(until),
                                from_seq=from_seq, to_seq=to_seq, kinds=("pub",)):
            if pace == "recorded":
                now = time.monotonic()
                if first_ns is None:
                    start_wall, first_ns = now, r.recv_ns
                else:
                    delay = (r.recv_ns - first_ns) / 1e9 - (now - start_wall)
                    if delay > 0:
                        time.sleep(delay)
            publisher.socket.send_multipart([r.topic.encode(), r.data])
            sent += 1
        time.sleep(0.2)
    finally:
        client.close()
    click.echo(f"published {sent} message(s)", err=True)
