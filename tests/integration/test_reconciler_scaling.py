"""Three reconciler workers share the sessions through leases, and answer operator commands.

Real processes (busd, venue-sim and three ``tradebus run reconciler --worker N``) on one database
holding five sessions. Every worker logs one ``reconcile_round`` line per session and round with
its lease epoch and wall-clock start/end (the lease's own clock); the tests read those lines to
prove that a session is never reconciled by two workers at once, and read the lease rows to time
how fast a killed worker's sessions are taken over.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_tree import free_port, wait_until

from bus import topics
from bus.client import BusClient
from bus.endpoints import Endpoints
from bus.errors import RemoteError
from bus.envelope import now_ns
from schema import messages as m
from schema.store import Store
from services.config import DEMO_ACCOUNT
from services.sessions import add_session
from services.tree import prepare_root

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
WORKERS = 3
INTERVAL_S = 0.5
TTL_S = INTERVAL_S * 3  # the reconciler's lease TTL (services.reconciler.main.Reconciler.round)
# Beyond TTL + one interval, the first session taken over may wait for this test's polling and the
# taker's reconciles of its own sessions earlier in that round; later ones also for the taker's
# reconciles of the sessions it took just before (one round takes them all, one after another, and a
# worker that held nothing yet first builds its broker client).
FIRST_TAKEOVER_SLACK_S = 0.35
LAST_TAKEOVER_SLACK_S = 0.9
EXTRA_SESSIONS = (("nq-sma", "NQ"), ("cl-sma", "CL"), ("gc-sma", "GC"))  # beside the demo's es-sma, 6e-sma


@dataclass(frozen=True)
class Round:
    session: str
    worker: int
    owner: str
    epoch: int
    lease_expires_ns: int
    started_ns: int
    ended_ns: int


class Reconcilers:
    """busd + venue-sim + WORKERS reconciler processes on one database, started by hand."""

    def __init__(self, root: Path, db_url: str) -> None:
        self.root = root
        self.port = free_port()
        self.env = prepare_root(root, (
            f'[engine]\ndb_url = "{db_url}"\nreconcilers = {WORKERS}\nreconcile_interval_s = {INTERVAL_S}\n'
            f"[venue_sim]\nport = {self.port}\npace_s = 0.2\nhistory_bars = 5\n"))
        subprocess.run([str(BIN / "tradebus"), "init"], env=self.env, check=True, capture_output=True)
        self.store = Store.from_url(db_url)
        for name, root_symbol in EXTRA_SESSIONS:
            add_session(self.store, name=name, strategy="sma_cross", symbol=root_symbol,
                        params={"fast": 3, "slow": 8, "qty": 1}, account=DEMO_ACCOUNT, data_source=DEMO_ACCOUNT,
                        interval="1m", now_ns=now_ns())
        self.sessions = [s.name for s in self.store.list_sessions()]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.bus = BusClient(Endpoints.for_state_dir(root / "state"), source="test")

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as out:
            proc = subprocess.Popen([str(BIN / "tradebus"), "run", *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.spawn("busd", "busd")
        self.spawn("venue-sim", "venue-sim")
        wait_until(lambda: (self.root / "state" / "bus" / "busd.ready").exists(), timeout=20, what="busd ready")
        wait_until(lambda: (self.root / "state" / "venue-sim.json").exists(), timeout=20, what="venue-sim ready")
        for worker in range(WORKERS):
            self.spawn(self.worker_name(worker), "reconciler", "--worker", str(worker))

    @staticmethod
    def worker_name(worker: int) -> str:
        return f"reconciler_{worker:02d}"

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def records(self, name: str, action: str) -> list[dict]:
        out = []
        for line in self.log(name).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut by kill -9, or a traceback
            if record.get("action") == action:
                out.append(record)
        return out

    def rounds(self) -> list[Round]:
        return [Round(r["session"], r["worker"], r["owner"], r["epoch"], r["lease_expires_ns"], r["started_ns"],
                      r["ended_ns"])
                for w in range(WORKERS) for r in self.records(self.worker_name(w), "reconcile_round")]

    def releases(self) -> list[tuple[str, str, int]]:
        return [(r["owner"], r["session"], r["released_ns"])
                for w in range(WORKERS) for r in self.records(self.worker_name(w), "lease_released")]

    def owners(self) -> dict[str, str | None]:
        """Session -> owner of its ``reconcile:<session>`` lease (None: no lease row yet)."""
        out = {}
        for name in self.sessions:
            lease = self.store.get_lease(f"reconcile:{name}")
            out[name] = None if lease is None else lease.owner
        return out

    def busd_services_ready(self, service: str) -> int:
        return sum(1 for r in self.records("busd", "worker_ready") if service in r.get("services", []))

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.bus.close()
        self.store.close()

    def diagnostics(self) -> str:
        return "\n".join(f"--- {name} (rc {proc.poll()})\n" + "\n".join(self.log(name).splitlines()[-15:])
                         for name, proc in self.procs.items())


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Reconcilers]:
    c = Reconcilers(tmp_path_factory.mktemp("recon"), db_url)
    try:
        c.start()
        yield c
    except BaseException:
        print(c.diagnostics())
        raise
    finally:
        c.close()


def assert_never_two_at_once(rounds: list[Round], releases: list[tuple[str, str, int]] = (),
                             deaths: dict[str, int] | None = None) -> None:
    """Per session: one worker per lease epoch, epochs only grow, every round ends inside its lease,
    and a new epoch's rounds start only after the previous epoch's lease ran out, or its owner gave
    it up (``releases``: (owner, session, released_ns), logged when a worker hands its surplus to
    a newcomer), or its owner was dead (``deaths``: owner → ns by which it had been killed and
    reaped) — so no two workers' rounds on a session overlap."""
    by_session: dict[str, list[Round]] = defaultdict(list)
    for r in rounds:
        by_session[r.session].append(r)
    for session, its in by_session.items():
        its.sort(key=lambda r: r.started_ns)
        owners_of_epoch: dict[int, set[str]] = defaultdict(set)
        for r in its:
            owners_of_epoch[r.epoch].add(r.owner)
            assert r.started_ns <= r.ended_ns <= r.lease_expires_ns, f"{session}: round outlived its lease: {r}"
        assert all(len(o) == 1 for o in owners_of_epoch.values()), f"{session}: epoch with two owners {owners_of_epoch}"
        epochs = [r.epoch for r in its]
        assert epochs == sorted(epochs), f"{session}: epochs went backwards {epochs}"
        for earlier, later in zip(its, its[1:]):
            if later.owner != earlier.owner:
                # The earlier owner's last lease (as it logged it) had run out before the new one started.
                last_expiry = max(r.lease_expires_ns for r in its if r.epoch == earlier.epoch)
                given_up = [ns for owner, s, ns in releases
                            if owner == earlier.owner and s == session and ns >= earlier.ended_ns]
                died = [] if deaths is None or earlier.owner not in deaths else [deaths[earlier.owner]]
                tenure_end = min([last_expiry, *given_up, *died])
                assert later.started_ns >= tenure_end, f"{session}: {later} started inside {earlier.owner}'s lease"
        for i, a in enumerate(its):
            for b in its[i + 1:]:
                if a.owner != b.owner:
                    assert a.ended_ns <= b.started_ns or b.ended_ns <= a.started_ns, f"{session}: {a} overlaps {b}"


def test_three_workers_never_reconcile_a_session_twice_and_take_over_a_killed_worker(cluster: Reconcilers) -> None:
    # Given three workers that have reconciled every session a few times
    wait_until(lambda: all(sum(1 for r in cluster.rounds() if r.session == s) >= 3 for s in cluster.sessions),
               timeout=30, what="three rounds of every session")
    before = cluster.owners()
    assert None not in before.values()
    # When the worker holding the most leases is killed with SIGKILL (no chance to release anything)
    victim_owner = max(set(before.values()), key=lambda o: sum(1 for v in before.values() if v == o))
    victim_held = sorted(s for s, o in before.items() if o == victim_owner)
    victim_name = victim_owner.rsplit(":", 1)[1]  # host:pid:reconciler_NN
    victim = cluster.procs[victim_name]
    assert int(victim_owner.split(":")[-2]) == victim.pid
    epochs = {s: cluster.store.get_lease(f"reconcile:{s}").epoch for s in victim_held}
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(timeout=10)
    dead_by_ns = time.time_ns()  # reaped: nothing of it runs after this
    # Then each of its sessions is taken over by a live worker within the lease TTL and one interval
    taken: dict[str, float] = {}

    def all_taken() -> bool:
        for s in victim_held:
            lease = cluster.store.get_lease(f"reconcile:{s}")
            if s not in taken and lease.owner not in (None, victim_owner):
                taken[s] = time.monotonic() - killed_at
        return len(taken) == len(victim_held)

    wait_until(all_taken, timeout=TTL_S + INTERVAL_S + 10, what="the killed worker's sessions to be taken over",
               interval=0.02)
    print(f"victim {victim_name} held {victim_held}; taken over after {taken}")
    first_bound, last_bound = TTL_S + INTERVAL_S + FIRST_TAKEOVER_SLACK_S, TTL_S + INTERVAL_S + LAST_TAKEOVER_SLACK_S
    assert min(taken.values()) <= first_bound, f"first takeover slower than {first_bound:.2f}s: {taken}"
    assert max(taken.values()) <= last_bound, f"takeover slower than {last_bound:.2f}s: {taken}"
    # ... and not before the lease could have run out (the victim renewed it at most one interval
    # before it died, and every round renews for a whole TTL) — unless the taker had proof that the
    # holder is dead (its pid gone on this host), which it then logs
    early = {s for s, after_s in taken.items() if after_s < TTL_S - INTERVAL_S}
    proven = {r["lease"].removeprefix("reconcile:") for w in range(WORKERS)
              for r in cluster.records(cluster.worker_name(w), "lease_taken_from_dead_process")
              if r["holder"] == victim_owner}
    assert early <= proven, f"taken over while the lease was still valid, without proof of death: {taken}"
    # ... under a newer epoch, by a live worker that then really reconciles it
    after = {s: cluster.store.get_lease(f"reconcile:{s}") for s in victim_held}
    assert all(after[s].epoch > epochs[s] for s in victim_held)
    live = {p.pid for name, p in cluster.procs.items() if name.startswith("reconciler_") and p.poll() is None}
    assert {int(lease.owner.split(":")[-2]) for lease in after.values()} <= live
    wait_until(lambda: all(any(r.session == s and r.epoch == after[s].epoch for r in cluster.rounds())
                           for s in victim_held), timeout=10, what="rounds under the new epochs")
    # And over the whole run, no session was ever reconciled by two workers at once
    for name, proc in cluster.procs.items():
        if name.startswith("reconciler_") and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in cluster.procs.items():
        if name.startswith("reconciler_"):
            proc.wait(timeout=15)
    rounds = cluster.rounds()
    assert {r.session for r in rounds} == set(cluster.sessions)
    assert len({r.owner for r in rounds}) >= 2  # the takeover is in the evidence, not just one worker
    assert_never_two_at_once(rounds, cluster.releases(), deaths={victim_owner: dead_by_ns})
    # ... and the sessions were split among the workers, not all taken by the first to start
    assert len(set(before.values())) >= 2, f"one worker held every session: {before}"


def test_overlap_check_catches_two_workers_at_once() -> None:
    # The checker itself must be able to fail: two owners inside one lease period.
    a = Round("s", 0, "h:1:reconciler_00", 1, 1_000, 100, 200)
    b = Round("s", 1, "h:2:reconciler_01", 2, 2_000, 150, 300)
    with pytest.raises(AssertionError):
        assert_never_two_at_once([a, b])
    c = Round("s", 1, "h:2:reconciler_01", 2, 2_500, 1_000, 1_100)  # after a's lease ran out
    assert_never_two_at_once([a, c])


# ---------------------------------------------------------------------------------- operator commands


def wait_control_served(cluster: Reconcilers) -> None:
    wait_until(lambda: cluster.busd_services_ready(topics.CONTROL_SERVICE) >= WORKERS, timeout=30,
               what="every reconciler to register the control service")


def make_trading(cluster: Reconcilers, name: str) -> None:
    for event in ("start", "reconcile", "reconciled"):
        cluster.store.transition_session(name, event, reason="test", now_ns=now_ns())


def test_operator_commands_over_the_bus_change_the_session_and_errors_come_back(cluster: Reconcilers) -> None:
    wait_control_served(cluster)
    name = "nq-sma"
    make_trading(cluster, name)
    rpc = cluster.bus.rpc_client()
    sub = cluster.bus.subscriber([topics.session(name)])
    sub.wait_connected(cluster.bus.publisher())

    def next_state_change() -> m.SessionStateChanged:
        envelope = sub.recv(timeout_ms=5_000)
        assert envelope is not None, "no SessionStateChanged published"
        assert isinstance(envelope.body, m.SessionStateChanged)
        return envelope.body

    # When an operator halts the session through the control service
    reply = rpc.call(topics.CONTROL_SERVICE, m.OperatorCommand(command="halt", session=name, reason="fat finger"),
                     timeout_s=10)
    # Then the database says halted, with the reason, and the change was announced
    assert isinstance(reply, m.CommandDone) and reply.state == "halted" and reply.session == name
    session = cluster.store.get_session(name)
    assert str(session.state) == "halted" and session.state_reason == "fat finger"
    change = next_state_change()
    assert (change.session, change.state, change.previous, change.reason) == (name, "halted", "trading", "fat finger")

    # When it is resumed, it trades again
    reply = rpc.call(topics.CONTROL_SERVICE, m.OperatorCommand(command="resume", session=name), timeout_s=10)
    assert isinstance(reply, m.CommandDone) and reply.state == "trading"
    assert str(cluster.store.get_session(name).state) == "trading"
    change = next_state_change()
    assert (change.state, change.previous) == ("trading", "halted")

    # A session that does not exist, an illegal transition and an unknown command come back as errors
    events_before = len(cluster.store.events(f"session:{name}"))
    with pytest.raises(RemoteError) as unknown:
        rpc.call(topics.CONTROL_SERVICE, m.OperatorCommand(command="halt", session="no-such"), timeout_s=10)
    assert unknown.value.code == "refused" and "no session named 'no-such'" in unknown.value.message
    with pytest.raises(RemoteError) as illegal:
        rpc.call(topics.CONTROL_SERVICE, m.OperatorCommand(command="resume", session=name), timeout_s=10)
    assert illegal.value.code == "refused" and "no transition from trading on resume" in illegal.value.message
    with pytest.raises(RemoteError) as bogus:
        rpc.call(topics.CONTROL_SERVICE, m.OperatorCommand(command="explode", session=name), timeout_s=10)
    assert bogus.value.code == "refused" and "unknown command 'explode'" in bogus.value.message
    with pytest.raises(RemoteError) as wrong_type:
        rpc.call(topics.CONTROL_SERVICE, m.AccountSnapshotRequest(session=name), timeout_s=10)
    assert wrong_type.value.code == "unsupported"
    # ... leaving the session as it was, and announcing nothing
    assert str(cluster.store.get_session(name).state) == "trading"
    assert len(cluster.store.events(f"session:{name}")) == events_before
    assert sub.recv(timeout_ms=300) is None

    # And the workers keep serving: every one of them answers (busd spreads requests over them)
    for _ in range(WORKERS * 2):
        halted = rpc.call(topics.CONTROL_SERVICE, m.OperatorCommand(command="halt", session=name), timeout_s=10)
        assert halted.state == "halted"
        resumed = rpc.call(topics.CONTROL_SERVICE, m.OperatorCommand(command="resume", session=name), timeout_s=10)
        assert resumed.state == "trading"
    answered_by = {r["process"] for w in range(WORKERS)
                   for r in cluster.records(cluster.worker_name(w), "command_done")}
    assert answered_by == {cluster.worker_name(w) for w in range(WORKERS)}
    assert all(p.poll() is None for p in cluster.procs.values())
