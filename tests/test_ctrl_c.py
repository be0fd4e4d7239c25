"""Ctrl-C while DuckDB works for `annotate` (GTF/GFF3 parsing), `plot embeddings --color-by type` (the type join)
and `search --where` says "genoembed: interrupted" and exits 130, as every other verb does. Run on the main
thread, DuckDB answered a Ctrl-C with its own error ("Query interrupted"), a traceback or an unreadable file.
Each Ctrl-C is pressed a moment after DuckDB is handed a query that does not end on its own, and the query must be
stopped, not left running on a worker thread (a Ctrl-C landing in ``Thread.join`` used to hide the worker)."""

from __future__ import annotations

import _thread
import shutil
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.store import Store

from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK
from test_sql_sandbox import ctrl_c_handled  # noqa: F401  (a fixture)

ENDLESS = "SELECT count(*) AS n FROM range(10000000000)"
INTERRUPTED = (130, "genoembed: interrupted\n")


def press_ctrl_c_soon() -> None:
    """Ctrl-C in 0.3 s, from another thread: by then DuckDB is running the query the caller hands it."""
    threading.Timer(0.3, _thread.interrupt_main).start()


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def no_query_left_running() -> bool:
    """Every DuckDB worker thread has ended within 5 s (a worker sets its outcome a moment before it ends)."""
    deadline = time.monotonic() + 5
    while any(thread.name == "genoembed-sql" for thread in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_ctrl_c_while_a_gff3_is_parsed(chloroplast_store, tmp_path, monkeypatch, ctrl_c_handled):  # noqa: F811
    root = shutil.copytree(chloroplast_store.root, tmp_path / "store")
    gff = tmp_path / "genes.gff3"
    gff.write_text("##gff-version 3\nNC_000932.1\t.\tgene\t1\t100\t.\t+\t.\tID=g1\n")
    monkeypatch.setattr(sys.modules["genoembed.gff"], "gff_rows_sql",
                        lambda lines, dialect: (press_ctrl_c_soon(), f"CREATE TEMP TABLE ge_rows AS {ENDLESS}")[1])
    assert invoke("annotate", root, gff) == INTERRUPTED
    assert no_query_left_running()
    assert not Store.open(root).manifest["annotations"]  # nothing half-added


def test_ctrl_c_while_plot_joins_tiles_and_annotations(tmp_path, monkeypatch, ctrl_c_handled):  # noqa: F811
    pytest.importorskip("matplotlib")
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder

    store = index(CHLOROPLAST_FASTA, tmp_path / "store", embedder=KmerEmbedder(k=3), annotations=[CHLOROPLAST_GENBANK])
    sql, connect = sys.modules["genoembed.sql"], sys.modules["genoembed.sql"].connect

    def endless_annotations(store, settings=None):
        con = connect(store, settings)
        con.execute("ALTER VIEW annotations RENAME TO ge_every_annotation")
        con.execute("CREATE VIEW annotations AS SELECT a.* FROM ge_every_annotation a, range(10000000000)")
        press_ctrl_c_soon()
        return con

    monkeypatch.setattr(sql, "connect", endless_annotations)
    out = tmp_path / "type.png"
    assert invoke("plot", "embeddings", store.root, "--color-by", "type", "--out", out) == INTERRUPTED
    assert no_query_left_running()
    assert not out.exists()


def test_ctrl_c_while_search_where_selects_tiles(chloroplast_store, monkeypatch, ctrl_c_handled):  # noqa: F811
    sql = sys.modules["genoembed.sql"]
    fetch = sql._fetch
    monkeypatch.setattr(sql, "_fetch", lambda *arguments: (press_ctrl_c_soon(), fetch(*arguments))[1])
    where = f"({ENDLESS}) > 0"
    assert invoke("search", chloroplast_store.root, "-r", "NC_000932.1:1-1000", "--where", where, "--no-save",
                  "--no-annotate") == INTERRUPTED
    assert no_query_left_running()
