"""``changedet measure``: areas of polygons an analyst traced, and the claim check."""

from __future__ import annotations

import click

from ..pipeline import SITE_GAP_M_RANGE
from .detect import apply_verbosity, check_claim_usage, claim_options, verbosity_options
from .options import FiniteFloatRange, echo_json, handle_errors


@click.command()
@click.argument("polygons", type=click.Path(dir_okay=False))
@click.option("--pixel-size", type=FiniteFloatRange(0, 1000), default=0.5, show_default=True,
              help="Ground pixel size (m) of the imagery the outlines were traced on: "
                   "each edge is known to half of it. 0 for surveyed outlines.")
@click.option("--site-gap-m", type=FiniteFloatRange(*SITE_GAP_M_RANGE), default=30.0,
              show_default=True, help="Polygons closer than this form one site, metres.")
@claim_options
@click.option("--json", "as_json", is_flag=True,
              help="Print buildings, sites and verdicts as JSON instead of tables.")
@verbosity_options
@handle_errors
def measure(polygons: str, pixel_size: float, site_gap_m: float, claim_m2: float | None,
            claim_tolerance: float, claim_sites: int | None, claim_basis: str,
            as_json: bool, cmd_verbose: int, cmd_quiet: int) -> None:
    """Area (m²), perimeter and geodesic cross-check of the polygons in POLYGONS.

    POLYGONS is any vector file (GeoJSON, GeoPackage, Shapefile...) in any CRS;
    areas are computed in metres on a projected CRS (the file's where its scale is
    true, else each polygon's own UTM zone). With --claim-m2 the polygons are grouped
    into sites and each site is checked against the claim.
    """
    from ..aoi import read_polygons
    from ..errors import InputError
    from ..measure import check_claim, group_sites, measure_buildings, to_metric
    from ..report import format_table

    apply_verbosity(cmd_verbose, cmd_quiet)
    check_claim_usage(claim_m2, claim_sites)
    # A file of no feature (detect's outputs where nothing new was found) measures
    # as nothing, not as an error.
    vector = read_polygons(polygons, allow_empty=True)
    buildings, mcrs = [], None
    if vector.polygons:
        polygons_m, mcrs = to_metric(vector.polygons, vector.crs)
        try:
            buildings = measure_buildings(polygons_m, mcrs, pixel_size, measure_crs=mcrs)
        except ValueError as exc:
            # (a polygon that no projection can hold whole, such as the whole globe)
            raise InputError(polygons, str(exc)) from exc
    if buildings:
        _warn_of_overlaps(vector.names, [b.polygon for b in buildings])
    sites = group_sites(buildings, site_gap_m, pixel_size_m=pixel_size, crs=mcrs)
    claim = None
    if claim_m2 is not None:
        claim = check_claim(sites, claim_m2, tolerance=claim_tolerance, n_sites=claim_sites,
                            basis=claim_basis)
    if as_json:
        echo_json({
            "file": vector.path,
            "polygons": [{"name": name, **b.to_properties()}
                         for name, b in zip(vector.names, buildings)],
            "sites": [s.to_properties() for s in sites],
            "claim": None if claim is None else claim.to_dict(),
        })
        return
    rows = [(name, b) for name, b in zip(vector.names, buildings)]
    width = max([len("Polygon"), *(len(n) for n, _ in rows)])
    click.echo(f"{'Polygon':<{width}}  {'Area m²':>16}  {'Range m²':>17}  "
               f"{'Perimeter m':>11}  {'Geodesic m²':>11}  Site")
    for name, b in rows:
        half = (b.area_m2_max - b.area_m2_min) / 2
        click.echo(f"{name:<{width}}  {f'{b.area_m2:,.1f} ± {half:,.1f}':>16}  "
                   f"{f'{b.area_m2_min:,.0f} – {b.area_m2_max:,.0f}':>17}  "
                   f"{b.perimeter_m:>11,.1f}  {b.geodesic_area_m2:>11,.1f}  {b.site_id}")
    click.echo("")
    click.echo(format_table(sites, claim), nl=False)


def _warn_of_overlaps(names: list[str], polygons: list) -> None:
    """Warn of polygons that overlap (a roof traced twice): a site's built area sums
    its polygons, so an overlap counts twice in it and in the claim's verdict."""
    import shapely

    from .._log import logger

    tree = shapely.STRtree(polygons)
    pairs = tree.query(polygons, predicate="intersects")
    for i, j in zip(*pairs):
        if i < j:
            shared = polygons[i].intersection(polygons[j]).area
            if shared > 1e-6 * min(polygons[i].area, polygons[j].area):
                logger.warning("polygons %s and %s overlap by %.1f m², which counts twice in "
                               "their site's built area", names[i], names[j], shared)
