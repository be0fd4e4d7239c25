"""Issue 25: a server with bounds (limits checked before work, a worker pool beside the event loop, requests
past their deadline cancelled, slow senders dropped) and no server path in anything it answers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'genoembed[serve]')")
httpx = pytest.importorskip("httpx", reason="the test extra is not installed")

import genoembed.serve as serve_module  # noqa: E402
from genoembed.errors import InputError  # noqa: E402
from genoembed.mapping import answer  # noqa: E402
from genoembed.serve import SearchRequest, ServedStore  # noqa: E402
from genoembed.serve_limits import Cancel, Limits, TooSlow, Workers  # noqa: E402
from genoembed.sql import run_sql  # noqa: E402

from test_serve import CHROM, chloro, running  # noqa: E402,F401  (chloro: the module's store fixture)

LENGTH = 154_478  # the chloroplast's one contig


@pytest.fixture(scope="module")
def served(chloro):  # noqa: F811
    return ServedStore("chloro", chloro.root)


@pytest.fixture(scope="module")
def small(served):
    """A server with small bounds: 2 workers, 1 waiting, 200 kb per search, 50 rows, 0.5 s to send a body."""
    limits = Limits(max_bases=200_000, max_rows=50, workers=2, queue=1, body_timeout=0.5)
    with running({"chloro": served}, limits=limits) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


def test_whole_contig_regions_are_weighed_before_any_sequence_is_read(small, monkeypatch):
    fetched = []
    original = serve_module.fetch_queries
    monkeypatch.setattr(serve_module, "fetch_queries", lambda source, located: fetched.append(len(located)) or
                        original(source, located))
    reply = small.post("/search", json={"regions": [CHROM] * 2, "k": 1})
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"] == f"queries cover {2 * LENGTH} bases: at most 200000 per request " \
                                    "(search long regions with `genoembed search`)"
    many = small.post("/search", json={"regions": [CHROM] * 10_000, "k": 1})
    assert many.status_code == 413 and "at most" in many.json()["error"]
    assert fetched == []  # refused from coordinates alone
    one = small.post("/search", json={"regions": [CHROM], "k": 3, "annotate": False})
    assert one.status_code == 200 and len(one.json()["rows"]) == 3 and fetched == [1]


def test_hits_per_response_are_counted_before_searching(small):
    reply = small.post("/search", json={"sequences": ["ACGT" * 50] * 6, "k": 10})
    assert reply.status_code == 413
    assert reply.json()["error"].startswith("6 queries x k=10 = 60 hits: at most 50 per response")


def test_sql_rows_are_capped_while_fetching(small):
    reply = small.post("/sql", json={"query": "SELECT * FROM range(30000000)", "timeout": 20})
    assert reply.status_code == 413
    assert "more than 50 rows" in reply.json()["error"]
    fits = small.post("/sql", json={"query": "SELECT * FROM range(50) t(n)"})
    assert [row["n"] for row in fits.json()["rows"]] == list(range(50))


def test_healthz_answers_while_every_worker_is_busy(served):
    limits = Limits(workers=1, queue=0)
    long_query = {"query": "SELECT count(*) FROM range(100000000000)", "timeout": 4}
    with running({"chloro": served}, limits=limits) as base, httpx.Client(base_url=base, timeout=30) as client:
        results = []
        worker = threading.Thread(target=lambda: results.append(client.post("/sql", json=long_query)))
        worker.start()
        deadline = time.monotonic() + 10
        while client.get("/healthz").json()["busy"] < 1:  # the long query holds the one worker
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=2) as impatient:
            assert impatient.get("/healthz").json()["status"] == "ok"
            busy = impatient.post("/sql", json={"query": "SELECT 1"})
        assert busy.status_code == 503 and "server busy" in busy.json()["error"]
        worker.join()
        assert results[0].status_code == 400 and "stopped after 4 s" in results[0].json()["error"]


def test_a_slow_sender_is_dropped(small):
    host, port = small.base_url.host, small.base_url.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"seq")
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408") and "not received within 0.5 s" in answer


@pytest.mark.parametrize("path", ["/search", "/sql"])
def test_deeply_nested_json_is_a_400(small, path):
    body = "[" * 100_000 + "]" * 100_000
    reply = small.post(path, content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"] == "body is JSON nested too deeply; send a flat object"


def test_huge_integers_in_regions_and_bed_are_400s(small):
    digits = "9" * 5000
    region = small.post("/search", json={"regions": [f"{CHROM}:1-{digits}"]})
    bed = small.post("/search", json={"bed": f"{CHROM}\t1\t{digits}\n"})
    for reply in (region, bed):
        assert reply.status_code == 400 and "digits is beyond any genome" in reply.json()["error"]
        assert len(reply.text) < 400  # the number is not echoed back


def test_no_server_path_in_any_answer(small, chloro):  # noqa: F811
    root, fasta = str(chloro.root.resolve()), chloro.manifest["genomes"]["NC_000932"]["path"]
    answers = [
        small.post("/search", json={"regions": ["chr9:1-100"]}),  # names the genome's FASTA
        small.post("/search", json={"bed": "chr9\t1\t100\n"}),
        small.post("/sql", json={"query": "SELECT current_setting('allowed_paths') AS p"}),
        small.post("/sql", json={"query": "SELECT sql FROM duckdb_views() WHERE NOT internal"}),
        small.post("/sql", json={"query": "SELECT name, value FROM duckdb_settings() WHERE value LIKE '%/%'"}),
        small.post("/sql", json={"query": "SELECT * FROM read_parquet('/etc/x.parquet')"}),
        small.get("/stores/chloro"),
    ]
    for reply in answers:
        assert reply.status_code < 500, reply.text
        for secret in (root, fasta, str(chloro.root.parent), "/root/", "/tmp/"):
            assert secret not in reply.text, (secret, reply.text[:300])
    assert "<fasta NC_000932>" in answers[0].text or "<store chloro>" in answers[0].text


def test_cli_help_states_the_bounds():
    from typer.testing import CliRunner

    from genoembed.cli import app

    text = " ".join(CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output.split())
    for bound in ("bodies up to 1 MB", "10,000 queries", "--max-bases", "503", "/healthz", "keep-alive"):
        assert bound in text



def test_a_request_past_its_deadline_interrupts_its_duckdb_query_and_frees_its_worker(served):
    workers = Workers(Limits(workers=1, queue=1))  # one worker: a query left running would hold it
    store = served.snapshot().store
    outcome, started = [], []

    def long_query(cancel):
        try:
            return run_sql(store, "SELECT count(*) FROM range(100000000000)", timeout=300, cancelled=cancel.event)
        except InputError as error:
            outcome.append(str(error))
            raise

    async def scenario():
        running_one = asyncio.ensure_future(workers.run(long_query, 1.0))
        await asyncio.sleep(0.1)
        with pytest.raises(TooSlow):  # waits behind the long query; its deadline passes first
            await workers.run(lambda cancel: started.append("queued one"), 0.3)
        with pytest.raises(TooSlow):
            await running_one
        # without the interrupt the long query would keep the one worker for minutes: this would be a 504 too
        return await workers.run(lambda cancel: run_sql(store, "SELECT 42 AS n"), 30)

    assert asyncio.run(scenario()).column("n").to_pylist() == [42]
    assert outcome == ["SQL: query cancelled"]  # DuckDB was interrupted, not left to run
    assert started == []  # the request cancelled while waiting never ran


def test_a_cancelled_search_stops_between_query_batches(served, monkeypatch):
    cancel, batches = Cancel(), []
    original = serve_module.answer

    def one_batch_then_the_deadline_passes(store, queries, **options):
        batches.append(len(queries))
        cancel.set()
        return original(store, queries, **options)

    monkeypatch.setattr(serve_module, "answer", one_batch_then_the_deadline_passes)
    request = SearchRequest(sequences=["ACGT" * 50] * (serve_module.SEARCH_BATCH + 1), k=1, annotate=False)
    with pytest.raises(TooSlow):
        serve_module.run_search(served, request, Limits(), cancel)
    assert batches == [serve_module.SEARCH_BATCH]


def test_batched_search_answers_like_one_search(served, monkeypatch):
    monkeypatch.setattr(serve_module, "SEARCH_BATCH", 2)
    regions = [f"{CHROM}:1001-1600", f"{CHROM}:40001-40600", f"{CHROM}:90001-90600"]
    request = SearchRequest(regions=regions + regions[:2], k=3, annotate=False)  # 5 queries in 3 batches, 2 repeated
    got = serve_module.run_search(served, request).to_pylist()
    queries = serve_module.collect_queries(served.snapshot(), request, Limits())
    want = answer(served.snapshot().store, queries, k=3, embedder=served.embedder, loci=True, by_length=False)[0]
    key = [(h["query"], h["rank"], h["tile_id"]) for h in want.to_pylist()]
    assert [(h["query"], h["rank"], h["tile_id"]) for h in got] == key
    assert len({name for name, _, _ in key}) == 5  # repeated regions keep apart (name#2) across batches


def trickle(sock: socket.socket, data: bytes, pause: float) -> bool:
    """Send ``data`` a byte at a time; True once the server closed the connection."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # reset or broken pipe: closed by the server
            return True
        time.sleep(pause)
    return False


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_a_client_trickling_its_headers_is_dropped(served):
    limits = Limits(header_timeout=0.5)
    with running({"chloro": served}, limits=limits) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            # 60 header bytes at 0.1 s each: 6 s of headers, never finished; each byte used to restart the timer
            cut = trickle(slow, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40, 0.1)
            assert cut or closed_by_server(slow)
        with socket.create_connection((host, int(port)), timeout=10) as silent:
            assert closed_by_server(silent)  # a connection that never sends anything is closed too
        with httpx.Client(base_url=base, timeout=10) as client:  # a client that sends its headers at once is not
            assert client.get("/healthz").status_code == 200
            time.sleep(1.0)  # idle on its keep-alive connection longer than the header deadline
            assert client.get("/healthz").status_code == 200
            assert client.post("/sql", json={"query": "SELECT 1 AS n"}).json()["rows"] == [{"n": 1}]
