import re
import shutil

import pyarrow.parquet as pq

from genoembed.embedders.kmer import KmerEmbedder
from genoembed.build import index
from genoembed.tiles import TilingSpec
from genoembed.verify import verify_store

from conftest import PLASMID_FASTA


def fresh_store(path):
    return index(PLASMID_FASTA, path, embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=500, stride=250),
                 shard_rows=10)


def test_clean_store_verifies(tmp_path):
    assert verify_store(fresh_store(tmp_path / "s")) == []


def test_every_problem_is_reported_together(tmp_path):
    store = fresh_store(tmp_path / "s")
    other = fresh_store(tmp_path / "other")
    store.shard_paths[0].unlink()  # missing shard
    store.shard_paths[1].write_bytes(store.shard_paths[1].read_bytes()[:100])  # truncated Parquet
    shutil.copy(other.shard_paths[3], store.shard_paths[2])  # wrong ids, same provenance
    table = pq.read_table(store.shard_paths[3])
    pq.write_table(table.replace_schema_metadata({}), store.shard_paths[3])  # provenance stripped
    (store.root / "index" / "vectors.faiss").write_bytes(b"garbage")
    problems = verify_store(store)
    text = "\n".join(problems)
    assert "part-00000.parquet: missing" in text
    assert "part-00001.parquet: unreadable Parquet" in text
    assert re.search(r"part-00002.parquet: tile ids 30\.\.\d+, manifest says 20\.\.29", text)
    assert "part-00003.parquet: provenance differs" in text
    assert "index/vectors.faiss: sha256 differs" in text
    assert len(problems) >= 6
