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


def test_what_other_commands_refuse_is_reported(tmp_path):
    """Issue 25, finding 9: each of these passed verify while search or sql refused the store."""
    import json

    import pyarrow as pa

    from genoembed.manifest import file_sha256
    from genoembed.search import Query, search

    store = fresh_store(tmp_path / "s")
    search(store, [Query("q", "ACGT" * 100)], k=2, save_as="last")
    searches = store.root / "searches"
    (searches / "broken.json").write_text("{not json")
    (searches / "odd-name.json").write_text((searches / "last.json").read_text().replace("last", "odd-name"))
    pq.write_table(pa.table({"a": [1, 2]}), searches / "junk.parquet")
    (searches / "junk.json").write_text(json.dumps({"path": "searches/junk.parquet", "rows": 2,
                                                    "sha256": file_sha256(searches / "junk.parquet")}))
    elsewhere = shutil.move(store.root / "shards", tmp_path / "elsewhere")
    (store.root / "shards").symlink_to(elsewhere)
    text = "\n".join(verify_store(store))
    assert "saved search 'broken'" in text and "unreadable sidecar" in text
    assert "saved search 'odd-name'" in text and "not a plain identifier" in text
    assert "searches/junk.parquet: not a saved search (no column query, " in text
    assert "shards/: resolves to" in text and "outside the store" in text


def test_a_store_without_its_vector_index_fails_verify(tmp_path):
    from genoembed.search import Query, search
    from genoembed.errors import StoreError

    store = index(PLASMID_FASTA, tmp_path / "s", embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=500, stride=250),
                  index_spec=None)
    try:
        search(store, [Query("q", "ACGT" * 100)], k=2)
        refused = None
    except StoreError as error:
        refused = str(error)
    assert refused and "no vector index" in refused  # what search says ...
    (problem,) = verify_store(store)
    assert problem.startswith("index: the store has no vector index, so searches refuse")  # ... verify says too


def test_unfinished_genome_advice_is_a_command_that_works(tmp_path):
    import json

    from genoembed.manifest import MANIFEST
    from genoembed.store import Store

    store = fresh_store(tmp_path / "s")
    manifest = json.loads((store.root / MANIFEST).read_text())
    manifest["genomes"]["NC_005816"]["status"] = "embedding"
    (store.root / MANIFEST).write_text(json.dumps(manifest))
    problems = verify_store(Store.open(store.root, require_complete=False))
    (advice,) = [p for p in problems if "build unfinished" in p]
    assert "rerun the `genoembed index` that was building it (--fasta" in advice
    assert "`genoembed remove` refuses a half-built store" in advice
