"""The CLI through Typer's CliRunner: exit codes, visible output, one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.store import Store

from conftest import CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK, PLASMID_FASTA, PLASMID_GENBANK

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory):
    recipe = tmp_path_factory.mktemp("recipes") / "chloro.toml"
    recipe.write_text(f"""
[genome]
fasta = "{CHLOROPLAST_FASTA}"
[tiling]
window = 1000
stride = 500
strands = "+"
[model]
kind = "kmer"
k = 4
[index]
factory = "Flat"
[annotations]
files = ["{CHLOROPLAST_GENBANK}"]
""")
    result = invoke("index", recipe, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # the chloroplast is circular (GenBank LOCUS): 308 tiles along it + 1 through its origin
    assert summary["tiles"] == 309 and summary["dim"] == 256
    assert summary["annotations"] == {"NC_000932": 258}
    return recipe.with_suffix("")


def test_index_writes_store_beside_recipe(cli_store):
    assert (cli_store / "manifest.json").is_file()
    assert Store.open(cli_store).provenance["embedder"]["kind"] == "kmer"


def test_search_by_region_shows_annotated_hits(cli_store):
    result = invoke("search", cli_store, "--region", "NC_000932.1:1-1000", "-k", "3", "--tiles", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # one JSON document; jsonl gives the same rows a line each
    lines = invoke("search", cli_store, "--region", "NC_000932.1:1-1000", "-k", "3", "--tiles", "--format", "jsonl")
    assert [json.loads(line) for line in lines.stdout.splitlines()] == rows
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["start"] == 0 and rows[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # the first kb of the chloroplast holds psbA (complement(383..1444)) and trnH
    assert "psbA" in rows[0]["overlapping"]


def test_search_by_sequence_pretty_table(cli_store):
    sequence = CHLOROPLAST_FASTA.read_text().splitlines()[100][:60] * 10
    result = invoke("search", cli_store, "--sequence", sequence, "-k", "2", "--evalue", "1000")
    assert result.exit_code == 0, result.output
    assert "top 2 hits" in result.stdout and "sequence1" in result.stdout
    # a 60-mer repeated ten times has no homolog here: at the default E-value cut-off (10) nothing is shown
    result = invoke("search", cli_store, "--sequence", sequence, "-k", "2")
    assert result.exit_code == 0 and "no hit with E-value <= 10" in result.stdout


def test_sql_joins_hits_with_features(cli_store):
    invoke("search", cli_store, "--region", "NC_000932.1:84001-85000", "-k", "5")
    query = ("SELECT h.rank, f.feature_name FROM hits h JOIN hit_features f USING (query, rank) "
             "WHERE f.feature_type = $type ORDER BY h.rank, f.feature_name")
    result = invoke("sql", cli_store, query, "--param", "type=gene", "--format", "tsv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "rank\tfeature_name" and len(lines) > 1


def test_sql_refuses_writes_and_leaves_store_intact(cli_store):
    before = {p: p.read_bytes() for p in cli_store.rglob("*.parquet")}
    for statement in ("DROP VIEW tiles", f"COPY (SELECT 1) TO '{cli_store}/shards/part-00000.parquet'",
                      "ATTACH 'x.db'", "CREATE TABLE t AS SELECT 1"):
        result = invoke("sql", cli_store, statement)
        assert result.exit_code == 2
        assert "only SELECT queries are allowed" in result.stderr
    result = invoke("sql", cli_store, "SELECT * FROM read_csv('/etc/passwd')")
    assert result.exit_code == 2 and "SQL:" in result.stderr
    result = invoke("sql", cli_store, "SELEC 1")
    assert result.exit_code == 2 and "syntax error" in result.stderr.lower()
    assert {p: p.read_bytes() for p in cli_store.rglob("*.parquet")} == before


def test_info_and_verify(cli_store):
    result = invoke("info", cli_store)
    assert result.exit_code == 0
    assert "309" in result.stdout and "kmer-4" in result.stdout and "NC_000932 (258)" in result.stdout
    result = invoke("verify", cli_store)
    assert result.exit_code == 0 and "OK" in result.stdout


def test_annotate_detects_contig_mismatch_and_aliases(tmp_path):
    out = tmp_path / "plasmid"
    result = invoke("index", "--fasta", PLASMID_FASTA, "--out", out, "--model", "kmer:3", "--window", "500",
                    "--stride", "500", "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("annotate", out, PLASMID_GENBANK)
    assert result.exit_code == 2
    assert "NC_005816.1" in result.stderr and "alias" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = invoke("annotate", out, PLASMID_GENBANK, "--auto-alias")
    assert result.exit_code == 0, result.output
    assert "added" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("index", "--fasta", "missing.fa", "--out", "x"), "missing.fa: FASTA file not found"),
    (("index",), "give a recipe"),
    (("index", "--fasta", PLASMID_FASTA, "--out", "{tmp}/s", "--window", "20000", "--model", "kmer"),
     "longer than every selected contig"),
    (("index", "--fasta", PLASMID_FASTA, "--out", "{tmp}/s", "--model", "{tmp}/nomodel"), "nomodel"),
    (("search", "{tmp}", "--sequence", "ACGT"), "not a genoembed store"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = invoke(*(str(a).replace("{tmp}", str(tmp_path)) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s" / "shards").exists() or not list((tmp_path / "s" / "shards").iterdir())


def test_new_option_names_and_their_old_hidden_spellings(tmp_path):
    """--output/-o, --format json and --embedding-dtype; the old --out and --json still work, unlisted."""
    out = tmp_path / "s"
    result = invoke("index", "--fasta", PLASMID_FASTA, "-o", out, "--model", "kmer:3", "--window", "500",
                    "--embedding-dtype", "float16", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tiles"] > 0 and Store.open(out).provenance["embedding_dtype"] == "float16"
    again = invoke("index", "--fasta", PLASMID_FASTA, "--out", out, "--model", "kmer:3", "--window", "500",
                   "--embedding-dtype", "float16", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["tiles"] == summary["tiles"]
    info = invoke("info", out, "--format", "json")
    assert json.loads(info.stdout)["tiles"] == summary["tiles"]
    help_text = invoke("index", "--help").stdout
    assert "--output" in help_text and "--out " not in help_text and "--json" not in help_text
    both = invoke("index", "--fasta", PLASMID_FASTA, "-o", out, "--out", out, "--model", "kmer:3")
    assert both.exit_code == 2 and "--output" in both.output


def test_outputs_are_never_written_inside_the_store(cli_store):
    for args in (("search", cli_store, "--region", "NC_000932.1:84001-85000", "-f", "tsv"),
                 ("sql", cli_store, "SELECT 1 AS one", "-f", "tsv")):
        result = invoke(*args, "--output", cli_store / "manifest.json")
        assert result.exit_code == 2 and "inside the store" in result.output
    assert Store.open(cli_store).num_tiles > 0  # the manifest is intact
