"""Shared CLI plumbing: error handling, output formats, progress bars."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
from enum import Enum
from pathlib import Path

import pyarrow as pa
import typer

from genoembed.errors import GenoembedError, InputError
from genoembed.writers import store_holding


@functools.cache
def console():
    """rich's Console on stderr, made on first use: importing rich costs tens of milliseconds, and most runs
    (TSV, JSON, Parquet output) print nothing through it."""
    from rich.console import Console

    return Console(stderr=True)


class OutputFormat(str, Enum):
    table = "table"
    tsv = "tsv"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"


def handle_errors(command):
    """Expected failures become one line on stderr and exit code 2, never a traceback; Ctrl-C becomes
    ``genoembed: interrupted`` and exit code 130 (128 + SIGINT, as shells report it), whatever typer's version
    would make of it."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("genoembed: interrupted", err=True)
            raise typer.Exit(130) from None
        except GenoembedError as error:
            typer.echo(f"genoembed: error: {error}", err=True)
            raise typer.Exit(2) from None
        except OSError as error:  # the file system said no (full disk, read-only, permissions): name the file
            where = f"{error.filename}: " if error.filename else ""
            typer.echo(f"genoembed: error: {where}{error.strerror or error}; check free space and permissions",
                       err=True)
            raise typer.Exit(2) from None

    return wrapper


def pick(value, old_value, name: str, old_name: str):
    """The value of an option given under its name or its old (hidden) spelling, not both."""
    if value is not None and old_value is not None:
        raise typer.BadParameter(f"give {name} only ({old_name} is its old spelling)")
    return value if value is not None else old_value


def refuse_inside_store(*outputs: Path | None) -> None:
    """Outputs never go inside a store, the one queried or any other (found by its manifest up the path,
    through symlinks): a file there could replace its manifest, a shard or an index."""
    for output in outputs:
        store = store_holding(output.resolve()) if output is not None else None
        if store is not None:
            raise InputError(f"--output {output}: inside the store {store}; write results outside any store "
                             "directory")


def configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="genoembed: %(message)s",
                        stream=sys.stderr, force=True)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"  # E-values, not 0.0000
    return str(value)


def emit_table(table: pa.Table, fmt: OutputFormat, output: Path | None = None, title: str | None = None,
               max_rows: int = 200) -> None:
    """Write a result table as a pretty table, TSV, JSON lines or Parquet (Parquet needs --output)."""
    if fmt is OutputFormat.table and output is None:
        print_table(table, title, max_rows)
        return
    with StreamedOutput(output, fmt) as out:
        out.table(table)


def print_table(table: pa.Table, title: str | None, max_rows: int = 200, more: int = 0) -> None:
    """A screen table of the first ``max_rows`` rows (``more`` rows not shown are counted too)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rows = table.to_pylist()
    # cells, names and titles are data: Rich would read '[red]' in them as markup ('[/x]' crashed it)
    pretty = Table(title=escape(title) if title else title, show_lines=False)
    for name in table.column_names:
        pretty.add_column(escape(name), overflow="fold")
    for row in rows[:max_rows]:
        pretty.add_row(*(escape(_cell(row[name])) for name in table.column_names))
    Console(width=max(160, Console().width)).print(pretty)
    hidden = max(0, len(rows) - max_rows) + more
    if hidden:
        typer.echo(f"... {hidden} more rows (use --format tsv or --output)")


def table_text(table: pa.Table, fmt: OutputFormat, header: bool = True) -> str:
    """TSV (with a header line when ``header``), JSON lines (``jsonl``) or one JSON array (``json``) of a table."""
    rows = table.to_pylist()
    if fmt is OutputFormat.jsonl:
        return "".join(json.dumps(row, default=str) + "\n" for row in rows)
    if fmt is OutputFormat.json:
        return json_rows(rows, first=True) + "\n]\n"
    lines = ["\t".join(table.column_names)] if header else []
    lines += ["\t".join(_cell(row[name]) for name in table.column_names) for row in rows]
    return "\n".join(lines) + "\n" if lines else ""


def json_rows(rows: list[dict], first: bool) -> str:
    """Rows as elements of a JSON array: the opening bracket when ``first``, else a separating comma."""
    if not rows:
        return "[" if first else ""
    return ("[\n" if first else ",\n") + ",\n".join(json.dumps(row, default=str) for row in rows)


class StreamedOutput:
    """Results written as they come, a chunk of queries at a time, so memory is bounded by the chunk, not the
    query count: header lines once, a file under a temporary name renamed when complete (removed on failure)."""

    def __init__(self, output: Path | None, fmt: OutputFormat = OutputFormat.tsv):
        if fmt is OutputFormat.parquet and output is None:
            raise typer.BadParameter("--format parquet needs --output FILE")
        refuse_inside_store(output)
        self.output, self.fmt, self.chunks = output, fmt, 0
        self._partial = output.with_name(f".{output.name}.partial") if output is not None else None
        self._handle = self._parquet = None
        self._json_rows = 0

    def __enter__(self) -> "StreamedOutput":
        if self._partial is not None and self.fmt is not OutputFormat.parquet:
            with _writing(self.output):
                self._handle = open(self._partial, "w")
        return self

    def text(self, text: str, header_lines: int = 0) -> None:
        """A chunk of text; from the second chunk on, its first ``header_lines`` lines are dropped."""
        if self.chunks and header_lines:
            text = "".join(text.splitlines(keepends=True)[header_lines:])
        self.chunks += 1
        if self._handle is None:
            typer.echo(text, nl=False)
            return
        with _writing(self._partial):
            self._handle.write(text)

    def table(self, table: pa.Table) -> None:
        if self.fmt is OutputFormat.parquet:
            import pyarrow.parquet as pq

            with _writing(self._partial):
                if self._parquet is None:
                    self._parquet = pq.ParquetWriter(self._partial, parquet_schema(table.schema))
                self._parquet.write_table(table.cast(self._parquet.schema))
            self.chunks += 1
            return
        if self.fmt is OutputFormat.json:  # one JSON document over every chunk: closed in __exit__
            rows = table.to_pylist()
            if rows:
                self.text(json_rows(rows, first=not self._json_rows))
                self._json_rows += len(rows)
            return
        self.text(table_text(table, self.fmt, header=not self.chunks))

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None and self.fmt is OutputFormat.json:
            self.text("\n]\n" if self._json_rows else "[]\n")
        for closable in (self._handle, self._parquet):
            if closable is not None:
                closable.close()
        if self._partial is None:
            return
        if kind is None:
            with _writing(self._partial):
                os.replace(self._partial, self.output)
        else:
            self._partial.unlink(missing_ok=True)


def parquet_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` if Parquet can hold every column, else a one-line error naming those it cannot."""
    import pyarrow.parquet as pq

    try:
        pq.ParquetWriter(pa.BufferOutputStream(), schema).close()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as error:
        kinds = ", ".join(f"{field.name} ({field.type})" for field in schema if _unwritable(field))
        raise InputError(f"--format parquet: Parquet cannot hold column(s) {kinds or str(error).splitlines()[0]}; "
                         "cast them in the query (e.g. CAST(x AS VARCHAR)) or use --format tsv/json") from None
    return schema


def _unwritable(field: pa.Field) -> bool:
    import pyarrow.parquet as pq

    try:
        pq.ParquetWriter(pa.BufferOutputStream(), pa.schema([field])).close()
        return False
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return True


def emit_text(text: str, output: Path | None = None) -> None:
    """Text to stdout, or to ``output`` (a failed write leaves no partial file)."""
    with StreamedOutput(output) as out:
        out.text(text)


def set_threads(threads: int | None) -> None:
    """Cap CPU threads of FAISS (OpenMP) and of torch (set before the model loads; the
    environment variables also bind libraries that read them when they start)."""
    if threads is None:
        return
    import os

    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)
    from genoembed.vector_index import import_faiss

    import_faiss().omp_set_num_threads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@contextlib.contextmanager
def standard_input_file(path: Path | None, suffix: str):
    """``path``, or for ``-`` a temporary file holding what stdin held (removed afterwards), so
    queries piped in are read by the same parsers, with the same checks, as files."""
    if path is None or str(path) != "-":
        yield path
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="genoembed-stdin-") as directory:
        copy = Path(directory) / f"stdin{suffix}"
        with open(copy, "wb") as sink:
            shutil.copyfileobj(sys.stdin.buffer, sink)  # streamed: stdin may be larger than memory
        try:
            yield copy
        except GenoembedError as error:  # name stdin, not the temporary copy
            raise type(error)(str(error).replace(str(copy), "<stdin>")) from None


@contextlib.contextmanager
def _writing(output: Path):
    """A failed write of an output file is a one-line error, and leaves no partial file behind."""
    try:
        yield
    except OSError as error:
        output.unlink(missing_ok=True)
        raise InputError(f"--output {output}: cannot write ({error.strerror or error}); "
                         "check the directory exists, is writable and has space") from None
