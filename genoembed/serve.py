"""`genoembed serve`: stores kept open behind an HTTP API, so a search costs the search, not imports and model load.

Each store is opened once and its embedder loaded once. Every request reads
the store's newest committed snapshot: the manifest file is stat-ed and the
store re-opened only when it changed (a writer commits by renaming a new
manifest into place), so an append running beside the server never breaks a
request; a request that began on the old snapshot finishes on it. Work runs on
the worker threads (below); the embedder (tokenizers and torch modules are not
promised to be thread-safe), the FAISS index (search parameters are set on the
shared index) and pyfaidx (one file handle, seek then read) are used under one
lock per store, while annotation joins and SQL (a DuckDB connection each) run
in parallel.

Safety: stores are addressed by the names given at startup, never by a path
from a request; with a token every endpoint but ``/healthz``, the page shell
and the API docs (which hold no data, and which a browser cannot fetch with a
bearer header) needs ``Authorization: Bearer TOKEN``. Every failure is a JSON
``{"error": "..."}`` line: bad input 400, unknown store 404, too large 413,
invalid fields 422, busy 503, too slow 504; no traceback and no server path
(store roots, FASTA paths, DuckDB's home) ever leaves the server (a
:class:`~genoembed.serve_limits.Redactor` rewrites error lines and SQL cells).

Bounds (:class:`~genoembed.serve_limits.Limits`), each checked before the work it bounds: the body
size (read under a deadline, so a slow sender is dropped), the query count
(counted in the body before anything is parsed), the total bases of a
search (from the regions' coordinates, before any sequence is read), hits
per response (queries x k), SQL rows (fetched in batches, refused past the
cap) and DuckDB's memory (``memory_limit``, spilling to a private temp
directory), response bytes, and a deadline over the whole request (the
response is built inside it); a request past its deadline is answered 504 and
cancelled (its DuckDB query interrupted, its search stopped between query
batches), so its worker is free again within about a second. Request headers
must arrive within ``header_timeout`` (a client trickling them is cut off).
Searches, SQL and tracks (their bodies parsed there too) run on a pool of
``workers`` threads, never on the event loop or FastAPI's thread pool, with
at most ``queue`` more waiting (503 beyond), so ``/healthz`` (answered on the
event loop by the outermost layer) and cheap endpoints answer while long
queries run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
from fastapi import Depends, FastAPI, Query as QueryParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from genoembed.annotate import annotate_hits
from genoembed.errors import GenoembedError, InputError, StoreError
from genoembed.gene_query import gene_query
from genoembed.search import (Query, UniqueNames, check_sequence, fetch_queries, locate_bed_lines, locate_regions,
                              query_source, refuse_long)
from genoembed.seqio import fasta_records
from genoembed.sql import ResultTooLarge, run_sql
from genoembed.manifest import MANIFEST
from genoembed.mapping import answer
from genoembed.names import check_word
from genoembed.store import Store
from genoembed.tracks import bedgraph_chunks, chrom_sizes, hits_bed, similarity, write_bigwig
from genoembed.serve_limits import (MAX_SQL_TIMEOUT, Busy, Cancel, Guard, Limits, Liveness, Redactor, TooLarge,
                                    TooSlow, Unprocessable, Workers, error_response, sized)
from genoembed.serve_formats import MEDIA, pick_format, table_response
from genoembed.version import VERSION

MAX_K = 1000
SEARCH_BATCH = 128  # queries embedded and searched at a time: a cancelled request stops within one batch
LOCK_POLL_S = 0.1  # how often a request waiting for its store's lock looks whether it was cancelled
TRACK_BYTES_PER_TILE = 40  # one bedGraph line (contig, start, end, score), for weighing a track before it is made
STATIC = Path(__file__).parent / "serve_static"
log = logging.getLogger("genoembed")


class SearchRequest(BaseModel):
    """One search: queries as regions, sequences, BED text or FASTA text (any mix), and the CLI's options."""

    model_config = ConfigDict(extra="forbid")
    store: str | None = Field(None, description="Store name (optional when one store is served).")
    regions: list[str] = Field([], description="chrom:start-end[:strand], 1-based inclusive.")
    sequences: list[str] = Field([], description="DNA sequences.")
    genes: list[str] = Field([], description="Genes by locus_tag, name or ID in the store's annotations (their CDS), "
                                             "or CONTIG_N in a gene-unit store; query_genome picks the genome.")
    bed: str | None = Field(None, description="BED text: one query per line.")
    fasta: str | None = Field(None, description="FASTA text: one query per record.")
    k: int = Field(10, ge=1, le=MAX_K, description="Results per query: loci, or tiles with loci=false.")
    loci: bool = Field(True, description="Merge overlapping or touching tile hits into loci, ranked, as "
                                         "`genoembed search` shows them (false: every tile hit).")
    genome: str | None = Field(None, description="Only hits from this genome.")
    chrom: str | list[str] | None = Field(None, description="Only hits on this contig (or any of these contigs).")
    where: str | None = Field(None, description="Only hits on tiles where this SQL condition on the tiles view holds "
                                                "(read-only, e.g. \"gc > 0.5\").")
    query_genome: str | None = Field(None, description="Genome that region/BED coordinates refer to (or name contigs GENOME#0#CONTIG, as a several-genome store's BED and tracks do).")
    exclude_self: bool = Field(False, description="Drop hits overlapping the query's own region.")
    annotate: bool = Field(True, description="Add overlapping and nearest features.")
    strand_mode: Literal["ignore", "same", "opposite"] = "ignore"
    feature_types: list[str] | None = Field(None, description="Only join features of these types.")
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    k_factor: int | None = Field(None, ge=1, description="Shortlist factor of a refine stage.")
    evalue: float | None = Field(None, ge=0, description="Drop hits whose embedding-score E-value (score_evalue, "
                                 "under the store's null) is higher, like search --evalue (10 there; none here, so "
                                 "clients that ask for k rows keep getting them unless they ask).")
    min_score: float | None = Field(None, description="Drop hits whose embedding score is lower.")


class SqlRequest(BaseModel):
    """One read-only statement with bound parameters."""

    model_config = ConfigDict(extra="forbid")
    store: str | None = None
    query: str = Field(..., min_length=1, description="One SELECT over the store's views.")
    parameters: dict[str, str | int | float | bool | None] | list[str | int | float | bool | None] | None = None
    timeout: float = Field(10.0, gt=0, le=MAX_SQL_TIMEOUT, description="Seconds before the query is stopped.")


@dataclass(frozen=True)
class Snapshot:
    """A committed state of a store, with its query source (genome readers) opened on first use."""

    store: Store
    sources: dict


class ServedStore:
    """One store as served: its embedder loaded once, its newest snapshot re-opened only when the manifest changed."""

    def __init__(self, name: str, path: str | Path, trust_remote_code: bool = False):
        self.name, self.path = name, Path(path)
        self.lock = threading.Lock()
        self._swap = threading.Lock()
        self._stamp = manifest_stamp(self.path)
        self._snapshot = Snapshot(Store.open(self.path), {})
        self.embedder = self._snapshot.store.embedder(trust_remote_code=trust_remote_code)
        self._snapshot.store.vector_index()

    def snapshot(self) -> Snapshot:
        stamp = manifest_stamp(self.path)
        with self._swap:
            if stamp != self._stamp:
                self._snapshot, self._stamp = Snapshot(Store.open(self.path), {}), stamp
            return self._snapshot


def manifest_stamp(root: Path) -> tuple[int, int, int]:
    """What changes when a writer commits: the manifest is replaced by rename (new inode, mtime, size)."""
    try:
        stat = os.stat(root / MANIFEST)
    except OSError as error:
        raise StoreError(f"{root}: cannot read the store's manifest ({error.strerror or error})") from None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def store_names(paths: list[str]) -> dict[str, Path]:
    """``PATH`` or ``NAME=PATH`` -> {name: path}; a bare path is named after its directory."""
    named: dict[str, Path] = {}
    for spec in paths:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).resolve().name, spec
        check_word(name, "store", "name it NAME=PATH")
        if name in named:
            raise InputError(f"two stores are named {name!r}; name them apart with NAME=PATH")
        named[name] = Path(path)
    if not named:
        raise InputError("give at least one store to serve")
    return named


def count_queries(request: SearchRequest) -> int:
    """How many queries the request holds, counted in its text before any of it is parsed."""
    bed = sum(1 for line in (request.bed or "").splitlines()
              if line.strip() and not line.startswith(("#", "track", "browser")))
    return len(request.regions) + len(request.genes) + len(request.sequences) + bed + (request.fasta or "").count(">")


def collect_queries(snapshot: Snapshot, request: SearchRequest, limits: Limits) -> list[Query]:
    """The request's queries in the CLI's order: regions, BED, genes, sequences, FASTA; region sources cached per
    snapshot.

    Weighed before any sequence is read: the count, then the bases the regions' coordinates cover, then
    the hits the response would hold.
    """
    count = count_queries(request)
    if not count:
        raise InputError("no query: give regions, genes, sequences, bed or fasta")
    if count > limits.max_queries:
        raise TooLarge(f"{count} queries: at most {limits.max_queries} per request")
    if count * request.k > limits.max_rows:
        raise TooLarge(f"{count} queries x k={request.k} = {count * request.k} hits: at most {limits.max_rows} "
                       "per response; lower k or split the request")
    located: list[Query] = []
    source = None
    if request.regions or request.bed:
        key = request.query_genome
        if key not in snapshot.sources:
            snapshot.sources[key] = query_source(snapshot.store, key)
        source = snapshot.sources[key]
        located += list(locate_regions(source, request.regions))
        located += list(locate_bed_lines(source, request.bed.splitlines(), "bed")) if request.bed else []
    genes = [gene_query(snapshot.store, name, request.query_genome) for name in request.genes]
    bases = sum(query.end - query.start for query in located) + sum(map(len, request.sequences)) \
        + len(request.fasta or "") + sum(len(query.sequence) for query in genes)
    if bases > limits.max_bases:
        raise TooLarge(f"queries cover {bases} bases: at most {limits.max_bases} per request "
                       "(search long regions with `genoembed search`)")
    for query in located + genes:  # each is embedded whole: the CLI answers longer ones tile by tile
        refuse_long(query.name, query.end - query.start)
    queries = (list(fetch_queries(source, located)) if located else []) + genes
    queries += [Query(f"sequence{i + 1}", check_sequence(s, f"sequences[{i}]")) for i, s in enumerate(request.sequences)]
    queries += [Query(name, check_sequence(sequence, f"fasta record {name!r}"))
                for name, sequence in fasta_records(request.fasta.splitlines(), "fasta")] if request.fasta else []
    if len(queries) > limits.max_queries:  # FASTA headers can hide in a record's text: count again
        raise TooLarge(f"{len(queries)} queries: at most {limits.max_queries} per request")
    return queries


def run_search(served: ServedStore, request: SearchRequest, limits: Limits = Limits(),
               cancel: Cancel | None = None) -> pa.Table:
    """Hits with their features, as `genoembed search --no-save` returns them; searched ``SEARCH_BATCH``
    queries at a time (as the CLI batches them), ``cancel`` checked between batches."""
    cancel = cancel or Cancel()
    snapshot = served.snapshot()
    with held(served.lock, cancel):
        queries = list(map(UniqueNames(), collect_queries(snapshot, request, limits)))
        settings = {"nprobe": request.nprobe, "ef_search": request.ef_search, "k_factor": request.k_factor}
        pieces = []
        for start in range(0, len(queries), SEARCH_BATCH):
            cancel.check()
            hits, _ = answer(snapshot.store, queries[start:start + SEARCH_BATCH], k=request.k,
                             exclude_self=request.exclude_self, genome=request.genome, chrom=request.chrom,
                             where=request.where, search_settings=settings, embedder=served.embedder,
                             evalue=request.evalue, min_score=request.min_score, loci=request.loci, by_length=False)
            pieces.append(hits)
    hits = pa.concat_tables(pieces, promote_options="default")
    cancel.check()
    if request.annotate and snapshot.store.manifest.get("annotations"):
        types = tuple(request.feature_types) if request.feature_types else None
        hits = annotate_hits(snapshot.store, hits, strand=request.strand_mode, types=types)
    return hits


@contextlib.contextmanager
def held(lock: threading.Lock, cancel: Cancel):
    """``lock``, waited for in short slices so a request cancelled meanwhile gives up its turn."""
    while not lock.acquire(timeout=LOCK_POLL_S):
        cancel.check()
    try:
        yield
    finally:
        lock.release()


def similarity_track(served: ServedStore, request: SearchRequest, limits: Limits = Limits(),
                     cancel: Cancel | None = None) -> tuple[pa.Table, dict[str, int]]:
    """The one query's best cosine per tile position, and the contig sizes of the genome drawn."""
    cancel = cancel or Cancel()
    snapshot = served.snapshot()
    tiles = sum(shard["rows"] for shard in snapshot.store.shards
                if request.genome is None or shard.get("genome") == request.genome)
    if tiles * TRACK_BYTES_PER_TILE > limits.max_response_bytes:
        raise TooLarge(f"a similarity track of {tiles} tiles is over this server's {limits.max_response_bytes} "
                       "byte responses; name one --genome or use `genoembed track`")
    with held(served.lock, cancel):
        queries = collect_queries(snapshot, request, limits)
        if len(queries) != 1:
            raise InputError(f"a similarity track is for one query, got {len(queries)}")
        vector = served.embedder.embed([queries[0].sequence])[0]
    track = similarity(snapshot.store, vector, request.genome, between_batches=cancel.check)
    return track, chrom_sizes(snapshot.store, request.genome)


class UnknownStore(InputError):
    """A request named a store the server was not started with."""


def status_of(error: GenoembedError) -> int:
    """Unknown names are 404, over a limit 413, busy 503, too slow 504, everything else the caller can fix 400."""
    for kind, status in ((UnknownStore, 404), (TooLarge, 413), (ResultTooLarge, 413), (Busy, 503),
                         (TooSlow, 504)):
        if isinstance(error, kind):
            return status
    return 400


def validation_message(error: ValidationError | RequestValidationError) -> str:
    """Pydantic's error list as one line: ``field: problem; field: problem``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


async def raw_body(request: Request) -> bytes:
    """The body, read before the (synchronous, thread-pool) endpoint runs."""
    return await request.body()


def search_request(request: Request, body: bytes, base: SearchRequest | None = None) -> SearchRequest:
    """Options from the query string, overridden by a JSON body; a text body is FASTA (starts with '>') or BED."""
    fields = {key: value for key, value in request.query_params.items() if key != "format"}
    for key in ("regions", "genes", "sequences", "feature_types", "chrom"):
        if key in fields:
            fields[key] = request.query_params.getlist(key)
    text = body.decode("utf-8", errors="replace").strip()
    if text and "json" in request.headers.get("content-type", ""):
        try:
            parsed = json.loads(text)
        except RecursionError:  # json's C decoder recurses per nesting level
            raise InputError("body is JSON nested too deeply; send a flat object") from None
        except ValueError as error:
            raise InputError(f"body is not JSON ({error})") from None
        if not isinstance(parsed, dict):
            raise InputError("JSON body must be an object, e.g. {\"sequences\": [\"ACGT...\"], \"k\": 10}")
        fields.update(parsed)
    elif text:
        fields["fasta" if text.startswith(">") else "bed"] = text
    return SearchRequest.model_validate(fields)


def json_body(request: Request, body: bytes) -> dict:
    """A JSON object body (nesting too deep for the parser is a 400, not a crash)."""
    if "json" not in request.headers.get("content-type", ""):
        raise Unprocessable("body: send a JSON object with Content-Type: application/json")
    try:
        parsed = json.loads(body.decode("utf-8", errors="replace") or "null")
    except RecursionError:
        raise InputError("body is JSON nested too deeply; send a flat object") from None
    except ValueError as error:
        raise InputError(f"body is not JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise Unprocessable("body: send a JSON object, e.g. {\"query\": \"SELECT count(*) FROM tiles\"}")
    return parsed


def create_app(stores: dict[str, ServedStore], token: str | None = None, limits: Limits = Limits()) -> FastAPI:
    """The API over already opened stores; ``token`` (when given) guards every data endpoint."""
    app = FastAPI(title="genoembed", summary="Similarity search over genome embedding stores.",
                  version=VERSION, docs_url=None, redoc_url=None)  # Swagger/ReDoc load from a CDN: docs.html
    workers, redact = Workers(limits), Redactor(stores)
    app.add_middleware(Guard, token=token, limits=limits)

    def liveness() -> dict:
        return {"status": "ok", "stores": len(stores), "busy": workers.pending}

    app.add_middleware(Liveness, state=liveness)  # added last: the outermost layer

    def served(name: str | None) -> ServedStore:
        if name is None:
            if len(stores) == 1:
                return next(iter(stores.values()))
            raise InputError(f"name a store: one of {', '.join(stores)}")
        if name not in stores:
            raise UnknownStore(f"no store named {name!r}; served: {', '.join(stores)}")
        return stores[name]

    @app.exception_handler(GenoembedError)
    async def genoembed_error(_request, error: GenoembedError):
        status = 422 if isinstance(error, Unprocessable) else status_of(error)
        return error_response(status, str(error), redact)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, error: RequestValidationError):
        return error_response(422, validation_message(error), redact)

    @app.exception_handler(ValidationError)
    async def invalid_body(_request, error: ValidationError):
        return error_response(422, validation_message(error), redact)

    @app.exception_handler(HTTPException)
    async def http_error(_request, error: HTTPException):
        return error_response(error.status_code, error.detail, redact)

    @app.exception_handler(Exception)
    async def unexpected(_request, error: Exception):
        log.exception("unexpected error while serving a request")
        return error_response(500, f"internal error ({type(error).__name__}); the server log has the details")

    @app.get("/healthz", summary="Liveness (no token needed).")
    async def healthz() -> dict:
        # answered by the Liveness middleware before this route (kept for the API docs)
        return liveness()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    @app.get("/redoc", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", media_type="text/html")

    @app.get("/stores", summary="Names of the served stores with their size.")
    def list_stores() -> list[dict]:
        out = []
        for name, entry in stores.items():
            store = entry.snapshot().store
            out.append({"name": name, "tiles": store.num_tiles, "dim": store.dim, "genomes": list(store.genomes),
                        "annotations": sorted(store.manifest.get("annotations") or {})})
        return out

    @app.get("/stores/{name}", summary="What a store holds and how it was made (`genoembed info`).")
    def store_info(name: str) -> dict:
        return redact.cell(served(name).snapshot().store.info())

    search_body = {"requestBody": {"content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        "text/plain": {"schema": {"type": "string", "description": "FASTA (starts with '>') or BED; "
                                  "options in the query string"}}}}}

    @app.post("/search", summary="Nearest tiles to regions, sequences, BED or FASTA, with their features.",
              openapi_extra=search_body)
    async def search_endpoint(request: Request, body: bytes = Depends(raw_body),
                              format: str | None = QueryParam(None, description="json (one document), jsonl (a "
                                                              "row a line), tsv, bed or bed9 (else from the Accept "
                                                              "header)")) -> Response:
        fmt = pick_format(request, format, ("json", "jsonl", "tsv", "bed", "bed9"))

        def work(cancel: Cancel) -> Response:
            wanted = search_request(request, body)  # parsed here, not on the event loop
            entry = served(wanted.store)
            hits = run_search(entry, wanted, limits, cancel)
            cancel.check()
            if fmt in ("bed", "bed9"):
                store = entry.snapshot().store
                text = hits_bed(hits, store.contig_lengths, bed9=fmt == "bed9", higher_is_better=store.metric == "ip")
                return sized(Response(text, media_type=MEDIA[fmt]), limits)
            return table_response(hits, fmt, {"store": entry.name, "k": wanted.k}, limits)

        return await workers.run(work, limits.timeout)

    sql_body = {"requestBody": {"content": {"application/json": {"schema": SqlRequest.model_json_schema()}}}}

    @app.post("/sql", summary="One read-only SELECT over a store (the `genoembed sql` sandbox).",
              openapi_extra=sql_body)
    async def sql_endpoint(request: Request, body: bytes = Depends(raw_body),
                           format: str | None = QueryParam(None, description="json (one document), jsonl (a row a line) or tsv")) -> Response:
        wanted = SqlRequest.model_validate(json_body(request, body))
        fmt = pick_format(request, format, ("json", "jsonl", "tsv"))
        if wanted.timeout > limits.max_sql_timeout:
            raise TooLarge(f"timeout {wanted.timeout:g} s: at most {limits.max_sql_timeout:g} s on this server")
        entry = served(wanted.store)
        settings = {"memory_limit": limits.sql_memory, "threads": limits.sql_threads}

        def work(cancel: Cancel) -> Response:
            table = run_sql(entry.snapshot().store, wanted.query, wanted.parameters, wanted.timeout,
                            max_rows=limits.max_rows, settings=settings, cancelled=cancel.event)
            return table_response(table, fmt, limits=limits, redact=redact)

        # DuckDB stops itself at the timeout; the margin is for building the response
        return await workers.run(work, wanted.timeout + limits.timeout)

    @app.get("/track", summary="A genome-browser track: hits (bed, bed9) or one query's similarity "
                               "(bedgraph, bigwig).")
    async def track_endpoint(request: Request, format: str = QueryParam("bedgraph", description="bed, bed9, "
                                                                        "bedgraph or bigwig")) -> Response:
        fmt = pick_format(request, format, ("bedgraph", "bigwig", "bed", "bed9"))

        def work(cancel: Cancel) -> Response:
            wanted = search_request(request, b"")
            entry = served(wanted.store)
            if fmt in ("bed", "bed9"):
                store = entry.snapshot().store
                text = hits_bed(run_search(entry, wanted, limits, cancel), store.contig_lengths, bed9=fmt == "bed9",
                                higher_is_better=store.metric == "ip")
                return sized(Response(text, media_type=MEDIA[fmt]), limits)
            track, sizes = similarity_track(entry, wanted, limits, cancel)
            if fmt == "bedgraph":
                return StreamingResponse(bedgraph_chunks(track), media_type=MEDIA[fmt])  # weighed before
            with tempfile.TemporaryDirectory(prefix="genoembed-track-") as scratch:
                data = write_bigwig(track, sizes, Path(scratch) / "track.bw").read_bytes()
            return sized(Response(data, media_type=MEDIA[fmt],
                                  headers={"Content-Disposition": 'attachment; filename="similarity.bw"'}), limits)

        return await workers.run(work, limits.timeout)

    return app


def open_stores(paths: list[str], trust_remote_code: bool = False) -> dict[str, ServedStore]:
    """Open every store and load its embedder once, before the first request."""
    return {name: ServedStore(name, path, trust_remote_code) for name, path in store_names(paths).items()}
