"""Chaos (issue 25): readers, SQL and a served store while a writer appends, annotates and removes in a loop.

For ``--seconds`` (600 for the recorded run; ``--short`` = 30 s, CI size):

* a writer process loops: append genome C, annotate it (a BED set named ``chaos``, replaced each round),
  remove C;
* 4 searching processes (Python API, a fresh snapshot each time) and 1 SQL process count answers,
  failures (one-line GenoembedError) and tracebacks (anything else);
* ``genoembed serve`` in its own process (``--load-nice N`` runs everything else but the /healthz probe N
  steps nicer, as when the load comes from other machines) answers a client thread pool: searches, SQL, similarity
  tracks, and the abusive requests of issue 25 (10,000 whole-contig regions, ``SELECT * FROM
  range(3e7)``, 100 k-deep JSON, 5,000-digit coordinates) — each must be a 4xx, never a 5xx; a probe
  asks ``/healthz`` every 50 ms (p50/p99/worst), alternating with a control server (the same uvicorn
  stack answering 200 with nothing behind it, at the server's priority: its latency is the machine's
  scheduling, the server's excess over it is the server's), reading around each probe how long the server's
  event loop thread waited for a CPU; the server's RSS is sampled (peak = VmHWM).

Before the loop, a flood: 45 DuckDB-bound queries at once (4 run, 32 wait, the rest are refused 503)
while /healthz is probed. At the end the store must verify and answer exactly like a clean build of the genomes it then holds.
Prints one JSON line. Run it niced: ``nice -n 10 python benchmarks/chaos.py --seconds 600``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [{"a1": 60_000, "a2": 30_000}, {"b1": 50_000}, {"c1": 40_000}]
SEARCHERS = 4
K = 5


def build(fasta, out, append=False):
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.tiles import TilingSpec
    from genoembed.vector_index import IndexSpec

    return index(fasta, out, embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=500, stride=250, strands="+"),
                 index_spec=IndexSpec("Flat"), shard_rows=100, batch_rows=100, append=append)


def queries():
    from genoembed.search import Query
    from genoembed.synthetic import random_genome

    genome = random_genome({"q": 4_000}, seed=99)["q"]
    return [Query(f"q{n}", genome[n * 500:n * 500 + 400]) for n in range(6)]


def answers(store) -> list[tuple]:
    from genoembed.search import search

    hits = search(store, queries(), k=K)
    return [(r["query"], r["rank"], r["genome"], r["chrom"], r["start"], round(r["score"], 5)) for r in hits.to_pylist()]


def counted(kind: str, action, stop_at: float, out) -> None:
    """Run ``action`` until ``stop_at``; count answers, failures (GenoembedError) and tracebacks."""
    from genoembed.errors import GenoembedError

    counts = {"kind": kind, "ok": 0, "failed": 0, "tracebacks": 0, "messages": []}
    while time.time() < stop_at:
        try:
            action()
            counts["ok"] += 1
        except GenoembedError as error:
            counts["failed"] += 1
            if len(counts["messages"]) < 5:
                counts["messages"].append(str(error)[:300])
        except Exception:  # noqa: BLE001 - the count of these is the finding
            counts["tracebacks"] += 1
            if len(counts["messages"]) < 5:
                counts["messages"].append(traceback.format_exc()[-600:])
    out.put(counts)


def searcher(root: str, stop_at: float, out) -> None:
    from genoembed.search import search
    from genoembed.store import Store

    wanted = queries()
    counted("search", lambda: search(Store.open(root), wanted, k=K), stop_at, out)


def sql_reader(root: str, stop_at: float, out) -> None:
    from genoembed.sql import run_sql
    from genoembed.store import Store

    counted("sql", lambda: run_sql(Store.open(root), "SELECT genome, count(*) FROM tiles GROUP BY genome"),
            stop_at, out)


def writer(root: str, fasta_c: str, bed: str, stop_at: float, out) -> None:
    from genoembed.annotate import add_annotations
    from genoembed.errors import GenoembedError
    from genoembed.remove import remove
    from genoembed.store import Store

    counts = {"kind": "writer", "rounds": 0, "failed": 0, "tracebacks": 0, "messages": []}
    while time.time() < stop_at:
        try:
            build(fasta_c, root, append=True)
            add_annotations(Store.open(root), bed, name="chaos", genome="g2", replace=True)
            remove(Store.open(root), "g2")
            counts["rounds"] += 1
        except GenoembedError as error:
            counts["failed"] += 1
            counts["messages"].append(str(error)[:300])
            time.sleep(0.5)
        except Exception:  # noqa: BLE001
            counts["tracebacks"] += 1
            counts["messages"].append(traceback.format_exc()[-600:])
            time.sleep(0.5)
    out.put(counts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def client(base: str, stop_at: float, contig: str, length: int, stats: dict, lock: threading.Lock) -> None:
    """Served requests, the abusive ones of issue 25 among them; 5xx answers are counted as failures."""
    import httpx

    digits = "9" * 5000
    requests = [
        ("search", "post", "/search", {"json": {"regions": [f"{contig}:1001-1500"], "k": K}}),
        ("search", "post", "/search", {"json": {"sequences": ["ACGT" * 100], "k": K, "genome": "g0"}}),
        ("sql", "post", "/sql", {"json": {"query": "SELECT genome, count(*) AS n FROM tiles GROUP BY genome"}}),
        ("track", "get", "/track", {"params": {"sequences": "ACGT" * 100, "genome": "g0"}}),
        ("abuse", "post", "/search", {"json": {"regions": [contig] * 10_000}}),
        ("abuse", "post", "/sql", {"json": {"query": "SELECT * FROM range(30000000)", "timeout": 1}}),
        ("abuse", "post", "/search", {"content": "[" * 100_000 + "]" * 100_000,
                                      "headers": {"Content-Type": "application/json"}}),
        ("abuse", "post", "/search", {"json": {"regions": [f"{contig}:1-{digits}"]}}),
    ]
    number = 0
    with httpx.Client(base_url=base, timeout=120) as session:
        while time.time() < stop_at:
            kind, method, path, options = requests[number % len(requests)]
            number += 1
            try:
                reply = getattr(session, method)(path, **options)
                status = reply.status_code
            except httpx.HTTPError as error:
                status, reply = 599, type(error).__name__
            with lock:
                bucket = stats.setdefault(kind, {"ok": 0, "4xx": 0, "5xx": 0, "messages": []})
                if status < 400:
                    bucket["ok"] += 1
                elif status < 500 and (kind == "abuse" or status in (413, 503)):
                    bucket["4xx"] += 1
                else:
                    bucket["5xx" if status >= 500 else "4xx"] += 1
                    if len(bucket["messages"]) < 5:
                        bucket["messages"].append(f"{path} {status} {getattr(reply, 'text', reply)[:200]}")


async def control_app(scope, receive, send):
    """An ASGI app that does nothing but answer 200: the control beside the server (same uvicorn and h11)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"ok"}'})


def control(port: int) -> None:
    """The control server: the same stack as `genoembed serve` with no work behind it, so its /healthz latency
    under the same load is the machine's share (scheduling), and the server's excess over it is the server's."""
    import uvicorn

    uvicorn.run(control_app, host="127.0.0.1", port=port, http="h11", log_level="warning", access_log=False)


def percentiles(samples: list[float], prefix: str) -> dict:
    samples = sorted(samples)
    if not samples:
        return {}
    return {f"{prefix}_p50_ms": round(samples[len(samples) // 2] * 1000, 1),
            f"{prefix}_p99_ms": round(samples[int(0.99 * (len(samples) - 1))] * 1000, 1),
            f"{prefix}_worst_ms": round(samples[-1] * 1000, 1), f"{prefix}_over_100ms": sum(s > 0.1 for s in samples)}


def loop_schedstat(pid: int) -> tuple[int, int, int]:
    """The server's main thread (its event loop, which answers /healthz): ns on a CPU, ns runnable but waiting
    for one (the run queue), timeslices run (Linux schedstat)."""
    cpu, waiting, slices = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[:3]
    return int(cpu), int(waiting), int(slices)


def probe(base: str, control_base: str, stop_at: float, pid: int, out) -> None:
    """/healthz every 50 ms from its own process (a thread beside the clients would time their GIL too),
    alternating with the control server's, so both see the same machine. Around each server probe the
    event loop thread's schedstat is read: the part of the probe it spent runnable but without a CPU is the
    machine's scheduling (GIL hand-offs each add a wake-up, so part of it is the server's threads too)."""
    import httpx

    record = {}
    failures, samples, controls, waits = 0, [], [], []
    first = loop_schedstat(pid)
    started_at = time.perf_counter()
    with httpx.Client(base_url=base, timeout=10) as session, httpx.Client(base_url=control_base, timeout=10) as other:
        session.get("/healthz")  # untimed: opening the connections of a freshly spawned process
        other.get("/healthz")
        while time.time() < stop_at:
            for client, timed in ((session, samples), (other, controls)):
                before = loop_schedstat(pid)[1]
                started = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                timed.append(time.perf_counter() - started)
                if timed is samples:
                    waits.append((loop_schedstat(pid)[1] - before) / 1e9)
                    failures += not ok
                time.sleep(0.025)
            try:
                record["rss_max_kb"] = max(record.get("rss_max_kb", 0), rss_kb(pid, "VmRSS"))
            except OSError:
                pass
    span, last = time.perf_counter() - started_at, loop_schedstat(pid)
    slow = [(sample, wait) for sample, wait in zip(samples, waits) if sample > 0.05]
    record.update(kind="probe", healthz=len(samples), healthz_failed=failures, **percentiles(samples, "healthz"),
                  **percentiles(controls, "control"), load_average=os.getloadavg()[0],
                  loop_cpu_percent=round(100 * (last[0] - first[0]) / 1e9 / span, 1),
                  loop_runqueue_percent=round(100 * (last[1] - first[1]) / 1e9 / span, 1),
                  loop_timeslices_per_s=round((last[2] - first[2]) / span),
                  healthz_over_50ms_runqueue_share=round(sum(w for _, w in slow) / sum(s for s, _ in slow), 2)
                  if slow else None)
    out.put(record)


def flood(base: str, pid: int, requests: int = 45, seconds: float = 8.0) -> dict:
    """Issue 25's 45 long queries at once (each DuckDB-bound for ``seconds``), /healthz probed meanwhile."""
    import httpx

    long_query = {"query": "SELECT sum(hash(range)) FROM range(10000000000)", "timeout": seconds}
    statuses, latencies = [], []

    def one():
        with httpx.Client(base_url=base, timeout=120) as session:
            statuses.append(session.post("/sql", json=long_query).status_code)

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for thread in threads:
        thread.start()
    with httpx.Client(base_url=base, timeout=30) as session:
        while any(thread.is_alive() for thread in threads):
            started = time.perf_counter()
            session.get("/healthz")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
    for thread in threads:
        thread.join()
    return {"long_queries": requests, "answered_400_stopped": statuses.count(400), "refused_503": statuses.count(503),
            "other": sorted(set(statuses) - {400, 503}), "healthz": len(latencies),
            **percentiles(latencies, "healthz"), "load_average": os.getloadavg()[0],
            "server_rss_kb": rss_kb(pid, "VmRSS")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--short", action="store_true", help="30 s (CI size)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--load-nice", type=int, default=0,
                        help="niceness added to the readers, writer and clients (not the server and the probe)")
    arguments = parser.parse_args()
    seconds = 30.0 if arguments.short else arguments.seconds

    from genoembed.synthetic import random_genome, write_fasta
    from genoembed.store import Store
    from genoembed.sql import run_sql
    from genoembed.verify import verify_store

    work = Path(arguments.work or tempfile.mkdtemp(prefix="genoembed-chaos-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fastas = [write_fasta(work / f"g{n}.fa", random_genome(length, seed=n + 1)) for n, length in enumerate(LENGTHS)]
    bed = work / "chaos.bed"
    bed.write_text("".join(f"c1\t{start}\t{start + 300}\tf{start}\n" for start in range(0, 39_000, 1000)))
    root = work / "store"
    build(fastas[0], root)
    build(fastas[1], root, append=True)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "genoembed", "serve", f"chaos={root}", "--port", str(port),
                               "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 60
    while True:
        try:
            httpx.get(base + "/healthz", timeout=1)
            break
        except httpx.HTTPError:
            assert time.time() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.2)

    context = multiprocessing.get_context("spawn")
    control_port = free_port()
    controller = context.Process(target=control, args=(control_port,), daemon=True)
    controller.start()
    control_base = f"http://127.0.0.1:{control_port}"
    while True:
        try:
            httpx.get(control_base + "/healthz", timeout=1)
            break
        except httpx.HTTPError:
            assert time.time() < deadline + 60 and controller.is_alive(), "control server did not start"
            time.sleep(0.2)

    flooded = flood(base, server.pid)
    started = time.time()
    stop_at = started + seconds
    out = context.Queue()
    processes = [context.Process(target=searcher, args=(str(root), stop_at, out)) for _ in range(SEARCHERS)]
    processes.append(context.Process(target=sql_reader, args=(str(root), stop_at, out)))
    processes.append(context.Process(target=writer, args=(str(root), str(fastas[2]), str(bed), stop_at, out)))
    prober = context.Process(target=probe, args=(base, control_base, stop_at, server.pid, out))
    prober.start()  # at the server's priority; the load below runs --load-nice lower
    os.nice(arguments.load_nice)
    for process in processes:
        process.start()
    processes.append(prober)
    stats, lock = {}, threading.Lock()
    contig = "a1"
    threads = [threading.Thread(target=client, args=(base, stop_at, contig, LENGTHS[0][contig], stats, lock))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    results = [out.get() for _ in processes]
    server_record = next(r for r in results if r["kind"] == "probe")
    results = [r for r in results if r["kind"] != "probe"]
    for process in processes:
        process.join()
    for thread in threads:
        thread.join()
    server_record.pop("kind")
    server_record["rss_peak_kb"] = rss_kb(server.pid, "VmHWM")
    server.terminate()
    controller.terminate()
    _, server_log = server.communicate(timeout=30)
    (work / "server.log").write_text(server_log)

    final = Store.open(root)
    problems = verify_store(final)
    clean_root = work / "clean"
    for number, name in enumerate(final.genomes):
        build(fastas[int(name[1:])], clean_root, append=number > 0)
    clean = Store.open(clean_root)
    sql = "SELECT genome, chrom, start, strand FROM tiles ORDER BY genome, chrom, start"
    same = answers(final) == answers(clean) and run_sql(final, sql).equals(run_sql(clean, sql))
    record = {
        "benchmark": "chaos", "seconds": seconds, "load_nice": arguments.load_nice, "machine": platform.node(), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "readers": {f"{r['kind']}{n}": {k: v for k, v in r.items() if k != "kind"} for n, r in enumerate(results)},
        "flood": flooded, "served": stats, "server": server_record,
        "server_tracebacks": server_log.count("Traceback"),
        "final_genomes": list(final.genomes), "verify_problems": problems, "equals_clean_build": same,
    }
    print(json.dumps(record))
    assert not problems and same, "the store after the chaos differs from a clean build"


if __name__ == "__main__":
    main()
