"""The job store's contract, run against both backends: SQLite (one node) and a real Postgres (a fleet)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import pytest

from vidpipe.errors import UsageError
from vidpipe.serve.store import JobRecord, NodeInfo, open_store
from vidpipe.serve.store.sql import SCHEMA_VERSION


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    spec = request.getfixturevalue("postgres_dsn") if request.param == "postgres" else None
    store = open_store(spec, tmp_path)
    yield store
    store.close()


def job(client: str = "c", **fields) -> JobRecord:
    return JobRecord(uuid.uuid4().hex, 0, "queued", time.time(), {"steps": 2}, "/in.png", "in", 1, 2, client=client,
                     **fields)


def test_jobs_are_kept_in_order_and_paged(store):
    ids = [store.insert(job()).id for _ in range(5)]
    assert [store.get(i).seq for i in ids] == sorted(store.get(i).seq for i in ids)
    assert [r.id for r in store.recent(2)] == ids[:2:-1]
    assert [r.id for r in store.recent(10, before_seq=store.get(ids[2]).seq)] == ids[1::-1]
    assert store.queued_ids() == ids and store.queue_position(ids[3]) == 4
    assert store.count_queued() == 5 and store.count_queued("c") == 5 and store.count_queued("other") == 0
    assert store.get("0" * 32) is None


def test_an_idempotency_key_returns_the_first_job(store):
    first = store.insert(job(), "key-1")
    again = store.insert(job(), "key-1")
    assert again.id == first.id and store.count_queued() == 1
    assert store.insert(job(client="someone else"), "key-1").id != first.id  # a key is the client's own
    assert store.insert(job(), "key-2").id != first.id


def test_a_claim_takes_the_oldest_job_and_its_writes_are_fenced(store):
    first, second = store.insert(job()), store.insert(job())
    claim = store.claim("a", 30, 3, time.time())
    assert claim.record.id == first.id and claim.record.status == "running"
    assert (claim.record.node, claim.record.attempts) == ("a", 1)
    assert store.claim("b", 30, 3, time.time()).record.id == second.id
    assert store.claim("b", 30, 3, time.time()) is None
    beat = store.heartbeat(first.id, claim.token, 30, {"steps_done": 1, "files": ["x.mp4"]})
    assert beat.held and not beat.cancel_requested
    assert store.get(first.id).files == ["x.mp4"] and store.get(first.id).steps_done == 1
    assert not store.update(first.id, "a stale token", {"status": "done"})
    assert not store.heartbeat(first.id, "a stale token", 30, {}).held
    assert store.update(first.id, claim.token, {"status": "done", "finished_at": time.time()})
    assert store.get(first.id).status == "done"
    assert not store.heartbeat(first.id, claim.token, 30, {}).held  # a finished job holds no lease


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out(store):
    record = store.insert(job())
    old = store.claim("a", 0.3, 3, time.time())
    assert store.claim("b", 30, 3, time.time()) is None  # the lease still runs
    time.sleep(0.4)
    new = store.claim("b", 30, 3, time.time())
    assert new.record.id == record.id and (new.record.node, new.record.attempts) == ("b", 2)
    assert not store.heartbeat(record.id, old.token, 30, {"steps_done": 2}).held
    assert not store.update(record.id, old.token, {"status": "done", "files": ["old.mp4"]})
    assert store.update(record.id, new.token, {"status": "done", "files": ["new.mp4"]})
    assert store.get(record.id).files == ["new.mp4"]


def test_a_node_does_not_take_back_a_job_it_still_holds(store):
    """A node whose lease ran out while it still runs the job (it is stopping it) skips that job, and takes the next;
    once it has stopped, the job is its to claim again."""
    first, second = store.insert(job()), store.insert(job())
    store.claim("a", 0.2, 3, time.time())
    time.sleep(0.3)
    assert store.claim("a", 30, 3, time.time(), exclude=(first.id,)).record.id == second.id
    again = store.claim("a", 30, 3, time.time(), exclude=(second.id,))
    assert again.record.id == first.id and again.record.attempts == 2


def test_a_job_whose_nodes_keep_dying_fails_after_max_attempts(store):
    record = store.insert(job())
    for _ in range(2):
        assert store.claim("a", 0.1, 2, time.time()).record.id == record.id
        time.sleep(0.2)
    assert store.claim("a", 30, 2, time.time()) is None
    failed = store.get(record.id)
    assert failed.status == "failed" and failed.attempts == 2
    assert failed.error == ("its node stopped before it finished, on each of its 2 attempts (--max-attempts 2; the "
                            "last node: a): not run again")


def test_release_and_restart_put_jobs_back(store):
    one, two = store.insert(job()), store.insert(job())
    claim = store.claim("a", 30, 3, time.time())
    assert store.release(one.id, claim.token)  # a clean stop: the attempt is not counted
    again = store.claim("a", 30, 3, time.time())
    assert again.record.id == one.id and again.record.attempts == 1
    store.claim("a", 30, 3, time.time())
    assert sorted(store.release_node("a")) == sorted([one.id, two.id])  # started again after a kill: it counts
    assert store.get(one.id).status == "queued" and store.get(one.id).attempts == 1
    assert store.claim("b", 30, 3, time.time()).record.attempts == 2


def test_cancel_ends_a_queued_job_and_flags_a_running_one(store):
    queued, running = store.insert(job()), store.insert(job())
    assert store.request_cancel(queued.id, time.time()) == "cancelled"
    claim = store.claim("a", 0.3, 3, time.time())
    assert claim.record.id == running.id
    assert store.request_cancel(running.id, time.time()) == "requested"
    assert store.heartbeat(running.id, claim.token, 0.3, {}).cancel_requested
    time.sleep(0.4)  # its node died before stopping it: the next claim ends it cancelled, not run again
    assert store.claim("b", 30, 3, time.time()) is None
    assert store.get(running.id).status == "cancelled"
    assert store.request_cancel(running.id, time.time()) is None


def test_two_nodes_claiming_at_once_never_take_the_same_job(store):
    ids = {store.insert(job()).id for _ in range(30)}
    taken: dict[str, list] = {"a": [], "b": []}

    def node(name):
        while (claim := store.claim(name, 30, 3, time.time())) is not None:
            taken[name].append(claim.record.id)

    threads = [threading.Thread(target=node, args=(name,)) for name in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken["a"] + taken["b"]) == sorted(ids)


def test_nodes_are_listed_with_their_heartbeat(store):
    store.node_beat(NodeInfo("a", "http://127.0.0.1:1/", "dp2", 2, "tiny", "ready"), time.time())
    nodes = store.node_beat(NodeInfo("b", "http://127.0.0.1:2/", "pp2", 2, "tiny", "busy"), time.time())
    assert [(n["name"], n["plan"], n["gpus"], n["status"]) for n in nodes] == [
        ("a", "dp2", 2, "ready"), ("b", "pp2", 2, "busy")]
    assert all(0 <= n["seconds_since"] < 5 for n in nodes)


def test_a_newer_schema_is_refused_in_one_line(store, tmp_path):
    with store._transaction() as run:
        run("UPDATE vidpipe_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    spec = getattr(store, "_dsn", None)
    with pytest.raises(UsageError, match=f"schema is version {SCHEMA_VERSION + 1}, newer than this vidpipe's"):
        open_store(spec, tmp_path)


def test_a_first_version_sqlite_store_is_migrated(tmp_path):
    old = sqlite3.connect(tmp_path / "jobs.sqlite3")
    old.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, status TEXT NOT NULL, created_at REAL "
                "NOT NULL, started_at REAL, finished_at REAL, request TEXT NOT NULL, image_path TEXT NOT NULL, "
                "image_name TEXT NOT NULL, samples_total INTEGER NOT NULL, samples_done INTEGER NOT NULL DEFAULT 0, "
                "steps_total INTEGER NOT NULL, steps_done INTEGER NOT NULL DEFAULT 0, files TEXT NOT NULL DEFAULT "
                "'[]', error TEXT, first_step_at REAL, latencies_s TEXT NOT NULL DEFAULT '[]')")
    for job_id, seq, status in (("a", 1, "done"), ("b", 2, "running")):  # b: its server was killed mid-job
        old.execute("INSERT INTO jobs (id, seq, status, created_at, request, image_path, image_name, samples_total, "
                    "steps_total) VALUES (?, ?, ?, 0, '{}', 'x.png', 'x', 1, 2)", (job_id, seq, status))
    old.commit()
    old.close()
    store = open_store(None, tmp_path)
    record = store.get("a")
    assert record.status == "done" and record.client is None and record.attempts == 0
    assert store.insert(job()).seq == 3
    assert store.claim("n", 30, 3, time.time()).record.id == "b"  # run again, before the new job
    store.close()


def test_an_unreachable_store_is_one_line_without_its_password(postgres_cluster, tmp_path):
    dsn = postgres_cluster.dsn().replace(f":{postgres_cluster.port}/", ":1/")
    with pytest.raises(UsageError) as refused:
        open_store(dsn, tmp_path)
    message = str(refused.value)
    assert "postgresql://vidpipe@127.0.0.1:1/postgres" in message and "cannot connect" in message
    assert "pw-never-shown" not in message and "\n" not in message
    with pytest.raises(UsageError, match="give a postgresql://"):
        open_store("mysql://x", tmp_path)


def test_postgres_wakes_listening_nodes_on_a_new_job_and_a_cancel(postgres_dsn, tmp_path):
    import queue

    store = open_store(postgres_dsn, tmp_path)
    heard: queue.Queue = queue.Queue()
    store.listen(heard.put)
    deadline = time.monotonic() + 30
    while True:  # until the listener has connected: a job queued before it listens wakes nobody (polling finds it)
        store.insert(job())
        try:
            assert heard.get(timeout=1) == "job"
            break
        except queue.Empty:
            assert time.monotonic() < deadline, "no notification"
    claim = store.claim("a", 30, 3, time.time())
    store.request_cancel(claim.record.id, time.time())
    messages = [heard.get(timeout=10)]
    while messages[-1] == "job":  # the other jobs' wake-ups, if they came late
        messages.append(heard.get(timeout=10))
    assert messages[-1] == f"cancel:{claim.record.id}"
    store.close()


def test_a_jobs_end_keeps_one_attempts_files(tmp_path):
    """The fenced end (`serve/lease.py record_end`): refused for a node that lost the job, whose attempt's files go;
    written for the node that holds it, and then every other attempt's folder goes."""
    from vidpipe.serve.lease import LeaseHolder

    class Node(LeaseHolder):
        def __init__(self, store):
            self.store = store

        def job_dir(self, job_id):
            return tmp_path / "jobs" / job_id

        def attempt_dir(self, job_id, attempt):
            return self.job_dir(job_id) / f"attempt-{attempt}"

    store = open_store(None, tmp_path)
    record = store.insert(job())
    old = store.claim("a", 0.1, 3, time.time())
    time.sleep(0.2)
    new = store.claim("b", 30, 3, time.time())
    node = Node(store)
    for attempt in (1, 2):
        node.attempt_dir(record.id, attempt).mkdir(parents=True)
        (node.attempt_dir(record.id, attempt) / "in_s0_seed0.mp4").write_bytes(b"video")
    node.record_end(record.id, old.token, {"status": "done", "files": ["in_s0_seed0.mp4"]}, 1)
    assert not node.attempt_dir(record.id, 1).exists() and store.get(record.id).status == "running"
    node.attempt_dir(record.id, 1).mkdir()  # a stale node's late write
    node.record_end(record.id, new.token, {"status": "done", "files": ["in_s0_seed0.mp4"]}, 2)
    assert store.get(record.id).status == "done"
    assert [p.name for p in node.job_dir(record.id).iterdir()] == ["attempt-2"]
    store.close()
