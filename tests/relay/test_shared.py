"""The shared limit table of ``veil relay --workers N`` (proxy/relay/shared.py), with two workers' views of one file
in one process: a cap holds over the sum, a dead worker's counts are forgotten, a client never gets more than its
cap whatever the collisions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.relay.shared import BUCKETS, SharedAdmission, SharedClientLimits, SharedTable, clear_region, create_table


@pytest.fixture
def path(tmp_path: Path) -> str:
    p = str(tmp_path / "limits")
    create_table(p, 2)
    return p


@pytest.fixture
def tables(path: str) -> list[SharedTable]:
    return [SharedTable(path, 0), SharedTable(path, 1)]


def limits(t: SharedTable, **kw: int) -> SharedClientLimits:
    return SharedClientLimits(t, max_connections=kw.get("conn", 3))


def in_flight_only(t: SharedTable, flight: int = 3) -> SharedAdmission:
    """The address's in-flight check alone: the rate and all requests in flight far from their caps."""
    return SharedAdmission(t, per_minute=1 << 20, max_concurrent=1 << 20, max_in_flight=flight)


def enter(admission: SharedAdmission, key: bytes) -> bool:
    return admission.admit(key) is None


def test_in_flight_cap_holds_over_both_workers_and_a_dead_workers_count_is_cleared(path: str,
                                                                                  tables: list[SharedTable]) -> None:
    assert limits(tables[0]).key(None) == limits(tables[1]).key(None)  # one key in every worker: an address has the
    # same counters everywhere
    a, b = in_flight_only(tables[0]), in_flight_only(tables[1])
    key = os.urandom(16)
    assert enter(a, key) and enter(b, key) and enter(a, key)
    assert not enter(a, key) and not enter(b, key)  # 3 = the cap, wherever the fourth arrives
    assert enter(b, os.urandom(16))  # another address is not affected
    b.release(key)
    assert enter(a, key)
    assert not enter(b, key)
    clear_region(path, 0)  # worker 0 died: its 3 requests in flight went with it
    assert enter(b, key) and enter(b, key) and enter(b, key) and not enter(b, key)


def test_connection_cap_over_both_workers(tables: list[SharedTable]) -> None:
    a, b = limits(tables[0], conn=2), limits(tables[1], conn=2)
    key = os.urandom(16)
    assert a._count_connection(key) and b._count_connection(key)
    assert not a._count_connection(key) and not b._count_connection(key)
    a._uncount_connection(key)
    assert b._count_connection(key)


def test_rate_is_summed_within_a_window_and_forgotten_after_it(tables: list[SharedTable]) -> None:
    ra, rb = (SharedAdmission(t, per_minute=4, max_concurrent=1 << 20, max_in_flight=1 << 20) for t in tables)
    key = os.urandom(16)
    now = 600.0
    assert [ra.admit(key, now), rb.admit(key, now), ra.admit(key, now), rb.admit(key, now)] == [None] * 4
    assert ra.admit(key, now) == "rate_limited" and rb.admit(key, now) == "rate_limited"
    assert ra.admit(os.urandom(16), now) is None
    # The next minute: worker b has not seen it yet, its old counts must not count.
    assert ra.admit(key, now + 60) is None and rb.admit(key, now + 60) is None


def test_collisions_only_make_a_cap_stricter(tables: list[SharedTable]) -> None:
    a = in_flight_only(tables[0], flight=2)
    victim = os.urandom(16)
    b0, b1 = SharedTable.buckets(victim)
    # Another address sharing the victim's first counter (not its second): the victim still gets its 2.
    other = bytearray(os.urandom(16))
    other[0:4] = victim[0:4]
    while SharedTable.buckets(bytes(other))[1] == b1:
        other[4:8] = os.urandom(4)
    assert enter(a, bytes(other)) and enter(a, bytes(other))
    assert enter(a, victim) and enter(a, victim) and not enter(a, victim)
    assert 0 <= b0 < BUCKETS <= b1 < 2 * BUCKETS


def test_one_lock_admission_applies_rate_then_slots_then_in_flight_over_both_workers(path: str,
                                                                                     tables: list[SharedTable]) -> None:
    """SharedAdmission (one flock per request) refuses exactly as the three separate checks did: the rate first, then
    all requests in flight, then the address's; a refusal takes nothing, a release gives both units back."""
    a, b = (SharedAdmission(t, per_minute=6, max_concurrent=3, max_in_flight=2) for t in tables)
    key, other, third = os.urandom(16), os.urandom(16), os.urandom(16)
    now = 600.0
    assert a.admit(key, now) is None and b.admit(key, now) is None
    assert a.admit(key, now) == "address_busy"  # 2 of this address in flight, over both workers
    assert b.admit(other, now) is None
    assert a.admit(third, now) == "busy"  # 3 in flight in all
    assert tables[0].in_flight() == 3  # the refusals took no slot
    b.release(key)
    assert a.admit(key, now) is None  # its unit and the slot came back
    a.release(key)
    b.release(other)
    for _ in range(6 - 4):  # key's window: 4 counted (refusals count, as in one process), 2 left
        assert a.admit(key, now) is None
        a.release(key)
    assert b.admit(key, now) == "rate_limited" and a.admit(key, now) == "rate_limited"
    assert a.admit(key, now + 60) is None  # the next minute
    assert tables[1].in_flight() == 2 and b.admit(key, now + 60) == "address_busy"  # worker 0 holds key's two
    clear_region(path, 0)  # worker 0 died
    assert tables[1].in_flight() == 0 and b.admit(key, now + 60) is None


def test_a_shared_dir_being_made_is_never_taken_for_a_stale_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another supervisor's scan at the worst moment, between the lock file's creation and its lock, must not take
    the new directory for an abandoned one (it would remove a live relay's shared files)."""
    import fcntl

    from proxy.relay import workers

    real_flock = fcntl.flock
    scanned: list[list[str]] = []
    racing = [True]

    def flock_after_a_scan(fd: int, op: int) -> None:
        if racing.pop() if racing else False:  # once: the scan's own flock calls go straight through
            scanned.append(workers.remove_stale_dirs(str(tmp_path)))
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_scan)
    path, fd = workers.make_shared_dir(str(tmp_path))
    try:
        assert scanned == [[]] and path.is_dir() and (path / "supervisor.lock").is_file()
        assert path.name.startswith(f"veil-relay-{os.getpid()}-")
        monkeypatch.setattr(fcntl, "flock", real_flock)
        assert workers.remove_stale_dirs(str(tmp_path)) == [] and path.is_dir()  # locked: its supervisor runs
    finally:
        os.close(fd)
    assert workers.remove_stale_dirs(str(tmp_path)) == [path.name] and not path.exists()  # lock gone: stale
