"""Hit and track outputs of a store whose genomes share contig names: every record names its target
``GENOME#0#CONTIG`` (PanSN-spec) and maps back to the hit's own (genome, chrom), checked against the hits
table read by plain Python; a one-genome store keeps plain names; queries take the qualified names too."""

from __future__ import annotations

import json
import shutil
import subprocess

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.chain import blocks_paf
from genoembed.cli import app
from genoembed.store import Store
from test_genome_keys import EMBEDDER, TILING, pangenome  # noqa: F401  (the two-genome store fixture)

runner = CliRunner()
LENGTHS = {"A": {"chr1": 6000, "contig_1": 3000, "pA": 2000}, "B": {"chr1": 2500, "contig_1": 4000}}
QUERY = ["--region", "chr1:1201-1500", "--query-genome", "A"]  # B's chr1 is A's first 2,500 bp: hits on both


def split_target(name: str) -> tuple[str, str]:
    """The oracle's own reading of a PanSN name: sample, haplotype 0, contig."""
    genome, haplotype, chrom = name.split("#", 2)
    assert haplotype == "0"
    return genome, chrom


def cli(*args: str) -> str:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def json_rows(*args: str) -> list[dict]:
    return json.loads(cli("search", *args, "--format", "json", "--quiet"))


def test_search_bed_names_each_hits_genome(pangenome):
    _, store, _ = pangenome
    rows = json_rows(store.root, *QUERY, "-k", "8")
    assert {row["genome"] for row in rows} == {"A", "B"}
    lines = cli("search", store.root, *QUERY, "-k", "8", "--format", "bed", "--quiet").splitlines()
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        chrom, start, end, name = line.split("\t")[:4]
        assert split_target(chrom) == (row["genome"], row["chrom"])
        assert (int(start), int(end), name) == (row["start"], row["end"], f"{row['query']}#{row['rank']}")


def test_paf_and_blast6_name_each_alignments_genome(pangenome):
    pytest.importorskip("parasail")
    _, store, _ = pangenome
    rows = [row for row in json_rows(store.root, *QUERY, "-k", "8", "--align") if row["alignment_score"] is not None]
    assert {row["genome"] for row in rows} == {"A", "B"}
    paf = cli("search", store.root, *QUERY, "-k", "8", "--align", "--format", "paf", "--quiet").splitlines()
    blast = [line for line in cli("search", store.root, *QUERY, "-k", "8", "--align", "--format", "blast6",
                                  "--quiet").splitlines() if not line.startswith("#")]
    assert len(paf) == len(blast) == len(rows)
    for paf_line, blast_line, row in zip(paf, blast, rows):
        fields, subject = paf_line.split("\t"), blast_line.split("\t")
        assert split_target(fields[5]) == split_target(subject[1]) == (row["genome"], row["chrom"])
        assert (int(fields[6]), int(fields[7]), int(fields[8])) == \
            (LENGTHS[row["genome"]][row["chrom"]], row["target_start"], row["target_end"])
        assert sorted(map(int, subject[8:10])) == [row["target_start"] + 1, row["target_end"]]


def test_mapped_blocks_paf_names_each_blocks_genome(pangenome):
    _, store, _ = pangenome
    query = ["--region", "chr1:1-1200", "--query-genome", "A", "-k", "4"]  # four windows long: mapped as blocks
    pytest.importorskip("parasail")
    rows = json_rows(store.root, *query)
    assert {row["genome"] for row in rows} == {"A", "B"} and all("query_block_start" in row for row in rows)
    lines = cli("search", store.root, *query, "--format", "paf", "--quiet").splitlines()
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        fields = line.split("\t")
        assert split_target(fields[5]) == (row["genome"], row["chrom"])  # PAF aligns the blocks it can: own span
        assert int(fields[6]) == LENGTHS[row["genome"]][row["chrom"]] and 0 <= int(fields[7]) < int(fields[8]) <= \
            int(fields[6])
    unaligned = blocks_paf(pa.Table.from_pylist(rows), store.contig_lengths).splitlines()  # as blocks too long to align
    assert [(split_target(line.split("\t")[5]), *map(int, line.split("\t")[6:9])) for line in unaligned] == \
        [((row["genome"], row["chrom"]), LENGTHS[row["genome"]][row["chrom"]], row["start"], row["end"]) for row in rows]


def test_track_bed9_and_bedgraph_use_qualified_names_bedtools_takes(pangenome, tmp_path):
    _, store, _ = pangenome
    rows = {(row["query"], row["rank"]): row for row in json_rows(store.root, *QUERY, "-k", "6", "--tiles")}
    bed9 = tmp_path / "hits.bed"
    cli("track", store.root, *QUERY, "-k", "6", "--tiles", "-o", bed9, "-f", "bed9")
    records = [line.split("\t") for line in bed9.read_text().splitlines()]
    assert len(records) == len(rows) and {split_target(r[0])[0] for r in records} == {"A", "B"}
    for chrom, start, end, name, *_ in records:
        query, rank = name.rsplit("#", 1)
        row = rows[(query, int(rank))]
        assert (split_target(chrom), int(start), int(end)) == ((row["genome"], row["chrom"]), row["start"], row["end"])
    graph = tmp_path / "similarity.bedgraph"
    cli("track", store.root, *QUERY, "-o", graph)
    tiles = {(tile["genome"], tile["chrom"], tile["start"])
             for batch in store.iter_batches(["genome", "chrom", "start"]) for tile in batch.to_pylist()}
    values = [line.split("\t") for line in graph.read_text().splitlines()[1:]]
    assert {split_target(v[0])[0] for v in values} == {"A", "B"}
    for chrom, start, end, _ in values:
        genome, contig = split_target(chrom)
        assert (genome, contig, int(start)) in tiles and int(end) <= LENGTHS[genome][contig]
    if shutil.which("bedtools"):
        sizes = tmp_path / "genome.txt"
        sizes.write_text("".join(f"{g}#0#{c}\t{n}\n" for g, contigs in LENGTHS.items() for c, n in contigs.items()))
        for path in (bed9, graph):
            done = subprocess.run(["bedtools", "slop", "-b", "0", "-i", path, "-g", sizes], capture_output=True,
                                  text=True)
            assert done.returncode == 0 and not done.stderr, done.stderr
            assert done.stdout.count("\n") == len(records if path == bed9 else values)


def test_bigwig_chrom_sizes_are_the_qualified_contigs(pangenome, tmp_path):
    pyBigWig = pytest.importorskip("pyBigWig")
    _, store, _ = pangenome
    out = tmp_path / "b.bw"
    cli("track", store.root, *QUERY, "-o", out, "--genome", "B")
    assert pyBigWig.open(str(out)).chroms() == {f"B#0#{c}": n for c, n in LENGTHS["B"].items()}


def test_one_genome_store_keeps_plain_names(pangenome, tmp_path):
    root, _, _ = pangenome
    store = index(root / "A.fa", tmp_path / "one", embedder=EMBEDDER, tiling=TILING)
    rows = json_rows(store.root, "--region", "chr1:1201-1500", "-k", "5")
    lines = cli("search", store.root, "--region", "chr1:1201-1500", "-k", "5", "--format", "bed", "--quiet")
    assert [line.split("\t")[:3] for line in lines.splitlines()] == \
        [[row["chrom"], str(row["start"]), str(row["end"])] for row in rows]
    graph = tmp_path / "g.bedgraph"
    cli("track", store.root, "--region", "chr1:1201-1500", "-o", graph)
    assert {line.split("\t")[0] for line in graph.read_text().splitlines()[1:]} == set(LENGTHS["A"])


def test_queries_take_qualified_contig_names(pangenome, tmp_path):
    _, store, _ = pangenome
    named = json_rows(store.root, "--region", "chr1:1201-1500", "--query-genome", "B", "-k", "5", "--exclude-self")
    drop = lambda rows: [{k: v for k, v in row.items() if k != "query"} for row in rows]  # noqa: E731
    for text in ("B#0#chr1:1201-1500", "B#chr1:1201-1500"):
        assert drop(json_rows(store.root, "--region", text, "-k", "5", "--exclude-self")) == drop(named)
    bed = tmp_path / "q.bed"
    bed.write_text("B#0#chr1\t1200\t1500\tq\n")
    assert drop(json_rows(store.root, "--bed", bed, "-k", "5", "--exclude-self")) == drop(named)
    assert not [row for row in named if (row["genome"], row["chrom"]) == ("B", "chr1") and row["start"] < 1500
                and row["end"] > 1200]  # exclude-self knew the query's own genome: A's copy of the region stays
    assert [row for row in named if (row["genome"], row["chrom"]) == ("A", "chr1") and row["start"] <= 1200]
    result = runner.invoke(app, ["search", str(store.root), "--region", "chr1:1201-1500", "--format", "json"])
    assert result.exit_code == 2 and "A#0#chr1" in result.output


def test_served_bed_and_track_use_qualified_names(pangenome):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from genoembed.serve import ServedStore
    from test_serve import running

    _, store, _ = pangenome
    with running({"pan": ServedStore("pan", Store.open(store.root).root)}) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        wanted = {"store": "pan", "regions": ["B#0#chr1:1201-1500"], "k": 6}
        rows = client.post("/search", json=wanted).json()["rows"]
        bed = client.post("/search?format=bed", json=wanted).text.splitlines()
        track = client.get("/track", params={"store": "pan", "regions": "A#0#chr1:1201-1500"}).text.splitlines()[1:]
    assert {row["genome"] for row in rows} == {"A", "B"}
    expected = sorted((f"{r['genome']}#0#{r['chrom']}", r["start"], r["end"]) for r in rows)
    assert sorted((chrom, int(start), int(end)) for chrom, start, end, *_ in map(str.split, bed)) == expected
    assert {split_target(line.split("\t")[0])[0] for line in track} == {"A", "B"}


def test_explain_tracks_name_each_sequences_genome(pangenome, tmp_path):
    _, store, _ = pangenome
    prefix = tmp_path / "why"
    cli("explain", store.root, "--region", "A#0#chr1:1201-1500", "--hit", "B#0#chr1:1201-1500", "-o", prefix,
        "--no-plot", "--quiet")
    for role, genome in (("query", "A"), ("hit", "B")):
        rows = [line.split("\t") for line in (tmp_path / f"why.{role}.bedgraph").read_text().splitlines()[1:]]
        assert {row[0] for row in rows} == {f"{genome}#0#chr1"}
        assert min(int(row[1]) for row in rows) == 1200 and max(int(row[2]) for row in rows) == 1500
