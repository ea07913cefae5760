"""``sporeflow graph``: print or draw the wiring of an organism.

Text forms (Mermaid, DOT) need nothing; images (.svg, .png, .pdf) are drawn by
Graphviz's ``dot`` from the DOT form.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from sporeflow.config import SporeflowError, load_organism
from sporeflow.pipeline.cli.util import ORGANISM_ARG, fail, guarded
from sporeflow.pipeline.observe.graph import render_dot, render_mermaid

__all__ = ["draw_image", "graph"]

_TEXT_SUFFIXES = {".mmd": "mermaid", ".mermaid": "mermaid", ".md": "mermaid",
                  ".dot": "dot", ".gv": "dot"}
_IMAGE_SUFFIXES = {".svg": "svg", ".png": "png", ".pdf": "pdf"}


def draw_image(dot_source: str, output: Path, *, dot: str = "dot") -> None:
    """Render ``dot_source`` to ``output`` (its suffix picks the format) with Graphviz."""
    image_format = _IMAGE_SUFFIXES[output.suffix.lower()]
    executable = shutil.which(dot)
    if executable is None:
        raise SporeflowError(
            f"drawing {output} needs Graphviz's {dot!r} command, which is not on PATH; "
            f"install Graphviz (apt-get install graphviz, brew install graphviz) or write "
            f"the text form instead: --output {output.with_suffix('.dot')}")
    try:
        subprocess.run([executable, f"-T{image_format}", "-o", str(output)],
                       input=dot_source.encode(), capture_output=True, check=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        raise SporeflowError(f"Graphviz could not draw {output}: "
                             f"{exc.stderr.decode(errors='replace').strip()}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SporeflowError(f"Graphviz could not draw {output}: {exc}") from exc


@click.command()
@ORGANISM_ARG
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default=None,
              help="Text form to print or write (default: mermaid, or from --output).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to FILE: .mmd/.md (Mermaid), .dot/.gv (DOT), or .svg/.png/.pdf "
                   "(drawn with Graphviz).")
@click.pass_context
def graph(ctx: click.Context, organism: Path, fmt: str | None, output: Path | None) -> None:
    """Print the wiring of ORGANISM (default ./organism.yaml): agents, channels,
    subscriptions, emit routes and peers, as Mermaid or DOT."""
    spec = guarded(ctx, lambda: load_organism(organism, signs=False))  # names only
    suffix = output.suffix.lower() if output is not None else ""
    if output is not None and suffix in _IMAGE_SUFFIXES:
        if fmt == "mermaid":
            fail(ctx, SporeflowError(f"--output {output}: images are drawn by Graphviz from "
                                     f"the DOT form; drop --format mermaid or write a .mmd"))
        guarded(ctx, lambda: draw_image(render_dot(spec), output))
        click.echo(f"wrote {output}", err=True)
        return
    if output is not None:
        implied = _TEXT_SUFFIXES.get(suffix)
        if implied is None:
            fail(ctx, SporeflowError(
                f"--output {output}: unknown suffix {suffix!r}; use one of "
                f"{', '.join(sorted([*_TEXT_SUFFIXES, *_IMAGE_SUFFIXES]))}"))
        if fmt is not None and fmt != implied:
            fail(ctx, SporeflowError(f"--output {output} is {implied} but --format is {fmt}; "
                                     f"drop --format or change the suffix"))
        fmt = implied
    text = render_dot(spec) if fmt == "dot" else render_mermaid(spec)
    if suffix == ".md":  # a Markdown file gets a block GitHub and others draw
        text = f"```mermaid\n{text}```\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(ctx, SporeflowError(f"cannot write {output}: {exc.strerror or exc}"))
    click.echo(f"wrote {output}", err=True)
