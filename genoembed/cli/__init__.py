"""genoembed command line: one sub-command per module, each a thin layer over the library."""

from __future__ import annotations

import os
import signal
import sys

import typer

from genoembed.cli.annotate import annotate
from genoembed.cli.compact import compact
from genoembed.cli.eval import eval_command
from genoembed.cli.explain import explain
from genoembed.cli.finetune import finetune
from genoembed.cli.index import index
from genoembed.cli.info import info
from genoembed.cli.plot import plot
from genoembed.cli.pretrain import pretrain
from genoembed.cli.remove import remove
from genoembed.cli.search import search
from genoembed.cli.serve import serve
from genoembed.cli.sql import sql
from genoembed.cli.track import track
from genoembed.cli.variants import variants
from genoembed.cli.verify import verify
from genoembed.version import VERSION

app = typer.Typer(
    name="genoembed",
    help="Embed genomes with DNA language models, search regions by similarity, join hits with annotations in SQL.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text: "pip install 'genoembed[align]'" keeps its [align]
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"genoembed {VERSION}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Embed genomes with DNA language models, search regions by similarity, join hits with annotations in SQL."""
app.command("index")(index)
app.command("search")(search)
app.command("sql")(sql)
app.command("serve")(serve)
app.command("track")(track)
app.command("annotate")(annotate)
app.command("info")(info)
app.command("verify")(verify)
app.command("remove")(remove)
app.command("compact")(compact)
app.command("eval")(eval_command)
app.command("plot")(plot)
app.command("pretrain")(pretrain)
app.command("finetune")(finetune)
app.command("variants")(variants)
app.command("explain")(explain)


def main() -> None:
    signal.signal(signal.SIGINT, _first_interrupt)
    app()


def _first_interrupt(signum, frame) -> None:
    """Ctrl-C stops the command as usual (KeyboardInterrupt); a second one, while it is already stopping, ends
    the process at once, instead of landing in an atexit handler and printing its traceback."""
    signal.signal(signal.SIGINT, _second_interrupt)
    raise KeyboardInterrupt


def _second_interrupt(signum, frame) -> None:
    sys.stderr.write("genoembed: interrupted\n")
    sys.stderr.flush()
    os._exit(130)
