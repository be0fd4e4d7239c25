"""Training data of the issue-27 homolog encoder, built from Debian packages into a run directory.

    python -m genoembed.train.homolog_data --output runs/data      # ~10-20 CPU-minutes, resumable step by step

Each step writes one file and is skipped when that file exists, so an interrupted build resumes:

- ``proteins.fa``: UniProt proteins with GO annotations (Debian ``metastudent-data``, the MFO BLAST
  database, 459,503 sequences of all kingdoms; GPL-2+ packaging of UniProtKB, CC BY 4.0), read with
  ``blastdbcmd -entry all`` (ncbi-blast+), 100-1000 residues, the 20 standard amino acids only;
- ``clusters.tsv``: families by ``mmseqs easy-linclust`` (Debian ``mmseqs2``) at >= 30 % identity over
  >= 60 % of both proteins;
- ``families.parquet``: (protein a, protein b, identity) pairs inside a family, up to a few per family,
  identity from a parasail BLOSUM62 11/1 local alignment, kept between 25 % and 90 %;
- ``orthologs_*.parquet``: the real cross-genus gene pairs of two training genomes (pyrodigal genes, best
  ``mmseqs easy-search`` hit with the thresholds of ``genoembed eval --truth protein``), searched once;
- ``genomes/``: Klebsiella genomes (Debian ``kleborate-examples``: HS11286, Kp1084, MGH78578, NTUH-K2044)
  decompressed, as genomic context and codon usage (GC 57 %) beside E. coli (51 %) and H. pylori (39 %).

The evaluation pairs (E. coli 536, H. pylori SJM180) and the validation pair (H. pylori Gambia94_24,
E. coli DH1) are never read here. UniProt holds proteins of other E. coli and H. pylori strains; the
held-out *genomes* stay out, not their protein families (as with the real ortholog pairs).
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed.errors import InputError
from genoembed.eval.protein import call_genes, read_records
from genoembed.train.protein import OrthologPair

UNIPROT_DB = Path("/usr/share/metastudent-data/dataset_201401/MFO/goasp.fasta")
KLEBSIELLA = Path("/usr/share/doc/kleborate/examples/data")
STANDARD = frozenset("ACDEFGHIKLMNPQRSTVWY")
FAMILIES = pa.schema([("a", pa.string()), ("b", pa.string()), ("identity", pa.float64())])
ORTHOLOGS = pa.schema([("query_dna", pa.string()), ("target_contig", pa.string()), ("target_start", pa.int64()),
                       ("target_end", pa.int64()), ("identity", pa.float64())])


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise InputError(f"{name} not found: apt-get install ncbi-blast+ mmseqs2 (homolog training data)")
    return found


def extract_proteins(database: Path, output: Path, min_length: int = 100, max_length: int = 1000) -> int:
    """Write the database's proteins of a usable length and alphabet as FASTA; returns how many."""
    if not Path(f"{database}.pin").is_file():
        raise InputError(f"{database}: BLAST protein database not found; apt-get install metastudent-data")
    partial = output.with_suffix(".partial")
    count = 0
    with subprocess.Popen([_tool("blastdbcmd"), "-db", str(database), "-entry", "all", "-outfmt", "%t\t%s"],
                          stdout=subprocess.PIPE, text=True) as process, partial.open("w") as out:
        for line in process.stdout:
            title, _, sequence = line.rstrip("\n").partition("\t")
            if min_length <= len(sequence) <= max_length and set(sequence) <= STANDARD:
                out.write(f">{title.split('|')[0]}\n{sequence}\n")
                count += 1
    if process.returncode:
        raise InputError(f"blastdbcmd failed on {database} (exit {process.returncode})")
    partial.rename(output)
    return count


def cluster(proteins: Path, output: Path, min_identity: float = 0.3, coverage: float = 0.6, threads: int = 1) -> None:
    """``mmseqs easy-linclust`` families: ``output`` holds (representative, member) per line."""
    work = output.parent / "mmseqs"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([_tool("mmseqs"), "easy-linclust", str(proteins), str(work / "families"), str(work / "tmp"),
                    "--min-seq-id", str(min_identity), "-c", str(coverage), "--threads", str(threads), "-v", "1"],
                   check=True)
    (work / "families_cluster.tsv").rename(output)


def protein_identity(a: str, b: str) -> float:
    """Matches / alignment columns of the best BLOSUM62 11/1 local alignment (parasail)."""
    import parasail

    result = parasail.sw_stats_striped_16(a, b, 12, 1, parasail.blosum62)
    return result.matches / max(result.length, 1)


def family_pairs(proteins: Path, clusters: Path, output: Path, per_family: int = 3, low: float = 0.25,
                 high: float = 0.9, seed: int = 0) -> int:
    """Pairs of members of one family (the representative and up to ``per_family`` others), by identity."""
    sequences = dict(read_records(proteins))
    members: dict[str, list[str]] = {}
    for line in clusters.read_text().splitlines():
        representative, member = line.split("\t")
        if member != representative:
            members.setdefault(representative, []).append(member)
    rng = np.random.default_rng(seed)
    rows = {"a": [], "b": [], "identity": []}
    for representative, others in members.items():
        for member in rng.permutation(others)[:per_family]:
            identity = protein_identity(sequences[representative], sequences[member])
            if low <= identity <= high:
                rows["a"].append(sequences[representative])
                rows["b"].append(sequences[member])
                rows["identity"].append(identity)
    pq.write_table(pa.table(rows, schema=FAMILIES), output)
    return len(rows["a"])


def klebsiella_genomes(directory: Path) -> list[Path]:
    """The kleborate-examples genomes, decompressed into ``directory`` (once)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for packed in sorted(KLEBSIELLA.glob("*.fna.xz")):
        target = directory / packed.name[:-3]
        if not target.is_file():
            partial = target.with_suffix(".partial")
            with lzma.open(packed) as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            partial.rename(target)
        out.append(target)
    return out


def mmseqs_orthologs(query: str, target: str, work: Path, max_evalue: float = 1e-5, min_coverage: float = 0.5,
                     threads: int = 1) -> list[OrthologPair]:
    """Every query gene (>= 300 bp) whose best ``mmseqs easy-search`` hit among the target's genes passes
    E <= ``max_evalue`` and query coverage >= ``min_coverage`` (the thresholds of ``genoembed eval --truth
    protein``; mmseqs instead of pyopal here because it aligns a genome pair in seconds, not minutes)."""
    query_genes = [g for g in call_genes(read_records(query)) if len(g.dna) >= 300]
    target_records = dict(read_records(target))
    target_genes = call_genes(list(target_records.items()))
    work.mkdir(parents=True, exist_ok=True)
    for name, genes in (("query", query_genes), ("target", target_genes)):
        (work / f"{name}.fa").write_text("".join(f">{i}\n{g.protein}\n" for i, g in enumerate(genes)))
    subprocess.run([_tool("mmseqs"), "easy-search", str(work / "query.fa"), str(work / "target.fa"),
                    str(work / "hits.m8"), str(work / "tmp"), "-s", "5.7", "-e", str(max_evalue), "--threads",
                    str(threads), "--format-output", "query,target,pident,qcov,evalue,bits", "-v", "1"], check=True)
    best: dict[int, tuple[float, int, float, float]] = {}
    for line in (work / "hits.m8").read_text().splitlines():
        q, t, identity, coverage, _, bits = line.split("\t")
        if float(bits) > best.get(int(q), (-1.0,))[0]:
            best[int(q)] = (float(bits), int(t), float(identity), float(coverage))
    shutil.rmtree(work)
    pairs = []
    for q, (_, t, identity, coverage) in sorted(best.items()):
        if coverage >= min_coverage:
            gene = target_genes[t]
            pairs.append(OrthologPair(query_genes[q].dna, target_records[gene.contig], gene.start, gene.end,
                                      identity))
    return pairs


def cached_orthologs(query: str, target: str, directory: Path, say=print) -> list[OrthologPair]:
    """:func:`mmseqs_orthologs` of a training genome pair, searched once and kept as Parquet in ``directory``."""
    stem = f"{Path(query).name.split('.')[0]}_{Path(target).name.split('.')[0]}"
    path = directory / f"orthologs_{stem}.parquet"
    records = dict(read_records(target))
    if not path.is_file():
        pairs = mmseqs_orthologs(query, target, directory / f"search_{stem}")
        say(f"{len(pairs)} ortholog pairs {stem}")
        contig_of = {sequence: name for name, sequence in records.items()}
        pq.write_table(pa.table({"query_dna": [p.query_dna for p in pairs],
                                 "target_contig": [contig_of[p.target_sequence] for p in pairs],
                                 "target_start": [p.target_start for p in pairs],
                                 "target_end": [p.target_end for p in pairs],
                                 "identity": [p.identity for p in pairs]}, schema=ORTHOLOGS), path)
    return [OrthologPair(row["query_dna"], records[row["target_contig"]], row["target_start"], row["target_end"],
                         row["identity"]) for row in pq.read_table(path).to_pylist()]


@dataclass(frozen=True)
class FamilyPairs:
    """Protein pairs of one family (strings) and their identities."""

    a: list[str]
    b: list[str]
    identity: np.ndarray

    @classmethod
    def read(cls, path: Path) -> "FamilyPairs":
        table = pq.read_table(path)
        return cls(table.column("a").to_pylist(), table.column("b").to_pylist(), table.column("identity").to_numpy())


def build(output: Path, threads: int = 1, say=print) -> dict[str, Path]:
    """Every step of the module docstring into ``output``; returns the files."""
    output.mkdir(parents=True, exist_ok=True)
    files = {"proteins": output / "proteins.fa", "clusters": output / "clusters.tsv",
             "families": output / "families.parquet"}
    if not files["proteins"].is_file():
        say(f"{extract_proteins(UNIPROT_DB, files['proteins'])} proteins -> {files['proteins']}")
    if not files["clusters"].is_file():
        cluster(files["proteins"], files["clusters"], threads=threads)
        say(f"families -> {files['clusters']}")
    if not files["families"].is_file():
        say(f"{family_pairs(files['proteins'], files['clusters'], files['families'])} family pairs")
    say(f"{len(klebsiella_genomes(output / 'genomes'))} Klebsiella genomes -> {output / 'genomes'}")
    return files


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the homolog encoder's training data (issue 27).")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    build(args.output, args.threads)


if __name__ == "__main__":
    main()
