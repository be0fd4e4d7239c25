"""A store written by genoembed 0.1.0 (tests/data/store_v2, see tests/data/SOURCE.md) opens, searches, joins
and verifies with today's code: same hits as it saved then, its model found in this installation."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.search import search
from genoembed.sql import run_sql
from genoembed.store import Store
from genoembed.verify import verify_store

from conftest import DATA

CONTIG = "gi|45478711|ref|NC_005816.1|"


@pytest.fixture
def legacy(tmp_path):
    """A copy of the committed store beside a copy of its FASTA (the manifest names it by a relative path)."""
    shutil.copy(DATA / "NC_005816.fna", tmp_path / "NC_005816.fna")
    shutil.copytree(DATA / "store_v2", tmp_path / "store_v2")
    return tmp_path / "store_v2"


def test_old_store_opens_and_verifies(legacy):
    store = Store.open(legacy)
    assert store.num_tiles == 19 and store.dim == 256 and list(store.genomes) == ["NC_005816"]
    assert verify_store(store) == []
    assert sorted(store.searches()) == ["last", "probe"]


def test_old_store_searches_give_the_hits_it_saved(legacy, monkeypatch):
    monkeypatch.chdir(legacy.parent.parent)  # not where it was built: the FASTA is found beside the store
    store = Store.open(legacy)
    saved = pq.read_table(legacy / "searches" / "probe.parquet")
    hits = search(store, [f"{CONTIG}:1001-2000"], k=3)
    assert hits.column("tile_id").to_pylist() == saved.column("tile_id").to_pylist()
    assert hits.column("score").to_numpy() == pytest.approx(saved.column("score").to_numpy(), abs=1e-5)


def test_old_store_sql_views_and_joins(legacy):
    store = Store.open(legacy)
    rows = run_sql(store, "SELECT count(*) AS n FROM hits_probe JOIN hit_features_probe USING (query, rank)")
    assert rows.to_pylist()[0]["n"] > 0
    assert run_sql(store, "SELECT count(*) AS n FROM tiles").to_pylist() == [{"n": 19}]


def test_old_store_through_the_cli(legacy):
    result = CliRunner().invoke(app, ["search", str(legacy), "--region", f"{CONTIG}:1001-2000", "-k", "2",
                                      "--format", "tsv", "--tiles", "--name", "again"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert CliRunner().invoke(app, ["verify", str(legacy)]).exit_code == 0
