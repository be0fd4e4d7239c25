"""What the write-proof SQL sandbox costs: views over Arrow datasets (pyarrow opens the files, DuckDB has no file
access) against DuckDB's own read_parquet over the same files (how the views were made before issue 25).

Builds a synthetic store (3-mer vectors, 200 bp tiles every 100 bp) with a BED annotation set and a saved
search, runs each query both ways side by side in one process, asserts equal answers, and prints one JSON
line per size:

    python benchmarks/sql_sandbox.py --size small|medium|large
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from genoembed.annotate import add_annotations
from genoembed.build import index
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.search import search
from genoembed.sql import connect, store_files
from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec

SIZES = {"small": 2_000_000, "medium": 10_000_000, "large": 40_000_000}  # genome bases
QUERIES = {
    "count": "SELECT count(*) AS n FROM tiles",
    "group": "SELECT chrom, count(*) AS n, avg(start) AS s FROM tiles GROUP BY chrom ORDER BY chrom",
    "filter": "SELECT tile_id, start FROM tiles WHERE chrom = 'c1' AND start BETWEEN 100000 AND 200000 ORDER BY tile_id",
    "vectors": "SELECT sum(list_sum(embedding::FLOAT[])) AS total FROM embeddings",
    "hits": "SELECT count(*) AS n, sum(score) AS s FROM hits",
}


def old_views(store: Store) -> duckdb.DuckDBPyConnection:
    """The views as DuckDB's read_parquet made them before (no sandbox settings: only the scan is compared)."""
    files = store_files(store)
    con = duckdb.connect()

    def listed(paths):
        return ", ".join(f"'{path}'" for path in paths)

    con.execute(f"CREATE VIEW tiles AS SELECT * EXCLUDE (embedding) FROM read_parquet([{listed(files.shards)}], "
                "union_by_name=true)")
    con.execute(f"CREATE VIEW embeddings AS SELECT tile_id, embedding FROM read_parquet([{listed(files.shards)}], "
                "union_by_name=true)")
    con.execute(f"CREATE VIEW annotations AS SELECT * FROM read_parquet([{listed(files.annotations)}], "
                "union_by_name=true)")
    con.execute(f"CREATE VIEW hits AS SELECT * FROM read_parquet(['{files.searches['last']}'])")
    return con


def timed(con, query: str, repeats: int = 3):
    best, rows = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        rows = con.sql(query).fetchall()
        best = min(best, time.perf_counter() - started)
    return best, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=SIZES, default="small")
    size = parser.parse_args().size
    bases = SIZES[size]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        genome = write_fasta(folder / "g.fa", random_genome({"c1": bases // 2, "c2": bases // 2}, seed=5))
        rng = np.random.default_rng(5)
        starts = np.sort(rng.integers(0, bases // 2 - 2_000, size=bases // 1_000))
        (folder / "f.bed").write_text("".join(f"c{1 + n % 2}\t{s}\t{s + 1500}\tf{n}\n" for n, s in enumerate(starts)))
        store = index(genome, folder / "store", embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=200, stride=100, strands="+"),
                      index_spec=IndexSpec("Flat"), shard_rows=65536)
        add_annotations(store, folder / "f.bed")
        search(store, [f"c1:{n * 5000 + 1}-{n * 5000 + 200}" for n in range(50)], k=10, save_as="last")
        new, old = connect(Store.open(store.root)), old_views(Store.open(store.root))
        result = {"benchmark": "sql_sandbox", "size": size, "tiles": store.num_tiles, "features": len(starts)}
        for name, query in QUERIES.items():
            new_s, new_rows = timed(new, query)
            old_s, old_rows = timed(old, query)
            assert new_rows == old_rows or np.allclose(np.array(new_rows, dtype=float), np.array(old_rows, dtype=float),
                                                       rtol=1e-5), name
            result[f"{name}_s"] = round(new_s, 4)
            result[f"{name}_read_parquet_s"] = round(old_s, 4)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
