"""How results leave `genoembed serve`: the formats an endpoint offers, chosen by ``?format=`` or the Accept
header, and result tables as JSON, JSON lines or TSV bodies weighed against the response limit.

Kept apart from :mod:`genoembed.serve` (the endpoints) so each file stays readable.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
from fastapi import Request
from fastapi.responses import Response

from genoembed.errors import InputError
from genoembed.serve_limits import Limits, TooLarge, sized

MEDIA = {"json": "application/json", "jsonl": "application/jsonl", "tsv": "text/tab-separated-values",
         "bed": "text/x-bed", "bed9": "text/x-bed", "bedgraph": "text/x-bedgraph", "bigwig": "application/octet-stream"}


def pick_format(request: Request, given: str | None, allowed: tuple[str, ...]) -> str:
    """``?format=`` wins; else the first allowed format whose media type the Accept header names; else the first."""
    if given is not None:
        if given not in allowed:
            raise InputError(f"format {given!r}: use one of {', '.join(allowed)}")
        return given
    accept = request.headers.get("accept", "")
    return next((fmt for fmt in allowed if MEDIA[fmt] in accept), allowed[0])


def clean(value):
    """JSON has no NaN: missing scores become null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def tsv_cell(value) -> str:
    """A TSV cell: empty for null/NaN, tabs and line breaks inside text become spaces (one row stays one line)."""
    value = clean(value)
    return "" if value is None else " ".join(str(value).replace("\t", " ").splitlines())


def table_response(table: pa.Table, fmt: str, extra: dict | None = None, limits: Limits = Limits(),
                   redact=None) -> Response:
    """A result table as JSON (one document: ``{"columns", "rows", ...}``), JSON lines (a row a line, as the CLI's
    ``-f jsonl``) or TSV (header row, empty cells for nulls).

    ``redact`` (a :class:`Redactor`) is applied to text cells; the body is refused past the response limit.
    """
    if table.num_rows > limits.max_rows:
        raise TooLarge(f"{table.num_rows} rows: at most {limits.max_rows} per response; add a limit or filter")
    rows = table.to_pylist()
    if redact is not None:
        rows = [{key: redact.cell(value) for key, value in row.items()} for row in rows]
    if fmt == "jsonl":
        return sized(Response("".join(json.dumps({key: clean(value) for key, value in row.items()}, default=str) + "\n"
                                      for row in rows), media_type=MEDIA["jsonl"]), limits)
    if fmt == "tsv":
        lines = ["\t".join(table.column_names)] + ["\t".join(tsv_cell(v) for v in row.values()) for row in rows]
        return sized(Response("".join(line + "\n" for line in lines), media_type=MEDIA["tsv"]), limits)
    body = {**(extra or {}), "columns": table.column_names,
            "rows": [{key: clean(value) for key, value in row.items()} for row in rows]}
    return sized(Response(json.dumps(body, default=str), media_type=MEDIA["json"]), limits)
