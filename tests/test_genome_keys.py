"""(genome, chrom) is the key of every interval: two genomes sharing contig names (``chr1``, ``contig_1``),
as assemblies do, checked against pure-Python oracles for joins, SQL views, the search columns, alignment
flanks, PAF target lengths, E-values, exclude-self, annotate's choice of genome, remove, and old stores."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genoembed.annotate import add_annotations, annotate_hits
from genoembed.build import index
from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import InputError
from genoembed.evidence import evalue
from genoembed.hit_formats import paf
from genoembed.manifest import FORMAT_VERSION, MANIFEST
from genoembed.remove import remove
from genoembed.search import region_queries, search
from genoembed.sql import run_sql
from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.verify import verify_store

from conftest import DATA
from test_joins import nearest_oracle, overlap_oracle

runner = CliRunner()
TILING = TilingSpec(window=300, stride=150, strands="+")
EMBEDDER = KmerEmbedder(k=3, canonical=False)
# B's chr1 is the first 2,500 bp of A's chr1 (same name, same coordinates, other genome); A's chr1 runs on to
# 6,000 bp, so anything cut with B's length at A's end fails. pA is A's alone.
A_FEATURES = [("chr1", 100, 400, "+", "a_gene1"), ("chr1", 2000, 2600, "-", "a_gene2"), ("chr1", 5200, 5600, "+", "a_gene3"),
              ("contig_1", 50, 900, "+", "a_gene4"), ("pA", 10, 500, "-", "a_plasmid")]
B_FEATURES = [("chr1", 1200, 1500, "+", "b_gene1"), ("contig_1", 2000, 3800, "-", "b_gene2")]


def write_bed(path, rows):
    path.write_text("".join(f"{c}\t{s}\t{e}\t{n}\t0\t{strand}\n" for c, s, e, strand, n in rows))
    return path


@pytest.fixture(scope="module")
def pangenome(tmp_path_factory):
    """Store with genomes A and B sharing contig names, each annotated with its own BED; searched once (saved)."""
    root = tmp_path_factory.mktemp("keys")
    a = random_genome({"chr1": 6000, "contig_1": 3000, "pA": 2000}, seed=11)
    b = {"chr1": a["chr1"][:2500], **random_genome({"contig_1": 4000}, seed=12)}
    fa, fb = write_fasta(root / "A.fa", a), write_fasta(root / "B.fa", b)
    out = root / "store"
    index(fa, out, embedder=EMBEDDER, tiling=TILING)
    store = index(fb, out, embedder=EMBEDDER, tiling=TILING, append=True)
    assert list(store.genomes) == ["A", "B"]
    add_annotations(store, write_bed(root / "a_genes.bed", A_FEATURES), genome="A")
    add_annotations(store, write_bed(root / "b_genes.bed", B_FEATURES), genome="B")
    queries = region_queries(store.genome("A"), ["chr1:101-400", "chr1:1201-1500", "chr1:2201-2500",
                                                   "contig_1:2001-2300"])
    hits = search(store, queries, k=12, save_as="probe")
    assert set(hits["genome"].to_pylist()) == {"A", "B"}  # hits on both genomes' chr1
    return root, store, hits


def features_of_store() -> list[dict]:
    rows = [("A", *row) for row in A_FEATURES] + [("B", *row) for row in B_FEATURES]
    return [{"genome": g, "chrom": c, "start": s, "end": e, "strand": strand, "id": n}
            for g, c, s, e, strand, n in rows]


def hits_as_intervals(hits: pa.Table) -> list[dict]:
    return [{**{key: row[key] for key in ("genome", "chrom", "start", "end", "strand")},
             "id": (row["query"], row["rank"])} for row in hits.to_pylist()]


def test_sql_views_match_the_oracle_on_genome_and_chrom(pangenome):
    _, store, hits = pangenome
    left, right = hits_as_intervals(hits), features_of_store()
    got = sorted(((r["query"], r["rank"]), r["feature_name"], r["overlap_bp"]) for r in run_sql(
        store, "SELECT query, rank, feature_name, overlap_bp FROM hit_features_probe").to_pylist())
    assert got == overlap_oracle(left, right, "ignore") and got
    assert {name for _, name, _ in got} >= {"a_gene1", "b_gene1"}
    # the case a join on the contig name alone gets wrong: B's chr1 hits where only A's chr1 has a gene
    assert any(h["genome"] == "B" and h["chrom"] == "chr1" and h["start"] < 400 for h in left)
    near = run_sql(store, "SELECT query, rank, feature_genome, feature_name, distance FROM hit_nearest_probe")
    expected = nearest_oracle(left, right, "ignore")
    assert sorted(((r["query"], r["rank"]), r["feature_name"], r["distance"]) for r in near.to_pylist()) == \
        sorted(expected, key=lambda row: (row[0], row[1] or "", row[2] or 0))
    assert all(r["feature_genome"] in (r_genome, None) for r, r_genome in
               zip(near.to_pylist(), run_sql(store, "SELECT genome FROM hit_nearest_probe")["genome"].to_pylist()))


def test_search_columns_name_features_of_the_hits_own_genome(pangenome):
    _, store, hits = pangenome
    annotated = annotate_hits(store, hits).to_pylist()
    left, right = hits_as_intervals(hits), features_of_store()
    overlapping, nearest = {}, {}
    for hit_id, feature, _ in overlap_oracle(left, right, "ignore"):
        overlapping.setdefault(hit_id, set()).add(feature)
    for hit_id, feature, distance in nearest_oracle(left, right, "ignore"):
        nearest.setdefault(hit_id, set()).add((feature, distance))
    for row in annotated:
        hit_id = (row["query"], row["rank"])
        assert set((row["overlapping"] or "").split(", ")) - {""} == overlapping.get(hit_id, set())
        assert (row["nearest"], row["nearest_distance"]) in nearest[hit_id]
        assert row["nearest"] is None or row["nearest"].startswith(row["genome"].lower() + "_")


def test_exclude_self_drops_only_the_querys_own_genome(pangenome):
    _, store, _ = pangenome
    query = region_queries(store.genome("A"), ["chr1:1-300"])[0]
    assert query.genome == "A"
    hits = search(store, [query], k=3, exclude_self=True).to_pylist()
    # B's chr1:1-300 is the same sequence at the same coordinates on another genome: the best hit, kept
    assert (hits[0]["genome"], hits[0]["chrom"], hits[0]["start"]) == ("B", "chr1", 0)
    assert not any(h["genome"] == "A" and h["chrom"] == "chr1" and h["start"] < 300 for h in hits)


def test_align_paf_and_evalue_use_the_hits_genome(pangenome):
    pytest.importorskip("parasail")
    _, store, _ = pangenome
    # A's chr1 past B's 2,500 bp: cut with B's length, the flank would end before the tile starts
    queries = region_queries(store.genome("A"), ["chr1:5401-5700", "chr1:1201-1500"])
    hits = search(store, queries, k=4, align=True)
    lengths = {"A": {"chr1": 6000, "contig_1": 3000, "pA": 2000}, "B": {"chr1": 2500, "contig_1": 4000}}
    assert store.contig_lengths == lengths
    aligned = [row for row in hits.to_pylist() if row["identity"] == 1.0 and row["query_coverage"] == 1.0]
    assert {(r["genome"], r["target_start"]) for r in aligned} >= {("A", 5400), ("A", 1200), ("B", 1200)}
    database = sum(sum(contigs.values()) for contigs in lengths.values())  # both chr1s count
    for row in aligned:
        assert row["evalue"] == pytest.approx(evalue(row["alignment_score"], row["query_length"], database))
    lines = paf(hits, store.contig_lengths).splitlines()  # one line per aligned hit, in row order
    rows = [row for row in hits.to_pylist() if row["alignment_score"] is not None]
    assert len(lines) == len(rows) and {row["genome"] for row in rows} == {"A", "B"}
    for line, row in zip(lines, rows):
        fields = line.split("\t")
        assert (fields[5], int(fields[6]), int(fields[7])) == \
            (f"{row['genome']}#0#{row['chrom']}", lengths[row["genome"]][row["chrom"]], row["target_start"])


def test_annotate_picks_the_one_matching_genome_or_refuses(pangenome, tmp_path):
    root, store, _ = pangenome
    copy = tmp_path / "store"
    shutil.copytree(store.root, copy)
    store = Store.open(copy)
    entry = add_annotations(store, write_bed(tmp_path / "plasmid.bed", [("pA", 0, 100, "+", "x")]))
    assert entry["genome"] == "A"  # only A has pA
    shared = write_bed(tmp_path / "shared.bed", [("chr1", 0, 100, "+", "x")])
    with pytest.raises(InputError, match=r"shared\.bed: its contigs are in 2 genomes of the store \(A, B\).*--genome"):
        add_annotations(store, shared)
    nowhere = write_bed(tmp_path / "nowhere.bed", [("chrX", 0, 100, "+", "x")])
    with pytest.raises(InputError, match=r"nowhere\.bed: no genome of the store holds all its contigs "
                                         r"\(e\.g\. 'chrX'; genomes: A, B\)"):
        add_annotations(store, nowhere)
    runner = CliRunner()
    for path in (shared, nowhere):
        result = runner.invoke(app, ["annotate", str(copy), str(path)])
        assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    result = runner.invoke(app, ["annotate", str(copy), str(shared), "--genome", "B"])
    assert result.exit_code == 0 and "to genome B" in result.output
    # the same file name for the other genome is a new set, not a replacement
    assert add_annotations(Store.open(copy), shared, genome="A")["path"].startswith("annotations/shared_A.")
    with pytest.raises(InputError, match="contig.*not in the genome"):
        add_annotations(Store.open(copy), nowhere, genome="B")


def test_remove_genome_takes_its_annotations(pangenome, tmp_path):
    _, store, _ = pangenome
    shutil.copytree(store.root, tmp_path / "store")
    store = Store.open(tmp_path / "store")
    remove(store, "A", ["pA"])
    rows = run_sql(store, "SELECT genome, chrom, name FROM annotations ORDER BY ALL").to_pylist()
    assert ("A", "pA", "a_plasmid") not in [tuple(r.values()) for r in rows] and len(rows) == 6
    remove(store, "B")
    store = Store.open(tmp_path / "store")
    assert sorted(store.manifest["annotations"]) == ["a_genes"]
    assert run_sql(store, "SELECT DISTINCT genome FROM annotations").to_pylist() == [{"genome": "A"}]
    assert verify_store(store) == []
    assert not (tmp_path / "store" / "annotations" / "b_genes.parquet").exists()


def test_old_single_genome_store_gets_its_genome(tmp_path):
    shutil.copy(DATA / "NC_005816.fna", tmp_path / "NC_005816.fna")
    shutil.copytree(DATA / "store_v2", tmp_path / "store_v2")
    store = Store.open(tmp_path / "store_v2")
    assert store.manifest["format_version"] == FORMAT_VERSION
    assert store.manifest["annotations"]["NC_005816"]["genome"] == "NC_005816"
    rows = run_sql(store, "SELECT genome, count(*) AS n FROM annotations GROUP BY genome").to_pylist()
    assert rows == [{"genome": "NC_005816", "n": pq.read_metadata(DATA / "store_v2" / "annotations" /
                                                                    "NC_005816.parquet").num_rows}]
    assert run_sql(store, "SELECT count(*) AS n FROM hit_features_probe WHERE feature_genome = genome"
                   ).to_pylist()[0]["n"] > 0
    assert verify_store(store) == []


def test_old_several_genome_store_keys_rows_by_unshared_contigs(pangenome, tmp_path):
    """A format-2 store with two genomes: rows on a contig name one genome holds get it; shared names join nothing,
    and `remove` rewrites the old file with the genome column."""
    _, store, _ = pangenome
    root = tmp_path / "store"
    shutil.copytree(store.root, root)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["format_version"] = 2
    for name, entry in manifest["annotations"].items():
        table = pq.read_table(root / entry["path"]).drop_columns(["genome"])
        pq.write_table(table, root / entry["path"])
        from genoembed.manifest import file_sha256
        entry.pop("genome")
        entry["sha256"] = file_sha256(root / entry["path"])
    (root / MANIFEST).write_text(json.dumps(manifest))
    old = Store.open(root)
    assert old.manifest["annotations"]["a_genes"]["genome"] is None
    rows = run_sql(old, "SELECT genome, chrom, name FROM annotations").to_pylist()
    owners = {(r["chrom"], r["name"]): r["genome"] for r in rows}
    assert owners[("pA", "a_plasmid")] == "A" and owners[("chr1", "a_gene1")] is None
    assert owners[("contig_1", "b_gene2")] is None
    remove(old, "A", ["pA"])
    new = Store.open(root)
    entry = new.manifest["annotations"]["a_genes"]
    assert "genome_in_file" not in entry and "genome" in pq.read_schema(root / entry["path"]).names
    assert ("pA", "a_plasmid") not in {(r["chrom"], r["name"]) for r in run_sql(
        new, "SELECT chrom, name FROM annotations").to_pylist()}
    assert verify_store(new) == []


def test_screen_names_each_hits_genome_where_contig_names_repeat(pangenome, tmp_path):
    from genoembed.cli.search import compact_hits

    _, store, hits = pangenome
    screen = compact_hits(hits, store).to_pylist()
    assert [(row["genome"], row["hit"]) for row in screen] == \
        [(row["genome"], f"{row['chrom']}:{row['start'] + 1}-{row['end']}") for row in hits.to_pylist()]
    result = runner.invoke(app, ["search", str(store.root), "--region", "chr1:1201-1500", "--query-genome", "A",
                                 "-k", "4", "--tiles", "--no-save", "--no-annotate"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "chr1:1201-1500" in line]
    shown = [{name for name in ("A", "B") if f" {name} " in line} for line in lines]
    assert len(lines) == 4 and all(len(names) == 1 for names in shown) and set().union(*shown) == {"A", "B"}
    assert " genome " in result.output
    single = tmp_path / "single"
    index(write_fasta(tmp_path / "A.fa", random_genome({"chr1": 1000}, seed=3)), single, embedder=EMBEDDER,
          tiling=TILING)
    alone = Store.open(single)
    assert "genome" not in compact_hits(search(alone, ["chr1:1-300"], k=2), alone).column_names


def test_index_append_with_annotations_gives_them_to_the_appended_genome(tmp_path):
    """`index --append B.fa -a b.bed` where every contig b.bed names is also A's: the set is B's (no question
    which genome), and A's same-named set is kept beside it."""
    a = random_genome({"chr1": 6000, "contig_1": 3000}, seed=11)
    b = {"chr1": a["chr1"][:2500], **random_genome({"contig_1": 4000}, seed=12)}
    fa, fb = write_fasta(tmp_path / "A.fa", a), write_fasta(tmp_path / "B.fa", b)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a_bed = write_bed(tmp_path / "a" / "genes.bed", A_FEATURES[:2])
    b_bed = write_bed(tmp_path / "b" / "genes.bed", B_FEATURES[:1])  # chr1 1200-1500: within A's chr1 too
    out = tmp_path / "store"
    index(fa, out, embedder=EMBEDDER, tiling=TILING, annotations=[a_bed])
    store = index(fb, out, embedder=EMBEDDER, tiling=TILING, append=True, annotations=[b_bed])
    rows = run_sql(store, "SELECT genome, name FROM annotations ORDER BY name").to_pylist()
    assert rows == [{"genome": "A", "name": "a_gene1"}, {"genome": "A", "name": "a_gene2"},
                    {"genome": "B", "name": "b_gene1"}]
