"""The human-readable results: the verdict table (text) and ``report.html``.

The HTML report is one self-contained file an analyst can attach to an article draft:
images are embedded as PNG data URIs, building outlines and numbers are inline SVG
drawn over them (crisp at any zoom), styles are inline, and there is no script, web
font or any other request. Every string that comes from input (file names, metadata,
attributes) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from affine import Affine
from PIL import Image

from . import __version__
from ._log import percent_text
from .measure import site_of_buildings
from .raster import Grid

if TYPE_CHECKING:
    from .pipeline import DetectionResult

#: Longest side, in pixels, of the images embedded in the report.
REPORT_IMAGE_SIZE = 900

VERDICT_COLOURS = {
    "consistent": "#1a7f37",
    "smaller than claimed": "#9a6700",
    "larger than claimed": "#b3261e",
    "not found": "#57606a",
}


# ---------------------------------------------------------------------------
# The verdict table, shared by stdout, summary.json and the report


@dataclass
class VerdictRow:
    """One line of the verdict table.

    Attributes
    ----------
    site : str
        Site label (``"1"``; ``"-"`` for a claimed site that was not found).
    n_buildings : int or None
    area_m2, area_m2_min, area_m2_max : float or None
        Measured area on the claim's basis (built footprint or envelope).
    verdict : str or None
        ``None`` when no claim was given.
    """

    site: str
    n_buildings: int | None
    area_m2: float | None
    area_m2_min: float | None
    area_m2_max: float | None
    verdict: str | None


def _site_area(site: Any, basis: str) -> tuple[float, float, float]:
    prefix = "envelope_area_m2" if basis == "envelope" else "built_area_m2"
    return (float(getattr(site, prefix)), float(getattr(site, f"{prefix}_min")),
            float(getattr(site, f"{prefix}_max")))


def verdict_rows(sites: Sequence[Any], claim: Any | None = None) -> list[VerdictRow]:
    """The rows of the verdict table: one per site, plus the claimed sites not found.

    Parameters
    ----------
    sites : sequence of changedet.measure.Site
    claim : changedet.measure.ClaimCheck, optional
        Gives the basis (footprint or envelope), each site's verdict (its own
        record, not the sites' ``verdict``, which a later ``check_claim`` rewrites)
        and the ``not found`` rows.
    """
    basis = getattr(claim, "basis", "footprint") if claim is not None else "footprint"
    verdicts = claim.site_verdicts() if claim is not None else {}
    rows = []
    for site in sites:
        area, lo, hi = _site_area(site, basis)
        rows.append(VerdictRow(str(site.site_id), int(site.n_buildings), area, lo, hi,
                               verdicts.get(site.site_id)))
    if claim is not None:
        missing = sum(1 for v in claim.verdicts if v["site_id"] is None)
        rows += [VerdictRow("-", None, None, None, None, "not found")] * missing
    return rows


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _pm(row: VerdictRow) -> str:
    if row.area_m2 is None or row.area_m2_min is None or row.area_m2_max is None:
        return "-"
    half = (row.area_m2_max - row.area_m2_min) / 2
    return f"{row.area_m2:,.0f} ± {half:,.0f}"


def claim_sentence(claim: Any) -> str:
    """``"3 sites of 13,000 m² each (±10 %, built footprint)"``."""
    n = claim.n_sites
    what = (f"{n} site{'s' if n != 1 else ''} of" if n else "sites of")
    each = "" if n == 1 else " each"
    basis = "site envelope" if claim.basis == "envelope" else "built footprint"
    return (f"{what} {claim.claim_m2:,.0f} m²{each} (tolerance ±{claim.tolerance * 100:.0f} %, "
            f"{basis} area)")


def overall_verdict(rows: Sequence[VerdictRow]) -> tuple[str, str]:
    """A one-line conclusion and its colour key from the verdict rows."""
    verdicts = [r.verdict for r in rows if r.verdict is not None]  # sites the claim is about
    if verdicts and all(v == "consistent" for v in verdicts):
        return ("Consistent with the claim: the site matches" if len(verdicts) == 1
                else f"Consistent with the claim: all {len(verdicts)} sites match",
                "consistent")
    counts = {v: verdicts.count(v) for v in VERDICT_COLOURS if verdicts.count(v)}
    detail = ", ".join(f"{n} {v}" for v, n in counts.items()) or "no site found"
    worst = "not found" if not verdicts else next(
        v for v in ("larger than claimed", "smaller than claimed", "not found", "consistent")
        if v in counts)
    return f"Not consistent with the claim: {detail}", worst


def format_table(sites: Sequence[Any], claim: Any | None = None) -> str:
    """The verdict table as plain text for a terminal (stdout of the CLI).

    Parameters
    ----------
    sites : sequence of changedet.measure.Site
    claim : changedet.measure.ClaimCheck, optional

    Returns
    -------
    str
        Lines ending in newline: the claim, one row per site (area ± half the
        min-max range, the range, the verdict), and the overall conclusion.
    """
    rows = verdict_rows(sites, claim)
    basis = getattr(claim, "basis", "footprint") if claim is not None else "footprint"
    area_head = "Envelope m²" if basis == "envelope" else "Built area m²"
    header = ["Site", "Buildings", area_head, "Range m²"] + (["Verdict"] if claim else [])
    body = []
    for r in rows:
        cells = [r.site, "-" if r.n_buildings is None else str(r.n_buildings), _pm(r),
                 "-" if r.area_m2_min is None else f"{_num(r.area_m2_min)} – {_num(r.area_m2_max)}"]
        if claim is not None:
            cells.append(r.verdict or "(not claimed)")
        body.append(cells)
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    right = {1, 2, 3}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = []
    if claim is not None:
        out.append(f"Claim: {claim_sentence(claim)}")
    out.append(line(header))
    out.append("  ".join("-" * w for w in widths))
    out += [line(cells) for cells in body]
    if not rows:
        out.append("(no new building found)")
    if claim is not None:
        out.append(overall_verdict(rows)[0])
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Images


def png_data_uri(rgb: np.ndarray, max_size: int = REPORT_IMAGE_SIZE) -> tuple[str, int, int]:
    """Encode an image as a PNG ``data:`` URI, shrunk to fit ``max_size``.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    max_size : int
        Longest side of the embedded image, in pixels.

    Returns
    -------
    uri : str
    width, height : int
        Size of the encoded PNG.
    """
    image = Image.fromarray(np.ascontiguousarray(rgb))
    scale = min(1.0, max_size / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    # 256 colours are plenty for a quicklook and make the page 3-5 times lighter
    # (imagery texture barely compresses in true colour).
    image = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                           dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return ("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
            image.width, image.height)


def overlay_image(after: np.ndarray, change: np.ndarray) -> np.ndarray:
    """The after image, dimmed, with new-building pixels in red and no-data hatched grey.

    Parameters
    ----------
    after : (H, W, 3) ndarray of uint8
    change : (H, W) ndarray of uint8
        0, 1 or 255 (see ``change.tif``).

    Returns
    -------
    (H, W, 3) ndarray of uint8
    """
    grey = after.astype(np.float32).mean(axis=2, keepdims=True)
    out = np.repeat(0.35 * grey + 120, 3, axis=2)
    new = change == 1
    out[new] = 0.25 * out[new] + 0.75 * np.array([220, 30, 40], dtype=np.float32)
    out[change == 255] = (90, 90, 90)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _display_flips(grid: Grid) -> tuple[bool, bool]:
    """(rows, columns) to flip so that a grid's image is shown north up, east right.

    A south-up grid (rows running north) or one whose columns run west is shown
    flipped; a rotated grid is shown as its rows and columns run.
    """
    t = grid.transform
    # (Rotation terms within rounding of zero, as an affine fitted to GCPs has them,
    # are no rotation.)
    if abs(t.b) > 1e-9 * abs(t.a) or abs(t.d) > 1e-9 * abs(t.e):
        return False, False
    return t.e > 0, t.a < 0


def _to_display(grid: Grid) -> Affine:
    """Map coordinates of ``grid``'s CRS to pixels of its image as displayed."""
    flip_rows, flip_cols = _display_flips(grid)
    flip = Affine(-1.0 if flip_cols else 1.0, 0.0, grid.width if flip_cols else 0.0,
                  0.0, -1.0 if flip_rows else 1.0, grid.height if flip_rows else 0.0)
    return flip @ ~grid.transform


def display_image(image: np.ndarray, grid: Grid) -> np.ndarray:
    """``image`` ((H, W, ...) on ``grid``) flipped as :func:`_display_flips` says."""
    flip_rows, flip_cols = _display_flips(grid)
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return image


def _svg_path(geom: shapely.Geometry, grid: Grid) -> str:
    """SVG path data of a polygon in pixel coordinates of ``grid``'s displayed image."""
    inverse = _to_display(grid)
    pixel = shapely.transform(geom, lambda xy: np.column_stack(
        [inverse.a * xy[:, 0] + inverse.b * xy[:, 1] + inverse.c,
         inverse.d * xy[:, 0] + inverse.e * xy[:, 1] + inverse.f]))
    parts = []
    polygons = pixel.geoms if hasattr(pixel, "geoms") else [pixel]
    for poly in polygons:
        for ring in [poly.exterior, *poly.interiors]:
            coords = np.asarray(ring.coords)[:-1]
            parts.append("M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in coords) + " Z")
    return " ".join(parts)


def _svg_point(geom: shapely.Geometry, grid: Grid) -> tuple[float, float]:
    point = shapely.point_on_surface(geom)
    col, row = _to_display(grid) @ (point.x, point.y)
    return col, row


def _overlay_svg(result: DetectionResult) -> str:
    """The outlines, numbers and site envelopes, as an SVG group ``id="outlines"``.

    Drawn once and shown over each image with ``<use href="#outlines">``.
    """
    grid = result.grid
    buildings = [b.polygon for b in result.buildings]
    envelopes = [s.envelope for s in result.sites]
    if result.crs != grid.crs:  # measured in the local UTM zone: draw on the grid
        from .measure import reproject_geoms

        buildings = reproject_geoms(buildings, result.crs, grid.crs)
        envelopes = reproject_geoms(envelopes, result.crs, grid.crs)
    w, h = grid.width, grid.height
    font = max(w, h) / 30  # about 12 px on screen in a third of the page
    verdicts = result.claim.site_verdicts() if result.claim is not None else {}
    colour = {s.site_id: VERDICT_COLOURS.get(verdicts.get(s.site_id) or "", "#ffd33d")
              for s in result.sites}
    items = ['<g id="outlines">']
    for site, envelope in zip(result.sites, envelopes):
        items.append(f'<path d="{_svg_path(envelope, grid)}" class="site" '
                     f'stroke="{colour[site.site_id]}"/>')
        # The envelope's top left corner as displayed.
        corners = [_to_display(grid) @ tuple(xy) for xy in shapely.get_coordinates(envelope)]
        col, row = min(c for c, _ in corners), min(r for _, r in corners)
        items.append(f'<text x="{col:.1f}" y="{max(row - font * 0.3, font):.1f}" '
                     f'font-size="{font:.1f}" class="lbl site-lbl">S{int(site.site_id)}</text>')
    for b, polygon in zip(result.buildings, buildings):
        items.append(f'<path d="{_svg_path(polygon, grid)}" class="bld"/>')
        col, row = _svg_point(polygon, grid)
        items.append(f'<text x="{col:.1f}" y="{row:.1f}" font-size="{font * 0.8:.1f}" '
                     f'class="lbl" text-anchor="middle" dominant-baseline="central">'
                     f'{int(b.id)}</text>')
    items.append("</g>")
    return "".join(items)


# ---------------------------------------------------------------------------
# The page

_CSS = """
:root{--ink:#1f2328;--muted:#57606a;--line:#d0d7de;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:var(--ink);background:#fff}
main{max-width:1320px;margin:0 auto;padding:28px 32px 40px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:17px;margin:30px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
.sub{color:var(--muted);margin:0 0 18px}
.verdict{border-left:6px solid var(--c);background:var(--bg);padding:14px 18px;border-radius:4px;margin:8px 0 6px}
.verdict .head{font-size:19px;font-weight:600;color:var(--c)}
.verdict .claim{color:var(--muted);margin-top:2px}
.figs{display:grid;grid-template-columns:repeat(3,1fr);gap:14px}
figure{margin:0}
.frame{position:relative;border:1px solid var(--line);line-height:0;background:#222}
.frame img{width:100%;height:auto;display:block;image-rendering:auto}
.ov{position:absolute;left:0;top:0;width:100%;height:100%;overflow:visible}
.bld{fill:none;stroke:#ffd33d;stroke-width:2;vector-effect:non-scaling-stroke}
.site{fill:none;stroke-width:1.5;stroke-dasharray:6 4;vector-effect:non-scaling-stroke}
.lbl{fill:#fff;stroke:#000;stroke-width:3px;paint-order:stroke;font-weight:700;font-family:inherit}
.site-lbl{fill:#ffd33d}
figcaption{font-size:12.5px;color:var(--muted);margin-top:6px;line-height:1.35}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--bg);font-weight:600;font-size:12.5px;color:var(--muted)}
td.n,th.n{text-align:right}
.pill{display:inline-block;padding:1px 9px;border-radius:10px;color:#fff;font-size:12.5px;font-weight:600;white-space:nowrap}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:24px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:var(--muted)}dd{margin:0;word-break:break-all}
.warn{color:#9a6700;font-weight:600}
.warnings{border-left:4px solid #9a6700;padding:2px 12px;margin:12px 0}
.note{color:var(--muted);font-size:12.5px}
footer{margin-top:32px;color:var(--muted);font-size:12px}
@media print{main{padding:0}.figs{gap:8px}h2{break-after:avoid}table{break-inside:auto}}
@media (max-width:900px){.figs,.grid2{grid-template-columns:1fr}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pill(verdict: str | None) -> str:
    if not verdict:
        return "-"
    colour = VERDICT_COLOURS.get(verdict, "#57606a")
    return f'<span class="pill" style="background:{colour}">{_e(verdict)}</span>'


def _table(header: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells are already-escaped HTML, ``header`` is (label, numeric)."""
    head = "".join(f'<th class="n">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>"
                   for h, num in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if num else f"<td>{c}</td>"
                                    for c, (_, num) in zip(row, header)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _dl(items: Sequence[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            # (A geographic scene's pixel in degrees: three decimals made it "0".)
            return f"{value:.3g}"
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return "-" if value is None else str(value)


def render_report(result: DetectionResult) -> str:
    """``report.html`` of a detection: one self-contained page.

    Parameters
    ----------
    result : changedet.pipeline.DetectionResult

    Returns
    -------
    str
        The HTML text: the verdict, before/after/overlay images with every building
        outlined and numbered, the site and building tables with areas and
        uncertainty, the co-registration quality, inputs, parameters and timings.
    """
    summary = result.summary
    inputs = summary.get("inputs", {})
    name = {k: (inputs.get(k) or {}).get("path", "?") for k in ("before", "after")}
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width,initial-scale=1">',
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
             'img-src data:; style-src \'unsafe-inline\'">',
             f"<title>New construction: {_e(name['before'])} → {_e(name['after'])}</title>",
             f"<style>{_CSS}</style></head><body><main>",
             "<h1>New construction between two scenes</h1>",
             f'<p class="sub">Before <b>{_e(name["before"])}</b> · after '
             f'<b>{_e(name["after"])}</b> · analysis CRS {_e(summary.get("analysis_crs", ""))}'
             f' · pixel {_e(" × ".join(_fmt(v) for v in summary.get("pixel_size_m") or []))} m'
             '</p>']

    rows = verdict_rows(result.sites, result.claim)
    totals = summary.get("totals", {})
    if result.claim is not None:
        head, key = overall_verdict(rows)
        parts.append(f'<div class="verdict" style="--c:{VERDICT_COLOURS[key]}">'
                     f'<div class="head">{_e(head)}</div>'
                     f'<div class="claim">Claim checked: {_e(claim_sentence(result.claim))}. '
                     f'A site is consistent when its measured interval [min, max] overlaps '
                     f'the claimed interval.</div></div>')
    else:
        parts.append(f'<div class="verdict" style="--c:#0969da"><div class="head">'
                     f'{len(result.buildings)} new building(s) in {len(result.sites)} site(s), '
                     f'{_e(_num(totals.get("built_area_m2")))} m² built</div>'
                     f'<div class="claim">No claim was given (use --claim-m2).</div></div>')

    warned = summary.get("warnings") or []
    if warned:
        # Beside the verdict: a site "not found" beyond the after scene's cover is no
        # evidence against the claim, and a -q run printed none of these.
        parts.append('<div class="warnings"><p class="warn">The run warned:</p><ul>'
                     + "".join(f"<li>{_e(w)}</li>" for w in warned) + "</ul></div>")

    looks = [result.quicklooks["before"], result.quicklooks["after"],
             overlay_image(result.quicklooks["after"],
                           result.quicklooks.get("change", result.change_mask))]
    images = [png_data_uri(display_image(look, result.grid)) for look in looks]
    svg_open = (f'<svg class="ov" viewBox="0 0 {result.grid.width} {result.grid.height}" '
                f'preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg" '
                f'aria-hidden="true">')
    svgs = [f"{svg_open}<defs>{_overlay_svg(result)}</defs><use href=\"#outlines\"/></svg>"]
    svgs += [f'{svg_open}<use href="#outlines"/></svg>'] * 2
    parts.append('<h2>Imagery</h2><div class="figs">')
    for (uri, width, height), svg, (title, caption) in zip(images, svgs, (
            ("Before", f"{name['before']}, on the analysis grid."),
            ("After", f"{name['after']}, co-registered and colour-normalised."),
            ("Detected change",
             "New-building pixels in red over the after image; grey: no data or outside the AOI.")),
            strict=True):
        parts.append(f'<figure><div class="frame"><img src="{uri}" width="{width}" height="{height}" '
                     f'alt="{_e(title)}">{svg}</div>'
                     f"<figcaption><b>{_e(title)}.</b> {_e(caption)} Yellow: new buildings, "
                     f"numbered; dashed: site envelopes.</figcaption></figure>")
    parts.append("</div>")

    basis = getattr(result.claim, "basis", "footprint")
    parts.append("<h2>Sites</h2>")
    site_rows = []
    for r, site in zip(rows, list(result.sites) + [None] * len(rows)):
        env = "-" if site is None else _num(float(site.envelope_area_m2))
        built = "-" if site is None else (
            f"{float(site.built_area_m2):,.0f} ± "
            f"{(float(site.built_area_m2_max) - float(site.built_area_m2_min)) / 2:,.0f}")
        site_rows.append([_e(r.site), _e("-" if r.n_buildings is None else r.n_buildings),
                          _e(built),
                          _e("-" if r.area_m2_min is None else
                             f"{_num(r.area_m2_min)} – {_num(r.area_m2_max)}"),
                          _e(env)] + ([_pill(r.verdict)] if result.claim is not None else []))
    range_head = "Envelope range (m²)" if basis == "envelope" else "Built range (m²)"
    header = [("Site", False), ("Buildings", True), ("Built area (m²)", True),
              (range_head, True), ("Envelope (m²)", True)]
    if result.claim is not None:
        header.append(("Verdict", False))
    parts.append(_table(header, site_rows) if site_rows else
                 '<p class="note">No new building was found.</p>')
    parts.append(f'<p class="note">Total: {totals.get("n_buildings", 0)} building(s), '
                 f'{_e(_num(totals.get("built_area_m2")))} m² built (range '
                 f'{_e(_num(totals.get("built_area_m2_min")))} – '
                 f'{_e(_num(totals.get("built_area_m2_max")))} m²). Ranges bound each '
                 f'outline by half a pixel inward and outward, widened by any '
                 f'co-registration residual.</p>')

    parts.append("<h2>Buildings</h2>")
    site_of = site_of_buildings(result.sites)
    b_rows = [[_e(int(b.id)), _e(site_of.get(b.id, "-")),
               _e(f"{float(b.area_m2):,.0f} ± {(float(b.area_m2_max) - float(b.area_m2_min)) / 2:,.0f}"),
               _e(f"{float(b.area_m2_min):,.0f} – {float(b.area_m2_max):,.0f}"),
               _e(f"{float(b.perimeter_m):,.1f}"), _e(f"{float(b.geodesic_area_m2):,.0f}"),
               _e("-" if b.score is None else f"{float(b.score):.2f}"),
               _e("partial" if b.partial else "whole")]
              for b in result.buildings]
    if b_rows:
        parts.append(_table([("No.", False), ("Site", False), ("Area (m²)", True),
                             ("Range (m²)", True), ("Perimeter (m)", True),
                             ("Geodesic area (m²)", True), ("Score", True),
                             ("Outline", False)], b_rows))
        n_partial = sum(b.partial for b in result.buildings)
        if n_partial:
            parts.append(f'<p class="note">{n_partial} outline(s) marked partial reach the '
                         f'edge of the imagery (or were cut by a processing window): the '
                         f'building may go on beyond it, and its area covers only what '
                         f'was seen.</p>')
    else:
        parts.append('<p class="note">None.</p>')
    standing = summary.get("standing_before") or []
    if standing:
        # Left out, not hidden: the analyst decides whether a rebuild hides among them.
        where = "; ".join(f"{float(s['area_m2']):,.0f} m² at {float(s['lat']):.6f}, "
                          f"{float(s['lon']):.6f}" for s in standing)
        parts.append(f'<p class="note">Left out: {len(standing)} changed area(s) in the '
                     f'shape of a building whose outline or roof was already there in the '
                     f'before image (a demolished building\'s remains, a re-covered roof, or '
                     f'a rebuild on the old footprint): {_e(where)} (lat, lon).</p>')

    reg = result.registration or {}
    reg_items = [("Method", reg.get("method")),
                 ("Shift (px) [dx, dy]", _fmt(reg.get("shift_px"))),
                 ("Shift (m) [east, north]", _fmt(reg.get("shift_m"))),
                 ("Reliability (0–1)", _fmt(reg.get("reliability"))),
                 ("Windows used", reg.get("n_windows")),
                 ("Residual RMS (px)", _fmt(reg.get("residual_rms_px"))),
                 ("Misregistration in the areas' ranges (px)",
                  _fmt(reg.get("misregistration_px")) if reg.get("misregistration_px")
                  is not None else "not measurable: the dates share no structure")]
    check = reg.get("alignment")
    if check:
        reg_items.append(("Check of the unreliable estimate: the dates' structure agrees "
                          "best at [dx, dy] (px)",
                          f"[{_fmt(check.get('shift_px'))}] ± {_fmt(check.get('precision_px'))}"
                          f", {_fmt(check.get('z'))} standard deviations above the other "
                          f"offsets within {check.get('search_px')} px (chance: "
                          f"{_fmt(check.get('z_needed'))})"
                          + ("" if check.get("measured") else ": no more than chance")))
    warn = ('<p class="warn">Co-registration reliability is low: outlines may be offset; '
            'check the images before publishing.</p>' if reg.get("low_reliability") else "")
    in_items: list[tuple[str, Any]] = []
    for key in ("before", "after"):
        info = inputs.get(key) or {}
        in_items += [(f"{key.capitalize()} file", info.get("path")),
                     (f"{key.capitalize()} CRS / pixel",
                      f"{info.get('crs')} / {_fmt(info.get('pixel_size'))}"),
                     (f"{key.capitalize()} size / bands",
                      f"{info.get('width')} × {info.get('height')} px / bands {_fmt(info.get('bands'))}")]
    in_items.append(("AOI", inputs.get("aoi") or "whole overlap"))
    overlap = summary.get("overlap_fraction")
    in_items.append(("Before scene covered by the after scene",
                     "-" if overlap is None else f"{percent_text(overlap)} %"))
    parts.append('<div class="grid2"><section><h2>Co-registration</h2>' + _dl(reg_items) + warn
                 + '</section><section><h2>Inputs</h2>' + _dl(in_items) + "</section></div>")
    param_items = [(k, _fmt(v)) for k, v in (summary.get("parameters") or {}).items()]
    time_items = [(k, f"{v:.2f} s") for k, v in (summary.get("timings") or {}).items()]
    parts.append('<div class="grid2"><section><h2>Parameters</h2>' + _dl(param_items)
                 + '</section><section><h2>Timings</h2>' + _dl(time_items) + "</section></div>")
    measured_in = summary.get("measurement_crs") or summary.get("analysis_crs", "")
    where = ("the analysis CRS" if measured_in == summary.get("analysis_crs")
             else "the local projection where areas are true, not the analysis CRS")
    parts.append(f"<footer>changedet {_e(__version__)}. Areas in m² in {_e(measured_in)} "
                 f"({where}), cross-checked with geodesic areas. This page is self-contained: "
                 f"no scripts, fonts or network requests.</footer></main></body></html>\n")
    return "".join(parts)
