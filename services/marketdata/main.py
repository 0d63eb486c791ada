"""The market-data process of one session: bars from the data source onto the bus.

A streaming thread reads the broker's bar stream and publishes each new closed bar on
``md.<SYMBOL>.bar.<interval>``; on a disconnect it reconnects with capped backoff and resumes
after the last bar it published, so a reconnect neither repeats nor skips a bar. The main thread
serves ``marketdata.<session>``: recent bars for a late joiner (the strategy at start), which
subscribes first and then asks, so nothing falls between the two.
"""
from __future__ import annotations

import logging
import threading

import zmq

from brokers.errors import BrokerError, UnknownSymbol
from brokers.instruments import INSTRUMENTS, canonical_root
from bus import topics
from bus.logs import log
from schema import messages as m
from services.convert import bar_message
from services.marketdata.core import BarBook
from services.retry import Backoff
from services.runtime import ProcessShell, Stopping

HISTORY_BARS = 500
POLL_MS = 100
STREAM_BACKOFF = Backoff(base_s=0.2, cap_s=5.0)
STREAM_SWITCH_JOIN_S = 3.0
"""How long a contract switch waits for the old stream to end (it ends at its next bar or
heartbeat, which the simulator sends every second)."""


class MarketDataService:
    def __init__(self, shell: ProcessShell, session_name: str) -> None:
        self.shell = shell
        self.log = shell.log
        store = shell.store()
        self.session = store.get_session(session_name)
        self.broker = shell.broker(store, self.session.data_source)
        store.close()
        self.symbol = self.session.contract
        self.interval = self.session.interval
        self.topic = topics.bar(self.symbol, self.interval)
        self.book = BarBook()
        self.bus = shell.bus()

    def run(self) -> None:
        self._load_history()
        self._start_stream()
        worker = self.bus.rpc_worker(topics.marketdata_service(self.session.name))
        poller = zmq.Poller()
        poller.register(worker.socket, zmq.POLLIN)
        try:
            while not self.shell.stopping:
                if dict(poller.poll(POLL_MS)):
                    while (request := worker.recv(timeout_ms=0)) is not None:
                        worker.reply(request, self._answer(request.envelope.body))
                worker.heartbeat()
                if not self.streamer.is_alive() and not self.shell.stopping:
                    raise RuntimeError("bar stream thread died")
        finally:
            self.shell.request_stop()
            self.stream_stop.set()
            self.streamer.join(timeout=5)
            self.bus.close()
            self.broker.close()

    def _start_stream(self) -> None:
        self.stream_stop = threading.Event()
        self.streamer = threading.Thread(target=self._stream, args=(self.stream_stop,), name="bar-stream", daemon=True)
        self.streamer.start()

    def _switch(self, body: m.SwitchContract) -> m.Message:
        """The last phase of a roll: stream ``body.symbol`` instead (idempotent)."""
        if body.session != self.session.name:
            return m.ErrorReply(code="wrong_session", message=f"this is marketdata.{self.session.name}")
        if body.symbol != self.symbol:
            # Ask for the new contract's history before stopping the old stream: a symbol the data
            # source does not know is refused here, instead of leaving no stream and a history
            # load that retries forever while nobody is answered.
            try:
                if canonical_root(body.symbol) != canonical_root(self.symbol) or body.symbol in INSTRUMENTS:
                    raise UnknownSymbol(body.symbol, detail=f"a roll moves to another contract of "
                                                          f"{canonical_root(self.symbol)}")
                self.broker.historical_bars(body.symbol, self.interval, limit=HISTORY_BARS)
            except (BrokerError, ValueError) as exc:
                return m.ErrorReply(code="unknown_symbol",
                                    message=f"cannot stream {body.symbol[:40]!r}: {str(exc)[:200]}")
            self.stream_stop.set()
            self.streamer.join(timeout=STREAM_SWITCH_JOIN_S)
            if self.streamer.is_alive():
                return m.ErrorReply(code="busy", message=f"the {self.symbol} stream did not stop; ask again")
            previous = self.symbol
            self.symbol = body.symbol
            self.topic = topics.bar(self.symbol, self.interval)
            self.book = BarBook()
            self._load_history()
            self._start_stream()
            log(self.log, "contract_switched", previous=previous, symbol=self.symbol)
        return m.ContractSwitched(symbol=self.symbol, bars=len(self.book.after(0)))

    def _answer(self, body: m.Message) -> m.Message:
        if isinstance(body, m.SwitchContract):
            return self._switch(body)
        if not isinstance(body, m.BarsRequest):
            return m.ErrorReply(code="unsupported", message=f"marketdata does not handle {body.TYPE!r}")
        if (body.symbol, body.interval) != (self.symbol, self.interval):
            return m.ErrorReply(code="unknown_symbol",
                                message=f"this service has {self.symbol} {self.interval}, not "
                                        f"{body.symbol} {body.interval}")
        return m.BarsReply(bars=self.book.after(body.after_ts_ns))

    def _load_history(self) -> None:
        bars = self.shell.until_connected(
            "data source", lambda: self.broker.historical_bars(self.symbol, self.interval, limit=HISTORY_BARS))
        self.book.extend(bar_message(b) for b in bars)
        log(self.log, "history_loaded", symbol=self.symbol, bars=len(bars), last_index=self.book.last_index)

    def _stream(self, stop: threading.Event) -> None:
        """Runs on its own thread with its own publisher socket (ZeroMQ sockets are per thread).
        ``stop``: this stream's end (a contract switch), as opposed to the process's."""
        publisher = self.bus.publisher()
        attempt = 0
        symbol, topic, book = self.symbol, self.topic, self.book
        try:
            while not self.shell.stopping and not stop.is_set():
                try:
                    for bar in self.broker.stream_bars(symbol, self.interval, after_index=book.last_index):
                        if self.shell.stopping or stop.is_set():
                            return
                        attempt = 0
                        if bar is None:
                            continue  # keep-alive
                        message = bar_message(bar)
                        if book.add(message):
                            publisher.publish(topic, message, session=self.session.name, event_ns=bar.ts_ns)
                except BrokerError as exc:
                    attempt += 1
                    delay = STREAM_BACKOFF.delay(attempt) or STREAM_BACKOFF.cap_s
                    log(self.log, "stream_reconnect", level=logging.WARNING, symbol=symbol,
                        error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 3),
                        resume_after_index=book.last_index)
                    if stop.wait(delay):
                        return
        except Stopping:
            return
        finally:
            publisher.close()


def run(shell: ProcessShell, session: str) -> None:
    MarketDataService(shell, session).run()


