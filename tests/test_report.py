"""report.html: self-contained, escaped, renders in a real browser; the verdict table."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._fakes import fake_result
from changedet.report import format_table, render_report, verdict_rows


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    return parser


def _check_self_contained(text: str) -> list[Image.Image]:
    """No script, stylesheet link, font or remote URL; every <img> a valid PNG."""
    parsed = _parse(text)
    names = [t for t, _ in parsed.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    assert "@import" not in text and "url(" not in text and "@font-face" not in text
    images = []
    for tag, attrs in parsed.tags:
        for key in ("src", "href", "xlink:href", "poster", "data"):
            value = attrs.get(key)
            if value is not None:  # embedded data, or a reference inside the page
                assert value.startswith(("data:", "#")), (tag, key, value[:60])
        if tag == "img":
            header, payload = attrs["src"].split(",", 1)
            assert header == "data:image/png;base64"
            image = Image.open(io.BytesIO(base64.b64decode(payload)))
            image.load()
            assert image.format == "PNG"
            assert image.size == (int(attrs["width"]), int(attrs["height"]))
            images.append(image)
    return images


def test_report_content() -> None:
    res = fake_result(13000.0, n_sites=3)  # 12,375 consistent, 8,000 smaller, 1 not found
    text = render_report(res)
    images = _check_self_contained(text)
    assert len(images) == 3
    visible = " ".join(_parse(text).text)
    lo, hi = res.sites[1].built_area_m2_min, res.sites[1].built_area_m2_max
    for needle in ("consistent", "smaller than claimed", "not found",
                   f"8,000 ± {(hi - lo) / 2:,.0f}", f"{lo:,.0f} – {hi:,.0f}", "1.25, -0.5", "0.93", "before.tif", "after.tif",
                   "Not consistent with the claim"):
        assert needle in visible, needle
    # Each building outlined and numbered once, shown over each of the three panels.
    assert text.count('class="bld"') == len(res.buildings)
    for b in res.buildings:
        assert text.count(f'dominant-baseline="central">{b.id}</text>') == 1
    assert text.count('<use href="#outlines"/>') == 3 and text.count('id="outlines"') == 1


def test_report_marks_partial_outlines() -> None:
    res = fake_result(13000.0, n_sites=3)
    assert "marked partial" not in " ".join(_parse(render_report(res)).text)
    res.buildings[1].partial = True
    visible = " ".join(_parse(render_report(res)).text)
    assert "1 outline(s) marked partial" in visible
    assert visible.count("partial") == 2  # the building's row and the note


def test_report_without_claim() -> None:
    text = render_report(fake_result())
    assert "No claim was given" in text and "Verdict" not in text


def test_report_escapes_input_strings() -> None:
    evil = 'x<script>alert("x")</script>.tif'
    res = fake_result(10000.0, path_before=evil)
    res.summary["parameters"]["aoi"] = "<img src=http://evil/>"
    text = render_report(res)
    assert "<script>" not in text and "<img src=http" not in text
    assert "&lt;script&gt;" in text
    _check_self_contained(text)


def test_table_text_and_rows() -> None:
    res = fake_result(8000.0, n_sites=4)
    table = format_table(res.sites, res.claim)
    lines = table.splitlines()
    assert lines[0].startswith("Claim: 4 sites of 8,000 m² each")
    assert lines[3].split()[:3] == ["1", "1", "12,375"]
    assert lines[4].split()[:3] == ["2", "2", "8,000"]
    assert "larger than claimed" in lines[3] and lines[4].endswith("consistent")
    assert sum("not found" in line for line in lines[3:-1]) == 2
    assert lines[-1].startswith("Not consistent with the claim")
    one = fake_result(8000.0, n_sites=1)
    assert format_table(one.sites, one.claim).startswith(
        "Claim: 1 site of 8,000 m² (tolerance")  # not "1 site of ... each"
    rows = verdict_rows(res.sites, res.claim)
    assert [r.verdict for r in rows] == ["larger than claimed", "consistent", "not found",
                                         "not found"]
    assert rows[0].area_m2_min == pytest.approx(res.sites[0].built_area_m2_min)
    envelope = fake_result(8000.0, basis="envelope")
    rows = verdict_rows(envelope.sites, envelope.claim)
    assert rows[1].area_m2 == pytest.approx(envelope.sites[1].envelope_area_m2)
    assert "Envelope m²" in format_table(envelope.sites, envelope.claim)


def test_table_takes_the_verdicts_of_the_claim_it_is_given() -> None:
    """check_claim rewrites the sites' verdicts: a table of an earlier claim printed
    that claim's header over the later claim's verdicts."""
    from changedet.measure import check_claim

    res = fake_result(8000.0)
    first = res.claim
    check_claim(res.sites, 20000.0, n_sites=2)
    lines = format_table(res.sites, first).splitlines()
    assert lines[0].startswith("Claim: 2 sites of 8,000 m² each")
    assert lines[3].endswith("larger than claimed") and lines[4].endswith("consistent")
    assert lines[-1].startswith("Not consistent with the claim")
    assert [r.verdict for r in verdict_rows(res.sites, first)] == [
        "larger than claimed", "consistent"]
    assert "smaller than claimed" not in render_report(res)


def test_report_names_the_crs_areas_are_measured_in() -> None:
    """On a Web-Mercator grid areas are measured in the local UTM zone: the page said
    "on the projected analysis CRS", which read as Web-Mercator areas."""
    res = fake_result(8000.0)
    assert "Areas in m² in EPSG:32651 (the analysis CRS)" in render_report(res)
    res.summary["analysis_crs"] = "EPSG:3857"
    text = render_report(res)
    assert "Areas in m² in EPSG:32651 (the local projection where areas are true" in text


def test_unclaimed_sites_in_table() -> None:
    res = fake_result(12375.0, n_sites=1)
    lines = format_table(res.sites, res.claim).splitlines()
    assert lines[3].endswith("consistent") and lines[4].endswith("(not claimed)")
    assert lines[-1] == "Consistent with the claim: the site matches"


def test_all_consistent_headline() -> None:
    res = fake_result(10000.0)
    rows = verdict_rows(res.sites, res.claim)
    assert [r.verdict for r in rows] == ["larger than claimed", "smaller than claimed"]
    lenient = fake_result(10000.0)
    from changedet.measure import check_claim

    lenient.claim = check_claim(lenient.sites, 10000.0, tolerance=0.3)
    assert format_table(lenient.sites, lenient.claim).splitlines()[-1] == \
        "Consistent with the claim: all 2 sites match"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") \
    or shutil.which("google-chrome")


def _chromium(page: Path, workdir: Path) -> tuple[Path, set[str]]:
    """Render ``page`` headless; return the screenshot and the URLs the page requested.

    Chromium makes requests of its own (clock, updates, accounts) that carry no
    initiator ("not an origin"); requests made by the page carry its origin.
    """
    shot, netlog = workdir / "shot.png", workdir / "net.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-extensions", f"--user-data-dir={workdir / 'profile'}",
           "--hide-scrollbars", "--window-size=1320,1400", f"--log-net-log={netlog}",
           f"--screenshot={shot}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=workdir)
    assert shot.exists(), done.stderr[-2000:]
    log = json.loads(netlog.read_text())
    fetched = set()
    for event in log.get("events", []):
        params = event.get("params", {})
        url = params.get("url", "")
        if "initiator" in params and params["initiator"] != "not an origin" \
                and not url.startswith(("file:", "data:")):
            fetched.add(url)
    return shot, fetched


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_in_headless_chromium(tmp_path: Path) -> None:
    # The check can fail: a page with a remote image and stylesheet is caught.
    control = tmp_path / "control"
    control.mkdir()
    (control / "page.html").write_text(
        '<img src="http://127.0.0.1:9/x.png"><link rel="stylesheet" href="http://127.0.0.1:9/a.css">')
    _, fetched = _chromium(control / "page.html", control)
    assert fetched == {"http://127.0.0.1:9/x.png", "http://127.0.0.1:9/a.css"}

    res = fake_result(8000.0, n_sites=3, path_before='<script>alert("x")</script>.tif')
    page = tmp_path / "report.html"
    page.write_text(render_report(res), encoding="utf-8")
    shot, fetched = _chromium(page, tmp_path)
    assert not fetched, fetched
    # The page rendered with its images: the overlay's red change pixels and the
    # yellow outlines are on the screenshot.
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 170) & (pixels[..., 1] < 90) & (pixels[..., 2] < 100)
    yellow = (pixels[..., 0] > 220) & (pixels[..., 1] > 180) & (pixels[..., 2] < 100)
    assert red.sum() > 5000 and yellow.sum() > 500


def _images_and_first_outline(text: str) -> tuple[list[np.ndarray], np.ndarray]:
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u))).convert("RGB"), float)
              for u in uris]
    path = re.search(r'<path d="([^"]+)" class="bld"', text).group(1)
    xy = np.array([[float(v) for v in p.split()] for p in re.findall(r"[-\d.]+ [-\d.]+", path)])
    return images, xy


def test_a_south_up_scene_is_shown_north_up() -> None:
    """A before scene whose rows run north (positive y pixel size) is analysed on its
    own grid; its report shows it north up, outlines and images alike."""
    from affine import Affine

    from tests._fakes import GRID
    from changedet.raster import Grid

    south_up = Grid(GRID.crs, Affine(0.5, 0, 500000.0, 0, 0.5, 4320000.0 - 300.0),
                    GRID.height, GRID.width)
    north, north_box = _images_and_first_outline(render_report(fake_result(grid=GRID)))
    south, south_box = _images_and_first_outline(render_report(fake_result(grid=south_up)))
    # Building 1 covers pixel rows 40-160 of the grid: row 0 of a south-up grid is
    # its southern edge, so it is shown 440-560 rows down from the top.
    assert (north_box[:, 1].min(), north_box[:, 1].max()) == (40.0, 160.0)
    assert (south_box[:, 1].min(), south_box[:, 1].max()) == (440.0, 560.0)
    np.testing.assert_array_equal(np.sort(south_box[:, 0]), np.sort(north_box[:, 0]))
    for n, s in zip(north, south, strict=True):
        assert np.abs(s - n[::-1]).mean() < 1.0 < np.abs(s - n).mean()
    # An affine fitted to GCPs has rotation terms within rounding of zero.
    fitted = Grid(GRID.crs, Affine(0.5, 1e-13, 500000.0, -2e-13, 0.5, 4320000.0 - 300.0),
                  GRID.height, GRID.width)
    _, fitted_box = _images_and_first_outline(render_report(fake_result(grid=fitted)))
    assert (fitted_box[:, 1].min(), fitted_box[:, 1].max()) == (440.0, 560.0)


def test_a_pixel_size_in_degrees_is_not_shown_as_zero() -> None:
    from changedet.report import _fmt

    assert _fmt([6.3638e-06, 4.9407e-06]) == "6.36e-06, 4.94e-06"
    assert _fmt(0.5) == "0.5" and _fmt(13000.0) == "13,000" and _fmt(0.0) == "0"

