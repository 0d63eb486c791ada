"""Bus benchmarks: ``tradebus bench bus`` and ``tradebus bench rpc`` (also ``bench/bus.py``, ``bench/rpc.py``).

Each command measures, in one run and on the same machine, three ways of moving comparable messages:

* ``raw_bytes``   raw pyzmq, the same socket pattern, pre-encoded bytes (only an 16-byte
                  ``seq, send time`` header is packed per message);
* ``raw_msgpack`` the same, with ``msgpack.packb``/``unpackb`` of a dict that carries what the
                  tradebus envelope carries: the same header fields under the same names with
                  the same kind of values (schema version, type, topic, source, epoch, seq, a
                  fresh message id, correlation/causation ids, session, event and send time)
                  and the same body (Decimals as strings), see ``envelope_dict_maker``;
* ``tradebus``    the real thing: a ``python -m bus.busd`` subprocess (journal on) with
                  ``BusClient`` endpoints on both sides.

and prints one JSON document with messages/s, p50/p99/max latency in µs, the ratios and whether
the targets were met. Nothing here changes busd or the client.

Pub/sub: publisher and subscriber live in this process, one thread, with a flow-control window
(at most ``window`` messages in flight), so nothing is dropped silently and the send time
(``time.perf_counter_ns``, same process) can be compared with the receive time. The proxy
(``zmq.proxy`` XSUB/XPUB, or busd) is another process. Latency is therefore latency *under load*
(up to ``window`` messages queued ahead). Throughput is measured at the subscriber, first to last
message. Lost messages are counted from sequence numbers (raw) or ``Subscriber.gaps`` plus
messages that never arrived (tradebus).

RPC: one call in flight; client in this process, the router (a trivial ROUTER that forwards
DEALER client <-> DEALER worker, or busd) and the worker each in a process of their own.

Memory (``tradebus bench bus --rss [--duration 600]``): only the tradebus variant, run for
``duration`` seconds at full rate (the same window), sampling busd's resident memory every
``RSS_SAMPLE_S`` (psutil if installed, else ``VmRSS`` in ``/proc/<pid>/status``). Reports the first
sample (busd started, before the load), the first sample after ``RSS_WARMUP_S`` of load, the last and
the largest, and growth of the last over both. Journal segments that busd has rotated away from are
deleted during the run (busd only ever writes the newest), so a long run does not fill the disk.

The helper processes are started as ``python -m services.bench <role> ...`` (not a click command:
nothing for an operator). Each exits when its parent dies or on SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import msgpack
import zmq

DEFAULT_BUS_COUNT = 50_000
DEFAULT_BUS_ROUNDS = 5
DEFAULT_RPC_COUNT = 5_000
DEFAULT_WINDOW = 1_000
HWM = 100_000  # the same high-water marks busd and the client use for pub/sub
READY_TIMEOUT_S = 15.0
STALL_S = 3.0  # no message for this long while some are outstanding: the rest are lost
RPC_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
BAR_TOPIC = "md.BTCUSDT.bar.1m"
RPC_SERVICE = "bench.account"
PROBE_TOPIC = b"_bench_probe"
REQUEST_TYPE = "account.snapshot"  # AccountSnapshotRequest.TYPE / AccountSnapshot.TYPE, for the raw
REPLY_TYPE = "account.snapshot.reply"  # msgpack envelopes (checked against schema in _tradebus_rpc)
HEADER = struct.Struct("<qq")  # seq, send perf_counter_ns (raw_bytes pub/sub only)

# Targets from the issue.
TARGET_PUBSUB_RATIO = 0.8  # tradebus msgs/s >= 0.8 x raw_msgpack msgs/s
TARGET_RPC_P50_RATIO = 1.5  # tradebus p50 <= 1.5 x raw DEALER->ROUTER->DEALER (raw_bytes) p50
TARGET_RPC_P99_US = 2_000.0
TARGET_RSS_GROWTH_PCT = 10.0  # busd RSS at the end within 10 % of its RSS after warm-up

DEFAULT_RSS_DURATION_S = 600.0
RSS_SAMPLE_S = 5.0
RSS_WARMUP_S = 30.0  # buffers, caches and queues fill up first; growth is measured from here


# ============================================================================ shared helpers


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return float(sorted_values[int(rank) - 1])


def latency_stats_us(latencies_ns: list[int]) -> dict[str, float]:
    values = sorted(latencies_ns)
    if not values:
        return {"p50_us": float("nan"), "p99_us": float("nan"), "max_us": float("nan"), "mean_us": float("nan")}
    return {
        "p50_us": round(percentile(values, 50) / 1000, 1),
        "p90_us": round(percentile(values, 90) / 1000, 1),
        "p99_us": round(percentile(values, 99) / 1000, 1),
        "max_us": round(values[-1] / 1000, 1),
        "mean_us": round(sum(values) / len(values) / 1000, 1),
    }


def machine_info() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor() or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
    }
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or not den or num != num or den != den:  # missing, zero or NaN
        return None
    return round(num / den, 3)


def start_process(args: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for(predicate: Callable[[], object], what: str, proc: subprocess.Popen | None = None,
             log_path: Path | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``predicate`` with a deadline; fail early (with the log) if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            log = log_path.read_text()[-2000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


def stop_process(proc: subprocess.Popen | None) -> int | None:
    """SIGTERM the process we started (by its pid), wait, SIGKILL it if it does not go."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
    return proc.returncode


class Workspace:
    """A short temp folder for ipc sockets and logs, and the processes started in it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tbb-"))
        self.procs: list[subprocess.Popen] = []

    def ipc(self, name: str) -> str:
        return f"ipc://{self.dir / name}"

    def spawn(self, name: str, args: list[str], ready_file: Path) -> subprocess.Popen:
        log_path = self.dir / f"{name}.log"
        proc = start_process(args, log_path)
        self.procs.append(proc)
        wait_for(ready_file.exists, f"{name} ready", proc, log_path)
        return proc

    def helper(self, role: str, *args: str) -> subprocess.Popen:
        ready = self.dir / f"{role}.ready"
        return self.spawn(role, [sys.executable, "-m", "services.bench", "--ready", str(ready),
                                 "--parent", str(os.getpid()), role, *args], ready)

    def busd(self) -> tuple[subprocess.Popen, Path]:
        from bus.endpoints import Endpoints

        state = self.dir / "state"
        ready = Endpoints.for_state_dir(state).ready_file
        assert ready is not None
        proc = self.spawn("busd", [sys.executable, "-m", "bus.busd", "--state-dir", str(state),
                                   "--log-level", "WARNING"], ready)
        return proc, state

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar_dict(seq: int, t_ns: int) -> dict[str, Any]:
    """A dict comparable to ``schema.messages.BarClosed`` (Decimals as strings)."""
    return {"symbol": "BTCUSDT", "interval": "1m", "ts_ns": t_ns, "open": "64123.50", "high": "64210.00",
            "low": "64001.25", "close": "64188.75", "volume": "123.456", "index": seq}


def snapshot_request_dict() -> dict[str, Any]:
    return {"session": "bench"}


def snapshot_reply_dict() -> dict[str, Any]:
    return {"session": "bench", "symbol": "BTCUSDT", "position": "1.5", "open_orders": []}


ENVELOPE_MESSAGE_ID, ENVELOPE_SESSION, ENVELOPE_BODY = 6, 9, 12  # positions in the wire header


def envelope_dict_maker() -> Callable[..., list[Any]]:
    """``envelope_dict(type, topic, source, epoch, seq, body, *, correlation_id=None,
    causation_id=None, session=None)``: what a tradebus envelope carries, for plain ``msgpack``:
    the header fields of ``bus.envelope.Envelope`` in the same order with the values tradebus
    fills in (a fresh message id from the same ``new_id``, one wall-clock stamp for event and send
    time), then the body dict — laid out as tradebus lays it out on the wire (header as an array,
    body as a map), so both sides move the same bytes: ``payload_bytes``, ``request_bytes`` and
    ``reply_bytes`` in the results show it. (Imports are done here, once: not per message.)"""
    from bus.envelope import new_id
    from schema.messages import SCHEMA_VERSION

    time_ns = time.time_ns

    def envelope_dict(type_: str, topic: str, source: str, epoch: str, seq: int, body: dict[str, Any], *,
                      correlation_id: str | None = None, causation_id: str | None = None,
                      session: str | None = None) -> list[Any]:
        stamp = time_ns()
        return [SCHEMA_VERSION, type_, topic, source, epoch, seq, new_id(), correlation_id, causation_id, session,
                stamp, stamp, body]

    return envelope_dict


def _bench_epoch() -> str:
    from bus.envelope import new_id

    return new_id()


# ============================================================================ pub/sub


def _pubsub_result(n: int, received_seqs: set[int], first: int, last: int, latencies: list[int],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    got = len(received_seqs)
    elapsed_s = (last - first) / 1e9 if got > 1 else float("nan")
    result = {
        "sent": n,
        "received": got,
        "lost": n - got,
        "elapsed_s": round(elapsed_s, 4),
        "msgs_per_s": round((got - 1) / elapsed_s, 1) if got > 1 and elapsed_s > 0 else None,
        **latency_stats_us(latencies),
    }
    if extra:
        result.update(extra)
    return result


def _raw_pubsub(ws: Workspace, n: int, window: int, mode: str) -> dict[str, Any]:
    pub_in, pub_out = ws.ipc(f"{mode}.in"), ws.ipc(f"{mode}.out")
    ws.helper("proxy", pub_in, pub_out)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    try:
        pub.setsockopt(zmq.SNDHWM, HWM)
        pub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, HWM)
        sub.setsockopt(zmq.LINGER, 0)
        pub.connect(pub_in)
        sub.connect(pub_out)
        topic = BAR_TOPIC.encode()
        sub.subscribe(topic)
        sub.subscribe(PROBE_TOPIC)
        _raw_wait_connected(pub, sub)

        payload = msgpack.packb(bar_dict(0, 0))  # the pre-encoded body for raw_bytes
        pack_header, unpack_header = HEADER.pack, HEADER.unpack_from
        packb, unpackb = msgpack.packb, msgpack.unpackb
        # raw_msgpack: the same header as tradebus's envelope (see envelope_dict_maker), seq from 1.
        epoch, envelope_dict = _bench_epoch(), envelope_dict_maker()
        from schema.messages import BarClosed

        BAR_TYPE = BarClosed.TYPE
        clock = time.perf_counter_ns
        send, recv, NOBLOCK = pub.send_multipart, sub.recv_multipart, zmq.NOBLOCK
        seen: set[int] = set()
        latencies: list[int] = []
        first = last = 0
        sent = 0
        payload_bytes = None
        while len(seen) < n:
            while sent < n and sent - len(seen) < window:
                if mode == "bytes":
                    send([topic, pack_header(sent, clock()) + payload])
                else:
                    send([topic, packb(envelope_dict(BAR_TYPE, BAR_TOPIC, "bench", epoch, sent + 1,
                                                     bar_dict(sent, clock())))])
                sent += 1
            if not sub.poll(int(STALL_S * 1000)):
                break  # the rest are lost
            while True:
                try:
                    frames = recv(NOBLOCK)
                except zmq.Again:
                    break
                now = clock()
                if frames[0] != topic:
                    continue  # a late probe
                if mode == "bytes":
                    seq, t_sent = unpack_header(frames[1])
                else:
                    body = unpackb(frames[1])[ENVELOPE_BODY]
                    seq, t_sent = body["index"], body["ts_ns"]
                if not seen:
                    first = now
                    payload_bytes = len(frames[1])
                last = now
                seen.add(seq)
                latencies.append(now - t_sent)
        return _pubsub_result(n, seen, first, last, latencies, {"payload_bytes": payload_bytes})
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()


def _raw_wait_connected(pub: zmq.Socket, sub: zmq.Socket, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Send probes until one comes back (the slow-joiner problem), then drain the extra ones."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.send_multipart([PROBE_TOPIC, b""])
        if sub.poll(50):
            while sub.poll(20):
                sub.recv_multipart()
            return
    raise RuntimeError("no probe came back through the proxy")


BAR_PRICES = {"open": Decimal("64123.50"), "high": Decimal("64210.00"), "low": Decimal("64001.25"),
              "close": Decimal("64188.75"), "volume": Decimal("123.456")}


@contextmanager
def _tradebus_pair(ws: Workspace) -> Iterator[tuple[subprocess.Popen, Path, Any, Any, Any]]:
    """busd (journal on) in ``ws`` and one client whose subscriber to BAR_TOPIC is proven live:
    (busd process, state folder, client, publisher, subscriber). Everything stopped on the way out."""
    from bus.client import BusClient
    from bus.endpoints import Endpoints

    busd, state = ws.busd()
    bus = BusClient(Endpoints.for_state_dir(state), "bench")
    try:
        pub = bus.publisher()
        sub = bus.subscriber([BAR_TOPIC])
        sub.wait_connected(pub, timeout_s=READY_TIMEOUT_S)
        yield busd, state, bus, pub, sub
    finally:
        bus.close()
        stop_process(busd)


def _tradebus_pubsub(ws: Workspace, n: int, window: int) -> dict[str, Any]:
    from schema.messages import BarClosed

    with _tradebus_pair(ws) as (busd, state, bus, pub, sub):
        price = BAR_PRICES
        clock = time.perf_counter_ns
        publish, recv = pub.publish, sub.recv
        seen: set[int] = set()
        latencies: list[int] = []
        first = last = 0
        sent = 0
        while len(seen) < n:
            while sent < n and sent - len(seen) < window:
                publish(BAR_TOPIC, BarClosed(symbol="BTCUSDT", interval="1m", ts_ns=clock(), index=sent, **price))
                sent += 1
            envelope = recv(int(STALL_S * 1000))
            if envelope is None:
                break  # the rest are lost
            while envelope is not None:
                now = clock()
                if not seen:
                    first = now
                last = now
                seen.add(envelope.body.index)
                latencies.append(now - envelope.body.ts_ns)
                envelope = recv(0)
        from bus.codec import encode

        sample = bus.envelope(BAR_TOPIC, BarClosed(symbol="BTCUSDT", interval="1m", ts_ns=clock(), index=n, **price),
                              seq=n)
        extra = {"payload_bytes": len(encode(sample)), "gaps": sub.gaps, "out_of_order": sub.out_of_order,
                 "malformed": sub.malformed, "journal": True}
    journal = state / "journal"
    extra["journal_bytes"] = sum(p.stat().st_size for p in journal.rglob("*") if p.is_file()) if journal.exists() else 0
    extra["busd_exit"] = busd.returncode
    return _pubsub_result(n, seen, first, last, latencies, extra)


def rss_kib(pid: int) -> int | None:
    """Resident memory of process ``pid`` in KiB (None if it is gone)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return int(psutil.Process(pid).memory_info().rss // 1024)
        except psutil.Error:
            return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])  # "VmRSS:   12345 kB"
    except OSError:
        return None
    return None


def _prune_rotated_segments(journal: Path) -> int:
    """Delete every journal segment (and index) but the newest; returns the bytes deleted."""
    from bus.journal import index_path, segment_paths

    freed = 0
    for _, path in segment_paths(journal)[:-1]:
        for victim in (path, index_path(path)):
            try:
                freed += victim.stat().st_size
                victim.unlink()
            except FileNotFoundError:
                pass
    return freed


def _growth_pct(start: int | None, end: int | None) -> float | None:
    if not start or end is None:
        return None
    return round((end - start) / start * 100, 2)


def run_bus_rss(duration_s: float = DEFAULT_RSS_DURATION_S, window: int = DEFAULT_WINDOW,
                sample_s: float = RSS_SAMPLE_S, warmup_s: float = RSS_WARMUP_S) -> dict[str, Any]:
    """busd's resident memory over a long full-rate pub/sub run (journal on)."""
    from schema.messages import BarClosed

    machine = machine_info()
    warmup_s = min(warmup_s, duration_s / 2)
    samples: list[list[float | int | None]] = []  # [seconds into the load, RSS KiB, messages received]
    with Workspace() as ws:
        pruned = 0
        with _tradebus_pair(ws) as (busd, state, bus, pub, sub):
            journal = state / "journal"
            price = BAR_PRICES
            clock = time.perf_counter_ns
            publish, recv = pub.publish, sub.recv
            received = sent = 0
            start = time.monotonic()
            samples.append([0.0, rss_kib(busd.pid), 0])
            next_sample = start + sample_s
            end = start + duration_s
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    samples.append([round(now - start, 1), rss_kib(busd.pid), received])
                    pruned += _prune_rotated_segments(journal)
                    next_sample += sample_s
                if now >= end:
                    break
                while sent - received < window:
                    publish(BAR_TOPIC, BarClosed(symbol="BTCUSDT", interval="1m", ts_ns=clock(), index=sent,
                                                 **price))
                    sent += 1
                envelope = recv(int(STALL_S * 1000))
                if envelope is None:
                    break  # the rest are lost
                while envelope is not None:
                    received += 1
                    envelope = recv(0)
            elapsed = time.monotonic() - start
            while received < sent and recv(int(STALL_S * 1000)) is not None:  # what is still in flight
                received += 1
            samples.append([round(time.monotonic() - start, 1), rss_kib(busd.pid), received])
            gaps, malformed = sub.gaps, sub.malformed
        journal_bytes = pruned + (sum(p.stat().st_size for p in journal.rglob("*") if p.is_file())
                                  if journal.exists() else 0)
    rss = [r for _, r, _ in samples if r is not None]
    first = samples[0][1]
    warm = next((r for t, r, _ in samples if t >= warmup_s and r is not None), None)
    last = samples[-1][1]
    growth_warm = _growth_pct(warm, last)
    return {
        "bench": "bus-rss", "machine": machine, "duration_s": duration_s, "window": window,
        "sample_every_s": sample_s, "warmup_s": warmup_s,
        "method": "tradebus pub/sub as in `bench bus` (journal on), run for duration_s; busd RSS sampled "
                  "every sample_every_s; first = before the load, after_warmup = first sample at or after "
                  "warmup_s; rotated journal segments deleted during the run",
        "results": {
            "sent": sent, "received": received, "lost": sent - received, "gaps": gaps, "malformed": malformed,
            "msgs_per_s": round(received / elapsed, 1) if elapsed > 0 else None,
            "journal_bytes": journal_bytes, "busd_exit": busd.returncode,
            "rss_kib": {"first": first, "after_warmup": warm, "last": last,
                        "max": max(rss) if rss else None, "min": min(rss) if rss else None},
            "rss_growth_pct_from_first": _growth_pct(first, last),
            "rss_growth_pct_from_warmup": growth_warm,
            "samples": samples,
        },
        "targets": {
            "busd_rss_flat": {"target": f"last within {TARGET_RSS_GROWTH_PCT:g} % of after_warmup",
                              "measured": growth_warm,
                              "met": growth_warm is not None and abs(growth_warm) <= TARGET_RSS_GROWTH_PCT},
            "pubsub_zero_gaps": {"target": 0, "measured": sent - received + gaps,
                                 "met": sent - received + gaps == 0},
        },
    }


def run_bus(count: int = DEFAULT_BUS_COUNT, window: int = DEFAULT_WINDOW,
            rounds: int = DEFAULT_BUS_ROUNDS) -> dict[str, Any]:
    """Raw bytes once; then ``rounds`` pairs of raw msgpack and tradebus, run back to back and in
    alternating order (a drift of the machine's speed during the run falls on both alike). A pair
    takes about a second at full rate, where one noisy moment moves the ratio by 0.1, so the
    headline is the round with the median ratio; every round is reported, and gaps count in all."""
    machine = machine_info()
    results: dict[str, Any] = {}
    with Workspace() as ws:
        results["raw_bytes"] = _raw_pubsub(ws, count, window, "bytes")
    pairs: list[dict[str, Any]] = []
    for number in range(rounds):
        pair: dict[str, Any] = {}
        for variant in (("raw_msgpack", "tradebus") if number % 2 == 0 else ("tradebus", "raw_msgpack")):
            with Workspace() as ws:
                pair[variant] = (_raw_pubsub(ws, count, window, "msgpack") if variant == "raw_msgpack"
                                 else _tradebus_pubsub(ws, count, window))
        pair["ratio"] = ratio(pair["tradebus"]["msgs_per_s"] or 0, pair["raw_msgpack"]["msgs_per_s"] or 0)
        pairs.append(pair)
    median = sorted(pairs, key=lambda p: p["ratio"] or 0)[(len(pairs) - 1) // 2]
    results["raw_msgpack"], results["tradebus"] = median["raw_msgpack"], median["tradebus"]
    tb, mp, rb = results["tradebus"], results["raw_msgpack"], results["raw_bytes"]
    ratios = {
        "tradebus_vs_raw_msgpack_msgs_per_s": median["ratio"],
        "tradebus_vs_raw_bytes_msgs_per_s": ratio(tb["msgs_per_s"] or 0, rb["msgs_per_s"] or 0),
        "tradebus_vs_raw_msgpack_p50": ratio(tb["p50_us"], mp["p50_us"]),
        "tradebus_vs_raw_msgpack_p99": ratio(tb["p99_us"], mp["p99_us"]),
    }
    missed = sum(p["tradebus"]["lost"] + p["tradebus"]["gaps"] for p in pairs)
    r = ratios["tradebus_vs_raw_msgpack_msgs_per_s"]
    targets = {
        "pubsub_throughput_vs_raw_msgpack": {"target": f">= {TARGET_PUBSUB_RATIO} (median round)", "measured": r,
                                             "met": r is not None and r >= TARGET_PUBSUB_RATIO},
        "pubsub_zero_gaps": {"target": 0, "measured": missed, "met": missed == 0},
    }
    return {"bench": "bus", "machine": machine, "count": count, "window": window,
            "method": "publisher and subscriber in one process/thread, at most `window` in flight; "
                      "proxy (zmq.proxy) or busd (journal on) in its own process; latency = receive "
                      "minus send perf_counter_ns, under load; raw msgpack and tradebus in `rounds` "
                      "back-to-back pairs, `results` holding the pair with the median ratio",
            "results": results, "ratios": ratios, "targets": targets,
            "rounds": [{"raw_msgpack_msgs_per_s": p["raw_msgpack"]["msgs_per_s"],
                        "tradebus_msgs_per_s": p["tradebus"]["msgs_per_s"], "ratio": p["ratio"],
                        "tradebus_gaps": p["tradebus"]["gaps"], "tradebus_lost": p["tradebus"]["lost"]}
                       for p in pairs]}


# ============================================================================ rpc


def _rpc_result(latencies: list[int], elapsed_ns: int, errors: int = 0) -> dict[str, Any]:
    n = len(latencies)
    return {"calls": n, "errors": errors, "elapsed_s": round(elapsed_ns / 1e9, 4),
            "calls_per_s": round(n / (elapsed_ns / 1e9), 1) if elapsed_ns > 0 and n else None,
            **latency_stats_us(latencies)}


def _warmup_count(n: int) -> int:
    return min(200, max(10, n // 20))


def _raw_rpc(ws: Workspace, n: int, mode: str) -> dict[str, Any]:
    endpoint = ws.ipc(f"rpc.{mode}")
    ws.helper("router", endpoint)
    ws.helper("raw-worker", endpoint, mode)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        request = msgpack.packb(snapshot_request_dict())
        packb, unpackb = msgpack.packb, msgpack.unpackb
        clock = time.perf_counter_ns
        timeout_ms = int(RPC_TIMEOUT_S * 1000)
        epoch, envelope_dict = _bench_epoch(), envelope_dict_maker()
        sizes: dict[str, int] = {}

        def make_request() -> bytes:
            if mode == "bytes":
                return request
            # what RpcClient.call sends: an envelope (seq 0) around the request
            return packb(envelope_dict(REQUEST_TYPE, RPC_SERVICE, "bench-client", epoch, 0,
                                       snapshot_request_dict()))

        def call() -> None:
            data = make_request()
            sock.send(data)
            if not sock.poll(timeout_ms):
                raise RuntimeError("raw rpc: no reply within the timeout")
            reply = sock.recv()
            if mode != "bytes":
                unpackb(reply)
            if not sizes:
                sizes.update(request_bytes=len(data), reply_bytes=len(reply))

        # The router answers b"" until the worker has registered: wait for a real reply.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            sock.send(make_request())
            if sock.poll(timeout_ms) and sock.recv():
                break
            if time.monotonic() > deadline:
                raise RuntimeError("raw rpc: the worker never answered")
            time.sleep(0.01)
        for _ in range(_warmup_count(n)):
            call()
        latencies: list[int] = []
        start = clock()
        for _ in range(n):
            t0 = clock()
            call()
            latencies.append(clock() - t0)
        result = _rpc_result(latencies, clock() - start)
        result.update(sizes)
        return result
    finally:
        sock.close(0)
        ctx.term()


def _tradebus_rpc(ws: Workspace, n: int) -> dict[str, Any]:
    from bus.client import BusClient
    from bus.endpoints import Endpoints
    from bus.errors import NoWorker, UnknownService
    from schema.messages import AccountSnapshot, AccountSnapshotRequest

    assert (AccountSnapshotRequest.TYPE, AccountSnapshot.TYPE) == (REQUEST_TYPE, REPLY_TYPE)
    busd, state = ws.busd()
    ws.helper("tb-worker", str(state))
    bus = BusClient(Endpoints.for_state_dir(state), "bench-client")
    try:
        client = bus.rpc_client()
        body = AccountSnapshotRequest(session="bench")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:  # until the worker has registered with busd
            try:
                client.call(RPC_SERVICE, body, timeout_s=RPC_TIMEOUT_S)
                break
            except (NoWorker, UnknownService):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        call = client.call
        for _ in range(_warmup_count(n)):
            call(RPC_SERVICE, body, timeout_s=RPC_TIMEOUT_S)
        clock = time.perf_counter_ns
        latencies: list[int] = []
        start = clock()
        for _ in range(n):
            t0 = clock()
            reply = call(RPC_SERVICE, AccountSnapshotRequest(session="bench"), timeout_s=RPC_TIMEOUT_S)
            latencies.append(clock() - t0)
        assert isinstance(reply, AccountSnapshot), reply
        result = _rpc_result(latencies, clock() - start)
        from bus.codec import encode

        request = bus.envelope(RPC_SERVICE, AccountSnapshotRequest(session="bench"))
        answer = bus.envelope(RPC_SERVICE, reply, correlation_id=request.message_id,
                              causation_id=request.message_id)
        result.update({"request_bytes": len(encode(request)), "reply_bytes": len(encode(answer)),
                       "journal": True, "stale": client.stale, "malformed": client.malformed})
    finally:
        bus.close()
        stop_process(busd)
    result["busd_exit"] = busd.returncode
    return result


def run_rpc(count: int = DEFAULT_RPC_COUNT) -> dict[str, Any]:
    machine = machine_info()
    results: dict[str, Any] = {}
    with Workspace() as ws:
        results["raw_bytes"] = _raw_rpc(ws, count, "bytes")
    with Workspace() as ws:
        results["raw_msgpack"] = _raw_rpc(ws, count, "msgpack")
    with Workspace() as ws:
        results["tradebus"] = _tradebus_rpc(ws, count)
    tb, mp, rb = results["tradebus"], results["raw_msgpack"], results["raw_bytes"]
    ratios = {
        "tradebus_vs_raw_msgpack_p50": ratio(tb["p50_us"], mp["p50_us"]),
        "tradebus_vs_raw_bytes_p50": ratio(tb["p50_us"], rb["p50_us"]),
        "tradebus_vs_raw_msgpack_p99": ratio(tb["p99_us"], mp["p99_us"]),
        "tradebus_vs_raw_msgpack_calls_per_s": ratio(tb["calls_per_s"] or 0, mp["calls_per_s"] or 0),
    }
    r = ratios["tradebus_vs_raw_bytes_p50"]
    targets = {
        "rpc_p50_vs_raw_dealer_router_dealer": {"target": f"<= {TARGET_RPC_P50_RATIO}", "measured": r,
                                                "met": r is not None and r <= TARGET_RPC_P50_RATIO},
        "rpc_p99_us": {"target": f"< {TARGET_RPC_P99_US:g}", "measured": tb["p99_us"],
                       "met": tb["p99_us"] < TARGET_RPC_P99_US},
    }
    return {"bench": "rpc", "machine": machine, "count": count,
            "method": "one call in flight; client in this process, router (trivial ROUTER or busd with "
                      "journal on) and worker each in their own process; round trip perf_counter_ns",
            "results": results, "ratios": ratios, "targets": targets}


# ============================================================================ helper processes


def _watch_parent(parent: int, stop: threading.Event) -> None:
    """Set ``stop`` when the parent goes away (so a killed bench leaves nothing behind)."""
    def watch() -> None:
        while not stop.is_set():
            if os.getppid() != parent:
                stop.set()
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def _mark_ready(path: str) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)


def _role_proxy(args: argparse.Namespace, stop: threading.Event) -> None:
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    xsub.setsockopt(zmq.RCVHWM, HWM)
    xpub.setsockopt(zmq.SNDHWM, HWM)
    xsub.bind(args.endpoints[0])
    xpub.bind(args.endpoints[1])
    threading.Thread(target=zmq.proxy, args=(xsub, xpub), daemon=True).start()
    _mark_ready(args.ready)
    stop.wait()
    os._exit(0)  # zmq.proxy never returns; the sockets die with the process


def _role_router(args: argparse.Namespace, stop: threading.Event) -> None:
    """A trivial ROUTER: a DEALER that says b"READY" is the worker; [route, data] from it goes to
    client ``route``; anything else is a request, forwarded as [route, data]."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(args.endpoints[0])
    _mark_ready(args.ready)
    worker: bytes | None = None
    recv, send, NOBLOCK = router.recv_multipart, router.send_multipart, zmq.NOBLOCK
    while not stop.is_set():
        if not router.poll(100):
            continue
        while True:
            try:
                frames = recv(NOBLOCK)
            except zmq.Again:
                break
            ident = frames[0]
            if frames[1] == b"READY":
                worker = ident
            elif ident == worker:
                send(frames[1:])
            elif worker is None:
                send([ident, b""])  # not ready yet: an empty reply, the client retries
            else:
                send([worker, ident, frames[1]])


def _role_raw_worker(args: argparse.Namespace, stop: threading.Event) -> None:
    mode = args.endpoints[1]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.endpoints[0])
    sock.send(b"READY")
    _mark_ready(args.ready)
    reply = msgpack.packb(snapshot_reply_dict())
    packb, unpackb = msgpack.packb, msgpack.unpackb
    epoch, envelope_dict = _bench_epoch(), envelope_dict_maker()
    recv, send, NOBLOCK = sock.recv_multipart, sock.send_multipart, zmq.NOBLOCK
    while not stop.is_set():
        if not sock.poll(100):
            continue
        while True:
            try:
                route, data = recv(NOBLOCK)
            except zmq.Again:
                break
            if mode == "bytes":
                send([route, reply])
            else:  # what RpcWorker.reply sends: an envelope in reply to the request's
                request = unpackb(data)
                message_id = request[ENVELOPE_MESSAGE_ID]
                send([route, packb(envelope_dict(REPLY_TYPE, RPC_SERVICE, "bench-worker", epoch, 0,
                                                 snapshot_reply_dict(), correlation_id=message_id,
                                                 causation_id=message_id, session=request[ENVELOPE_SESSION]))])


def _role_tb_worker(args: argparse.Namespace, stop: threading.Event) -> None:
    from bus.client import BusClient
    from bus.endpoints import Endpoints
    from schema.messages import AccountSnapshot

    with BusClient(Endpoints.for_state_dir(args.endpoints[0]), "bench-worker") as bus:
        worker = bus.rpc_worker(RPC_SERVICE)
        _mark_ready(args.ready)
        position = Decimal("1.5")
        while not stop.is_set():
            request = worker.recv(100)
            if request is not None:
                worker.reply(request, AccountSnapshot(session=request.body.session, symbol="BTCUSDT",
                                                      position=position, open_orders=[]))


ROLES = {"proxy": _role_proxy, "router": _role_router, "raw-worker": _role_raw_worker,
         "tb-worker": _role_tb_worker}


def _helper_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("endpoints", nargs="*")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _watch_parent(args.parent, stop)
    ROLES[args.role](args, stop)
    return 0


# ============================================================================ the commands


def _emit(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2))


@click.group()
def bench() -> None:
    """Bus benchmarks: tradebus against raw pyzmq, JSON on stdout."""


@bench.command("bus")
@click.option("--count", type=click.IntRange(min=2), default=DEFAULT_BUS_COUNT, show_default=True,
              help="Messages per variant.")
@click.option("--window", type=click.IntRange(min=1), default=DEFAULT_WINDOW, show_default=True,
              help="At most this many messages in flight (sent, not yet received).")
@click.option("--rounds", type=click.IntRange(min=1), default=DEFAULT_BUS_ROUNDS, show_default=True,
              help="Pairs of raw msgpack and tradebus runs; the median ratio is the figure.")
@click.option("--rss", is_flag=True,
              help="Instead: run tradebus only, for --duration seconds, and report busd's resident memory.")
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help=f"With --rss: seconds of full-rate load [default: {DEFAULT_RSS_DURATION_S:g}].")
@click.option("--sample-every", type=click.FloatRange(min=0.1), default=RSS_SAMPLE_S, show_default=True,
              help="With --rss: seconds between RSS samples.")
def bench_bus(count: int, window: int, rounds: int, rss: bool, duration: float | None, sample_every: float) -> None:
    """Pub/sub: raw PUB->XSUB/XPUB->SUB (bytes, msgpack) vs publisher->busd (journal on)->subscriber."""
    if duration is not None and not rss:
        raise click.UsageError("--duration goes with --rss")
    try:
        if rss:
            _emit(run_bus_rss(duration or DEFAULT_RSS_DURATION_S, window, sample_every))
        else:
            _emit(run_bus(count, window, rounds))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


@bench.command("rpc")
@click.option("--count", type=click.IntRange(min=1), default=DEFAULT_RPC_COUNT, show_default=True,
              help="Calls per variant.")
def bench_rpc(count: int) -> None:
    """Request/reply: raw DEALER->ROUTER->DEALER (bytes, msgpack) vs RpcClient->busd (journal on)->RpcWorker."""
    try:
        _emit(run_rpc(count))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    sys.exit(_helper_main(sys.argv[1:]))

from services import bench_ttt as _bench_ttt  # noqa: E402,F401  (registers `bench tick-to-trade`)
from services import bench_engine as _bench_engine  # noqa: E402,F401  (registers engine benches)
from services.backtest import bench_replay as _bench_replay  # noqa: E402,F401  (registers `bench replay`)
