"""``changedet demo``: the whole analysis on the committed fixture, with a claim."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .detect import apply_verbosity, progress_bar, verbosity_options
from .options import FolderPath, handle_errors

#: The fixture's claim: "three new residences of about 13,000 m² each".
DEMO_CLAIM_M2 = 13000.0
DEMO_CLAIM_SITES = 3


def fixture_pair() -> tuple[Path, Path]:
    """The demo scenes: the committed fixture ``fixtures/compound``.

    Found beside the package in a source checkout (or an editable install), and
    inside it, as ``changedet/fixtures``, in an installed one. Regenerating the scene
    instead would not do: the generator has moved on since the fixture was made, and
    its scene of the same seed is another one, with other verdicts.
    """
    package = Path(__file__).resolve().parents[1]
    for root in (package.parent / "fixtures", package / "fixtures"):
        folder = root / "compound"
        if (folder / "before.tif").exists() and (folder / "after.tif").exists():
            return folder / "before.tif", folder / "after.tif"
    raise InputError(package / "fixtures" / "compound",
                     "the demo fixture is missing from this installation; reinstall changedet")


@click.command()
@click.option("-o", "--output", "outdir", type=FolderPath(), default=None,
              help="Write the outputs into this folder (default: none are written; "
                   "only the verdict table is printed).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUTDIR.")
@verbosity_options
@handle_errors
def demo(outdir: str | None, overwrite: bool, cmd_verbose: int, cmd_quiet: int) -> None:
    """Check the claim "3 sites of 13,000 m²" on the synthetic compound fixture."""
    from ..outputs import check_outdir, write_outputs
    from ..pipeline import DetectOptions, run_detection
    from ..report import format_table

    verbosity = apply_verbosity(cmd_verbose, cmd_quiet)
    if outdir is not None:
        check_outdir(outdir, overwrite)
    before, after = fixture_pair()
    if verbosity >= 0:
        click.echo(f"changedet: demo on {before.parent}", err=True)
    options = DetectOptions(claim_m2=DEMO_CLAIM_M2, claim_sites=DEMO_CLAIM_SITES)
    with progress_bar(verbosity) as progress:
        result = run_detection(before, after, options, progress=progress)
    if outdir is not None:
        write_outputs(result, outdir, overwrite=overwrite)
        if verbosity >= 0:
            click.echo(f"changedet: wrote {outdir} (open report.html)", err=True)
    elif verbosity >= 0:
        click.echo("changedet: no outputs written; `changedet demo -o DIR` writes the "
                   "report and the layers for QGIS", err=True)
    click.echo(format_table(result.sites, result.claim), nl=False)
