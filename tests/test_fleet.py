"""A fleet as its users run it: two real `vidpipe serve` nodes on one Postgres queue (a throwaway cluster) and one
shared --out, a real HTTP client, a node SIGKILLed with its ranks."""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import run_main
from tests.test_page import CHROMEDRIVER, CHROMIUM, browser, screenshot, until  # noqa: F401 - the fixture
from tests.test_serve import Server, post, wait_for

LEASE_S = 10


def start_node(name: str, dsn: str, out: Path, cache: Path) -> Server:
    """Node a is given --store; node b finds the DSN in VIDPIPE_STORE."""
    # NOTE: one thread a rank: two nodes of one rank each share this machine's cores as two equal devices.
    store = ["--store", dsn] if name == "a" else []
    env = {"VIDPIPE_THREADS_PER_RANK": "1", **({"VIDPIPE_STORE": dsn} if name != "a" else {})}
    return Server(out, cache, "--gpus", "1", *store, "--lease-timeout", str(LEASE_S), "--node-name", name,
                  log=out.parent / f"node-{name}-{uuid.uuid4().hex[:6]}.log", env_extra=env)


def ready(*nodes: Server) -> None:
    for node in nodes:
        with node.client() as client:
            node.wait_ready(client)


def kill_node(node: Server) -> None:
    """SIGKILL the server and its ranks at once, as a machine that dies."""
    tree = [psutil.Process(node.process.pid), *psutil.Process(node.process.pid).children(recursive=True)]
    for process in tree:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    node.process.wait(timeout=30)
    psutil.wait_procs(tree, timeout=30)


def comparable(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ("timings", "queue_position")}


@pytest.fixture(scope="module")
def fleet(postgres_cluster, cache, tmp_path_factory):
    dsn = postgres_cluster.fresh_database()
    out = tmp_path_factory.mktemp("fleet") / "out"
    nodes = {name: start_node(name, dsn, out, cache) for name in ("a", "b")}
    ready(*nodes.values())
    yield dsn, out, nodes, postgres_cluster
    for node in nodes.values():
        node.stop()


def test_two_nodes_serve_one_queue(fleet):
    dsn, out, nodes, _cluster = fleet
    with nodes["a"].client() as a, nodes["b"].client() as b:
        # A job submitted to one node is read, the same, on the other.
        job = post(a, steps=2, frames=4, seed=3).json()["id"]
        done = wait_for(b, job)
        assert done["status"] == "done" and done["node"] in ("a", "b") and done["attempts"] == 1
        assert comparable(a.get(f"/v1/jobs/{job}").json()) == comparable(done)
        for client in (a, b):
            assert client.get(done["files"][0]["url"]).content[4:8] == b"ftyp"  # an MP4, from either node

        # A job running on one node is cancelled through the other.
        long_job = post(a, steps=900).json()["id"]
        running = wait_for(a, long_job, statuses=("running",))
        other = b if running["node"] == "a" else a
        assert other.delete(f"/v1/jobs/{long_job}").json()["cancel_requested"]
        stopped = wait_for(other, long_job)
        assert stopped["status"] == "cancelled" and 0 < stopped["progress"]["steps_done"] < 900
        assert f"job {long_job} was cancelled through another node" in nodes[running["node"]].log.read_text()

        # A retried POST with the same Idempotency-Key (to either node) returns the same job.
        key = {"Idempotency-Key": uuid.uuid4().hex}
        with (Path(__file__).parent.parent / "examples" / "sunset.png").open("rb") as image:
            first = a.post("/v1/jobs", data={"steps": "2"}, files={"image": image}, headers=key).json()
        with (Path(__file__).parent.parent / "examples" / "sunset.png").open("rb") as image:
            again = b.post("/v1/jobs", data={"steps": "2"}, files={"image": image}, headers=key).json()
        assert again["id"] == first["id"]
        wait_for(a, first["id"])

        # Every job is in every node's list, and health shows the fleet.
        lists = [{j["id"]: j["status"] for j in c.get("/v1/jobs").json()["jobs"]} for c in (a, b)]
        assert lists[0] == lists[1] and set(lists[0]) == {job, long_job, first["id"]}
        health = b.get("/v1/health").json()
        assert health["node"] == "b" and [n["name"] for n in health["nodes"]] == ["a", "b"]
        assert all(n["plan"] == "dp1" and n["gpus"] == 1 and n["seconds_since_heartbeat"] < LEASE_S
                   for n in health["nodes"])
        assert "pw-never-shown" not in str(health) and "postgresql://vidpipe@127.0.0.1" in health["store"]


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no chromium and chromedriver on this machine "
                    "(Debian: apt-get install -y chromium chromium-driver)")
def test_the_page_shows_the_nodes_and_where_each_job_ran(fleet, browser, tmp_path):  # noqa: F811
    _dsn, _out, nodes, _cluster = fleet
    with nodes["a"].client() as a:
        job = post(a, steps=2, frames=2, height=32, width=32).json()["id"]
        ran_on = wait_for(a, job)["node"]
    browser.get(nodes["b"].url + "/")
    rows = until(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.node)"), what="the nodes")
    assert rows == ["a", "b"] and browser.execute_script("return !document.querySelector('#nodes-card').hidden")
    assert "(this one)" in browser.execute_script("return document.querySelector('#nodes tr[data-node=b]').textContent")
    node_text = until(lambda: browser.execute_script(
        "const c = document.querySelector(`article[data-id='${arguments[0]}'] .node`); return c && c.textContent;",
        job), what="the job's node")
    assert node_text == f"on {ran_on}"
    screenshot(browser, tmp_path, "fleet")


def test_soak_forty_jobs_one_node_killed_and_restarted(fleet, cache):
    """Two nodes, 40 jobs; one node is killed at a random moment and started again. Every job ends done, with one
    set of files, and no job was completed twice (a node whose end was refused says so in its log)."""
    dsn, out, nodes, _cluster = fleet
    rng = random.Random(2026)
    started = time.monotonic()
    with nodes["a"].client() as a:
        jobs = [post(a, steps=2, frames=2, height=32, width=32, samples=rng.choice([1, 2]), seed=i).json()["id"]
                for i in range(40)]
        time.sleep(rng.uniform(2.0, 6.0))
        victim = rng.choice(["a", "b"])
        kill_node(nodes[victim])
        nodes[victim] = start_node(victim, dsn, out, cache)
        survivor = nodes["b" if victim == "a" else "a"]
        with survivor.client() as client:
            ends = [wait_for(client, job, timeout=300) for job in jobs]
    assert [e["status"] for e in ends] == ["done"] * 40, [e for e in ends if e["status"] != "done"]
    for end in ends:
        folder = out / "jobs" / end["id"]
        attempts = sorted(p.name for p in folder.glob("attempt-*"))
        assert attempts == [f"attempt-{end['attempts']}"], (end["id"], attempts)
        videos = sorted(p.name for p in folder.rglob("*.mp4"))
        assert len(videos) == end["progress"]["samples_total"] and videos == sorted(
            f["name"] for f in end["files"] if f["name"].endswith(".mp4"))
    logs = "".join(log.read_text() for log in out.parent.glob("node-*.log"))
    assert "its files here are discarded" not in logs
    retried = sum(e["attempts"] > 1 for e in ends)
    print(f"soak: 40 jobs done in {time.monotonic() - started:.1f} s, node {victim} killed and restarted, {retried} "
          f"job(s) run again; jobs per node: {sorted(Counter(e['node'] for e in ends).items())}")
    with httpx.Client(base_url=survivor.url) as client:
        assert client.get("/v1/health").json()["status"] in ("ready", "busy")


def test_a_node_that_lost_its_lease_stops_and_writes_nothing(fleet):
    """A node alive but fenced out (here: its lease token replaced in the row, as a takeover does) stops the job at
    its next heartbeat, writes nothing more and deletes its attempt's files; the job then runs on (attempt 2) and
    ends with one set of files."""
    import psycopg

    dsn, out, nodes, _cluster = fleet
    with nodes["a"].client() as a:
        job = post(a, steps=150, frames=2, height=32, width=32).json()["id"]  # runs for seconds: several beats
        running = wait_for(a, job, statuses=("running",))
        with psycopg.connect(dsn, autocommit=True) as conn:  # what a takeover does to the row
            conn.execute("UPDATE jobs SET lease_token = 'another node', lease_expires = 0 WHERE id = %s", (job,))
        holder = nodes[running["node"]]
        deadline = time.monotonic() + 30
        while f"lost the lease on job {job}" not in holder.log.read_text():
            assert time.monotonic() < deadline, holder.log.read_text()[-2000:]
            time.sleep(0.1)
        done = wait_for(a, job, timeout=120)  # claimed again (its lease "expired"), by either node
    assert done["status"] == "done" and done["attempts"] == 2, done
    assert sorted(p.name for p in (out / "jobs" / job).glob("attempt-*")) == ["attempt-2"]
    assert [f["name"] for f in done["files"] if f["name"].endswith(".mp4")] == ["sunset_s0_seed0.mp4"]


def test_a_killed_nodes_job_is_taken_over_and_ends_with_one_set_of_files(fleet):
    _dsn, out, nodes, _cluster = fleet  # NOTE: the killed node stays down
    with nodes["a"].client() as a:
        job = post(a, steps=30, frames=2, height=32, width=32, samples=2).json()["id"]
        deadline = time.monotonic() + 120
        while (state := a.get(f"/v1/jobs/{job}").json())["progress"]["samples_done"] < 1:
            assert time.monotonic() < deadline and state["status"] in ("queued", "running"), state
            time.sleep(0.05)
    victim, survivor = state["node"], "b" if state["node"] == "a" else "a"
    assert list((out / "jobs" / job / "attempt-1").glob("*.mp4"))  # the first attempt's files so far
    kill_node(nodes[victim])
    killed_at = time.monotonic()
    with nodes[survivor].client() as client:
        done = wait_for(client, job, timeout=LEASE_S + 120)
        taken_over_after = time.monotonic() - killed_at
    assert done["status"] == "done" and done["node"] == survivor and done["attempts"] == 2, done
    assert taken_over_after > LEASE_S * 0.8  # not before the lease ran out
    videos = sorted(p.relative_to(out / "jobs" / job) for p in (out / "jobs" / job).rglob("*.mp4"))
    assert [str(v) for v in videos] == ["attempt-2/sunset_s0_seed0.mp4", "attempt-2/sunset_s1_seed1.mp4"]
    assert sorted(f["name"] for f in done["files"] if f["name"].endswith(".mp4")) == [v.name for v in videos]


def test_a_node_outlives_its_store_and_loses_no_job(fleet):
    """The database goes away while a job runs: the node says so in health, refuses new jobs with 503 (nothing
    half-accepted), keeps the job running, and records its end once the database is back."""
    _dsn, _out, nodes, cluster = fleet
    node = next(n for n in nodes.values() if n.process.poll() is None)
    with node.client() as client:
        job = post(client, steps=80, frames=2, height=32, width=32).json()["id"]
        wait_for(client, job, statuses=("running",))
        cluster.pause()
        try:
            deadline = time.monotonic() + 30
            while (health := client.get("/v1/health").json())["status"] != "unhealthy":
                assert time.monotonic() < deadline, health
                time.sleep(0.2)
            assert health["last_error"].startswith("store unreachable: Postgres store postgresql://vidpipe@")
            refused = post(client, steps=2)
            assert refused.status_code == 503 and "nothing was changed" in refused.json()["error"]
            assert "pw-never-shown" not in str(health) + refused.text
        finally:
            cluster.resume()
        done = wait_for(client, job, timeout=120)
        assert done["status"] == "done" and done["attempts"] == 1, done
        deadline = time.monotonic() + 30
        while client.get("/v1/health").json()["status"] == "unhealthy":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert "pw-never-shown" not in node.log.read_text()


def test_an_unreachable_store_at_start_is_one_line_and_exit_2(capsys, tmp_path):
    code, err = run_main(capsys, "serve", "--model", "tiny", "--device", "cpu", "--port", "0", "--out",
                         str(tmp_path), "--store", "postgresql://vidpipe:pw-never-shown@127.0.0.1:1/vidpipe")
    assert code == 2 and "cannot connect" in err and "postgresql://vidpipe@127.0.0.1:1/vidpipe" in err, err
    assert "pw-never-shown" not in err and len(err.strip().splitlines()) == 1, err
