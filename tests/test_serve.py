"""`genoembed serve` over real HTTP (uvicorn on a free loopback port), its tracks, and the page in headless Chromium."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'genoembed[serve]')")
httpx = pytest.importorskip("httpx", reason="the test extra is not installed")

from typer.testing import CliRunner  # noqa: E402

from genoembed.build import index  # noqa: E402
from genoembed.cli import app as cli  # noqa: E402
from genoembed.embedders.kmer import KmerEmbedder  # noqa: E402
from genoembed.mapping import answer  # noqa: E402
from genoembed.search import Query, search  # noqa: E402
from genoembed.serve import ServedStore, create_app  # noqa: E402
from genoembed.serve_limits import MAX_BODY  # noqa: E402
from genoembed.synthetic import random_genome, write_fasta  # noqa: E402
from genoembed.tiles import TilingSpec  # noqa: E402

from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK  # noqa: E402

CHROM = "NC_000932.1"
ANNOTATION_COLUMNS = ["overlapping", "nearest", "nearest_type", "nearest_distance"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(stores: dict, token: str | None = None, limits=None):
    """uvicorn serving ``stores`` in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    from genoembed.serve_limits import Limits, connection_options

    limits = limits or Limits()
    app = create_app(stores, token, limits)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           access_log=False, **connection_options(limits)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def chloro(tmp_path_factory):
    """The chloroplast with its GenBank features (so hits carry annotations), 4-mer embedder."""
    out = tmp_path_factory.mktemp("served") / "chloro"
    return index(CHLOROPLAST_FASTA, out, embedder=KmerEmbedder(k=4), tiling=TilingSpec(strands="+"),
                 annotations=[CHLOROPLAST_GENBANK], shard_rows=128)


@pytest.fixture(scope="module")
def served(chloro):
    return ServedStore("chloro", chloro.root)


@pytest.fixture(scope="module")
def url(served):
    with running({"chloro": served}) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as session:
        yield session


def query_sequence(store, start=30_000, end=31_000) -> str:
    return store.genome().fetch(CHROM, start, end).upper()


def expected_hits(store, queries, k, loci=True, **options) -> list[dict]:
    """The library's answer: loci ranked as `genoembed search` shows them, or every tile hit."""
    if not loci:
        return search(store, queries, k=k, embedder=KmerEmbedder(k=4), **options).to_pylist()
    return answer(store, queries, k=k, embedder=KmerEmbedder(k=4), loci=True, by_length=False, **options)[0].to_pylist()


def same_hits(got: list[dict], want: list[dict]) -> None:
    assert [(h["query"], h["rank"], h["tile_id"]) for h in got] == \
        [(h["query"], h["rank"], h["tile_id"]) for h in want]
    assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-6)


def test_healthz_stores_and_info(client, chloro):
    assert client.get("/healthz").json()["status"] == "ok"
    (entry,) = client.get("/stores").json()
    assert entry["name"] == "chloro" and entry["tiles"] == chloro.num_tiles and entry["annotations"] == ["NC_000932"]
    info = client.get("/stores/chloro").json()
    assert info["tiles"] == chloro.num_tiles and info["dim"] == 256
    missing = client.get("/stores/nope")
    assert missing.status_code == 404 and "no store named 'nope'" in missing.json()["error"]
    assert "/search" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_search_by_sequence_matches_the_library_with_annotations(client, chloro):
    sequence = query_sequence(chloro)
    reply = client.post("/search", json={"sequences": [sequence], "k": 5})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["columns"][-4:] == ANNOTATION_COLUMNS and body["store"] == "chloro"
    same_hits(body["rows"], expected_hits(chloro, [Query("sequence1", sequence)], 5))
    assert body["rows"][0]["overlapping"]  # the chloroplast is dense with genes


def test_search_by_region_tsv_and_text_bodies(client, chloro):
    region = f"{CHROM}:20001-21000"
    reply = client.post("/search", json={"regions": [region], "k": 4, "exclude_self": True},
                        headers={"Accept": "text/tab-separated-values"})
    assert reply.headers["content-type"].startswith("text/tab-separated-values")
    header, *lines = reply.text.splitlines()
    assert header.split("\t")[:3] == ["query", "query_chrom", "query_start"] and len(lines) == 4
    want = expected_hits(chloro, [region], 4, exclude_self=True)
    assert [int(line.split("\t")[6]) for line in lines] == [h["tile_id"] for h in want]
    sequence = query_sequence(chloro, 5000, 6000)
    fasta = client.post("/search?k=3&annotate=false", content=f">q1\n{sequence[:500]}\n{sequence[500:]}\n",
                        headers={"Content-Type": "text/plain"}).json()
    same_hits(fasta["rows"], expected_hits(chloro, [Query("q1", sequence)], 3))
    assert "overlapping" not in fasta["columns"]
    bed = client.post("/search?k=2", content=f"{CHROM}\t5000\t6000\tmine\t0\t+\n",
                      headers={"Content-Type": "text/plain"}).json()
    same_hits(bed["rows"], expected_hits(chloro, [Query("mine", sequence)], 2))


def test_search_hits_as_bed_and_bed9(client, chloro):
    sequence = query_sequence(chloro)
    bed = client.post("/search?format=bed", json={"sequences": [sequence], "k": 6}).text.splitlines()
    bed9 = client.post("/search", json={"sequences": [sequence], "k": 6}, headers={"Accept": "text/x-bed"})
    assert len(bed) == 6 and all(len(line.split("\t")) == 6 for line in bed)
    starts = [int(line.split("\t")[1]) for line in bed]
    assert starts == sorted(starts)
    best = max(expected_hits(chloro, [Query("sequence1", sequence)], 6), key=lambda h: h["score"])
    top = next(line.split("\t") for line in bed if line.split("\t")[3] == "sequence1#1")
    assert (int(top[1]), int(top[2]), top[5]) == (best["start"], best["end"], best["strand"])
    assert int(top[4]) == round(best["score"] * 1000)
    assert bed9.text.splitlines() == bed  # the Accept header names BED; BED9 is asked for by ?format=bed9
    nine = client.post("/search?format=bed9", json={"sequences": [sequence], "k": 6}).text.splitlines()
    assert all(len(line.split("\t")) == 9 and line.split("\t")[8].count(",") == 2 for line in nine)


def test_sql_sandbox_with_parameters(client):
    reply = client.post("/sql", json={"query": "SELECT count(*) AS n FROM tiles WHERE strand = $s",
                                      "parameters": {"s": "+"}})
    assert reply.status_code == 200 and reply.json()["rows"][0]["n"] > 0
    tsv = client.post("/sql?format=tsv", json={"query": "SELECT 1 AS one, NULL AS nothing"}).text
    assert tsv.splitlines() == ["one\tnothing", "1\t"]
    awkward = client.post("/sql?format=tsv", json={"query": "SELECT 'say \"hi\"' || chr(9) || 'x' || chr(10) AS t"})
    assert awkward.status_code == 200 and awkward.text.splitlines() == ["t", 'say "hi" x']
    refused = client.post("/sql", json={"query": "CREATE TABLE x AS SELECT 1"})
    assert refused.status_code == 400 and "only SELECT" in refused.json()["error"]
    outside = client.post("/sql", json={"query": "SELECT * FROM read_csv('/etc/passwd')"})
    assert outside.status_code == 400


BAD = [
    ("post", "/search", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not JSON"),
    ("post", "/search", {"json": ["ACGT"]}, 400, "JSON body must be an object"),
    ("post", "/search", {"json": {}}, 400, "no query"),
    ("post", "/search", {"json": {"sequences": ["ACGT"], "colour": 1}}, 422, "colour"),
    ("post", "/search", {"json": {"sequences": ["ACGT"], "k": 0}}, 422, "k:"),
    ("post", "/search", {"json": {"sequences": ["ACGT"], "k": 5000}}, 422, "k:"),
    ("post", "/search", {"json": {"sequences": ["ACGTXX"]}}, 400, "characters other than DNA"),
    ("post", "/search", {"json": {"regions": ["chr9:1-100"]}}, 400, "contig 'chr9'"),
    ("post", "/search", {"json": {"regions": [f"{CHROM}:0-10"]}}, 400, "1 <= start"),
    ("post", "/search", {"json": {"sequences": ["ACGT"], "store": "nope"}}, 404, "no store named"),
    ("post", "/search", {"json": {"sequences": ["ACGT"], "genome": "nope"}}, 400, "no genome 'nope' in the store"),
    ("post", "/search?format=xml", {"json": {"sequences": ["ACGT"]}}, 400, "format 'xml'"),
    ("post", "/search", {"json": {"sequences": ["ACGT"] * 10_001}}, 413, "at most 10000"),
    ("post", "/search", {"content": b"A" * (MAX_BODY + 1)}, 413, "over 1000000 bytes"),
    ("post", "/search", {"content": b"chrX\t1\n", "headers": {"Content-Type": "text/plain"}}, 400, "bed:1"),
    ("post", "/search", {"content": b">q\nAC!!\n", "headers": {"Content-Type": "text/plain"}}, 400, "record 'q'"),
    ("post", "/sql", {"json": {"query": "SELECT nonsense FROM tiles"}}, 400, "SQL:"),
    ("post", "/sql", {"json": {"query": "SELECT 1; SELECT 2"}}, 400, "exactly one statement"),
    ("post", "/sql", {"json": {"query": "SELECT 1", "timeout": 10_000}}, 422, "timeout"),
    ("post", "/sql", {"content": b"SELECT 1", "headers": {"Content-Type": "text/plain"}}, 422, ""),
    ("get", "/track?format=bigwig", {}, 400, "no query"),
    ("get", "/track?sequences=ACGT&sequences=GGCC", {}, 400, "one query"),
    ("get", "/track?regions=../../etc/passwd", {}, 400, "contig"),
    ("get", "/stores/..%2F..%2Fetc", {}, 404, ""),
    ("get", "/nowhere", {}, 404, ""),
    ("delete", "/search", {}, 405, ""),
]


@pytest.mark.parametrize("method, path, options, status, message", BAD, ids=[f"{b[1]}-{b[3]}-{b[4]}" for b in BAD])
def test_bad_input_is_a_4xx_json_error(client, method, path, options, status, message):
    reply = getattr(client, method)(path, **options) if options else getattr(client, method)(path)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error


def test_bigwig_values_equal_search_scores(client, chloro, tmp_path):
    pyBigWig = pytest.importorskip("pyBigWig")
    sequence = query_sequence(chloro, 60_000, 61_000)
    reply = client.get("/track", params={"sequences": sequence, "format": "bigwig"})
    assert reply.status_code == 200, reply.text
    (tmp_path / "api.bw").write_bytes(reply.content)
    runner = CliRunner()
    result = runner.invoke(cli, ["track", str(chloro.root), "-s", sequence, "-o", str(tmp_path / "cli.bw")])
    assert result.exit_code == 0, result.output
    # every tile's score from an exhaustive search; a position's value is its best strand
    every = expected_hits(chloro, [Query("q", sequence)], chloro.num_tiles, loci=False)
    best: dict[tuple[str, int], float] = {}
    for hit in every:
        best[hit["chrom"], hit["start"]] = max(best.get((hit["chrom"], hit["start"]), -1.0), hit["score"])
    for name in ("api.bw", "cli.bw"):
        track = pyBigWig.open(str(tmp_path / name))
        assert track.chroms() == {CHROM: 154_478}
        intervals = track.intervals(CHROM)
        assert {start for start, _, _ in intervals} == {start for _, start in best}
        for start, end, value in intervals:
            assert value == pytest.approx(best[CHROM, start], abs=1e-5)
            assert end > start
        assert max(value for *_, value in intervals) == pytest.approx(every[0]["score"], abs=1e-5)
        track.close()
    graph = client.get("/track", params={"sequences": sequence}).text.splitlines()
    assert graph[0].startswith("track type=bedGraph") and len(graph) - 1 == len(best)
    hits_bed = client.get("/track", params={"sequences": sequence, "format": "bed9", "k": 3}).text.splitlines()
    assert len(hits_bed) == 3


def test_cli_track_bed_and_bedgraph(chloro, tmp_path):
    runner = CliRunner()
    region = f"{CHROM}:20001-21000"
    result = runner.invoke(cli, ["track", str(chloro.root), "-r", region, "-o", str(tmp_path / "h.bed"), "-k", "4",
                                 "--format", "bed9", "--exclude-self"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "h.bed").read_text().splitlines()) == 4
    result = runner.invoke(cli, ["track", str(chloro.root), "-r", region, "-o", str(tmp_path / "s.bedGraph")])
    assert result.exit_code == 0 and (tmp_path / "s.bedGraph").read_text().startswith("track type=bedGraph")
    result = runner.invoke(cli, ["track", str(chloro.root), "-r", region, "-o", str(tmp_path / "s.txt")])
    assert result.exit_code == 2 and "cannot tell the format" in result.output


def test_concurrent_requests_get_the_same_answers(client, chloro):
    from concurrent.futures import ThreadPoolExecutor

    sequences = [query_sequence(chloro, start, start + 1000) for start in range(0, 80_000, 10_000)]
    want = [expected_hits(chloro, [Query("sequence1", s)], 5) for s in sequences]

    def ask(number: int):
        return client.post("/search", json={"sequences": [sequences[number % 8]], "k": 5, "annotate": number % 2 == 0})

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(32)))
    for number, reply in enumerate(replies):
        assert reply.status_code == 200, reply.text
        same_hits(reply.json()["rows"], want[number % 8])


def test_append_while_serving_never_breaks_a_request(tmp_path):
    genomes = {name: write_fasta(tmp_path / f"{name}.fa", random_genome({f"{name}_1": length}, seed=seed))
               for name, length, seed in (("a", 40_000, 1), ("b", 400_000, 2))}
    tiling, embedder = TilingSpec(window=500, stride=250), KmerEmbedder(k=4)
    store = index(genomes["a"], tmp_path / "pan", embedder=embedder, tiling=tiling, shard_rows=64)
    probe = store.genome().fetch("a_1", 1000, 1500)
    failures, replies, appended = [], [], threading.Event()

    def append():
        try:
            index(genomes["b"], tmp_path / "pan", embedder=embedder, tiling=tiling, shard_rows=64, batch_rows=64,
                  append=True)
        except BaseException as error:  # reported by the main thread
            failures.append(error)
        finally:
            appended.set()

    with running({"pan": ServedStore("pan", store.root)}) as base, httpx.Client(base_url=base, timeout=60) as client:
        writer = threading.Thread(target=append)
        writer.start()
        during = 0
        while not appended.is_set() or len(replies) < 5:
            during += not appended.is_set()
            replies.append(client.post("/search", json={"sequences": [probe], "k": 3}))
            replies.append(client.get("/stores/pan"))
        writer.join()
        after = client.post("/search", json={"regions": ["b_1:2001-2500"], "k": 1, "loci": False}).json()["rows"]
        tiles = client.get("/stores").json()[0]["tiles"]
    assert failures == [] and during >= 3, f"only {during} requests ran during the append"
    assert [r.status_code for r in replies if r.status_code != 200] == []
    assert all(r.json()["rows"][0]["chrom"] == "a_1" for r in replies if "rows" in r.json())
    assert after[0]["genome"] == "b" and after[0]["start"] == 2000
    seen = {r.json()["tiles"] for r in replies if "tiles" in r.json()}
    assert tiles == store.refresh().num_tiles and len(seen) >= 2  # requests moved on to the new snapshot


def test_token_guards_every_endpoint_but_healthz(served):
    with running({"chloro": served}, token="s3cret") as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200  # the page shell holds no data; its calls carry the token
        for method, path, body in (("get", "/stores", None), ("get", "/stores/chloro", None),
                                   ("post", "/search", {"sequences": ["ACGT" * 100]}),
                                   ("post", "/sql", {"query": "SELECT 1"}), ("get", "/track?sequences=ACGT", None)):
            call = getattr(client, method)
            options = {"json": body} if body else {}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                reply = call(path, headers=headers, **options)
                assert reply.status_code == 401 and "token" in reply.json()["error"], (path, headers)
            assert call(path, headers={"Authorization": "Bearer s3cret"}, **options).status_code == 200, path


def test_cli_serve_refuses_a_public_host_without_a_token(chloro, monkeypatch):
    monkeypatch.delenv("GENOEMBED_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", str(chloro.root), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "genoembed: error: --host 0.0.0.0 is reachable from other machines: give --token (or GENOEMBED_TOKEN) so "
        "every request must carry it, or serve on 127.0.0.1"]
    result = CliRunner().invoke(cli, ["serve", f"x={chloro.root}", f"x={chloro.root}"])
    assert result.exit_code == 2 and "two stores are named 'x'" in result.output


def browser_or_skip():
    """Selenium driving the system Chromium through chromium-driver (Debian packages), or a skip saying why."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does, as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.mark.slow
def test_page_search_matches_library_and_downloads_bed(url, chloro, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = browser_or_skip()
    try:
        browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#store option"))
        sequence = query_sequence(chloro, 40_000, 41_000)
        browser.find_element(By.ID, "query").send_keys(sequence[:500] + "\n" + sequence[500:])
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys("7")
        browser.find_element(By.ID, "search").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#hits tbody tr")) == 7)
        rows = [{"query": "sequence1", "rank": int(r.get_attribute("data-rank")),
                 "tile_id": int(r.get_attribute("data-tile-id")), "score": float(r.get_attribute("data-score"))}
                for r in browser.find_elements(By.CSS_SELECTOR, "#hits tbody tr")]
        same_hits(rows, expected_hits(chloro, [Query("sequence1", sequence)], 7))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#track rect.hit")) == 7
        browser.find_element(By.ID, "download-bed").click()
        target = tmp_path / "genoembed-hits.bed"
        WebDriverWait(browser, 20).until(lambda _: target.is_file() and target.stat().st_size > 0)
        lines = target.read_text().splitlines()
        want = {(h["chrom"], h["start"], h["end"], h["strand"]) for h in expected_hits(chloro, [Query("sequence1", sequence)], 7)}
        assert {(f[0], int(f[1]), int(f[2]), f[5]) for f in (line.split("\t") for line in lines)} == want
        assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")
    finally:
        browser.quit()


def test_track_scores_are_cosines_of_stored_vectors(chloro):
    from genoembed.tracks import similarity

    vector = KmerEmbedder(k=4).embed([query_sequence(chloro)])[0]
    track = similarity(chloro, vector)
    stored = np.concatenate([v for _, v in chloro.iter_embeddings()])
    cosines = stored @ (vector / np.linalg.norm(vector)) / np.linalg.norm(stored, axis=1)
    assert track.column("score").to_numpy().max() == pytest.approx(cosines.max(), abs=1e-6)
    ends, starts = track.column("end").to_numpy(), track.column("start").to_numpy()
    assert (ends[:-1] <= starts[1:]).all() and (ends > starts).all()


def test_search_filters_by_chrom_list_and_where(client, chloro):
    """POST takes chrom as one name or a list and a SQL condition on tiles; GET takes repeated chrom= too."""
    sequence = query_sequence(chloro)
    body = {"sequences": [sequence], "k": 5, "chrom": [CHROM], "where": "gc > 0.35 AND start > 50000",
            "annotate": False}
    reply = client.post("/search", json=body)
    assert reply.status_code == 200, reply.text
    same_hits(reply.json()["rows"], expected_hits(chloro, [Query("sequence1", sequence)], 5, chrom=[CHROM],
                                                  where="gc > 0.35 AND start > 50000"))
    assert all(row["start"] > 50000 for row in reply.json()["rows"])
    bad = client.post("/search", json={"sequences": [sequence], "where": "nope > 1"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("SQL:")
