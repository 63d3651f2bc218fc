#!/usr/bin/env python
"""Independent generator of synthetic VHR before/after pairs for testing changedet.

Written on 2026-12-05 by a separate agent that was not shown ``changedet/synth.py``,
the training scripts or any detector code, so that its scenes test how the detector
generalises beyond the generators it was trained on. Never train or tune on it:
that would end its use as a held-out test.

Usage:  python gen_pairs.py OUTROOT [--ablations] [names]   (writes OUTROOT/pairNN/{before,after,truth,truth_labels}.tif
                                          and OUTROOT/pairs.json)

Everything is rendered in surface reflectance (R, G, B, NIR) on the before grid, then
each date gets its own sun (shadow direction/length), season, radiometry, blur, noise;
the after date may be shifted by a sub-pixel / few-pixel misregistration while its
geotransform stays the same as the before scene's.
"""
import json
import math
import os
import sys

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.transform import from_origin
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from shapely import affinity
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

# ---------------------------------------------------------------- materials (R,G,B,NIR)
MAT = {
    "grass": (0.07, 0.11, 0.05, 0.42),
    "crop": (0.10, 0.14, 0.07, 0.48),
    "fallow": (0.22, 0.20, 0.14, 0.30),
    "bare": (0.30, 0.24, 0.17, 0.34),
    "asphalt": (0.13, 0.13, 0.14, 0.16),
    "dirt_road": (0.34, 0.29, 0.22, 0.37),
    "tree": (0.035, 0.06, 0.035, 0.36),
    "water": (0.04, 0.06, 0.07, 0.02),
    "rubble": (0.33, 0.31, 0.29, 0.33),
}
ROOFS = {
    "grey": (0.33, 0.33, 0.34, 0.36),
    "white": (0.68, 0.70, 0.72, 0.68),
    "red": (0.42, 0.14, 0.11, 0.40),
    "blue": (0.10, 0.20, 0.42, 0.24),
    "brown": (0.14, 0.095, 0.075, 0.17),
}
VEG = ("grass", "crop", "tree")


def smooth_noise(rng, shape, sigma, amp):
    n = rng.standard_normal(shape).astype(np.float32)
    n = ndi.gaussian_filter(n, sigma)
    n /= n.std() + 1e-9
    return n * amp


def coverage(poly, shape, ss=4):
    """Fractional pixel coverage of a shapely polygon given in pixel coords (x=col, y=row)."""
    H, W = shape
    minx, miny, maxx, maxy = poly.bounds
    c0, r0 = max(int(math.floor(minx)) - 1, 0), max(int(math.floor(miny)) - 1, 0)
    c1, r1 = min(int(math.ceil(maxx)) + 1, W), min(int(math.ceil(maxy)) + 1, H)
    out = np.zeros(shape, np.float32)
    if c1 <= c0 or r1 <= r0:
        return out, (slice(0, 0), slice(0, 0))
    tr = rasterio.Affine(1.0 / ss, 0, c0, 0, 1.0 / ss, r0)
    m = rasterize([(poly, 1)], out_shape=((r1 - r0) * ss, (c1 - c0) * ss), transform=tr,
                  dtype="uint8")
    cov = m.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3)).astype(np.float32)
    out[r0:r1, c0:c1] = cov
    return out, (slice(r0, r1), slice(c0, c1))


def blend(img, cov, sl, colour):
    c = cov[sl][..., None]
    img[sl] = img[sl] * (1 - c) + c * np.asarray(colour, np.float32)


# ---------------------------------------------------------------- geometry
def make_footprint(rng, area_m2, px, cx, cy, kind):
    """Return (polygon in px coords, list of convex parts, long-axis angle)."""
    aspect = rng.uniform(1.0, 2.5)
    ang = rng.uniform(0, 180) if rng.random() < 0.6 else rng.choice([0, 90]) + rng.normal(0, 3)
    if kind == "rect":
        w = math.sqrt(area_m2 / aspect) / px
        L = w * aspect
        parts = [box(-L / 2, -w / 2, L / 2, w / 2)]
    else:  # L-shape: main wing + perpendicular wing
        # area = L*w + w2*(h2) ; choose proportions then scale
        L, w = aspect, 1.0
        w2, h2 = rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.4)
        a0 = L * w + w2 * h2
        s = math.sqrt(area_m2 / a0) / px
        L, w, w2, h2 = L * s, w * s, w2 * s, h2 * s
        p1 = box(-L / 2, -w / 2, L / 2, w / 2)
        p2 = box(L / 2 - w2, w / 2, L / 2, w / 2 + h2)
        parts = [p1, p2]
        shift = (p1.area * 0 + 0, -h2 / 2)
        parts = [affinity.translate(p, 0, shift[1]) for p in parts]
    parts = [affinity.translate(affinity.rotate(p, ang, origin=(0, 0)), cx, cy) for p in parts]
    return unary_union(parts), parts, ang


def shadow_of(parts, foot, vec):
    hulls = [unary_union([p, affinity.translate(p, *vec)]).convex_hull for p in parts]
    return unary_union(hulls).difference(foot)


def shadow_vec(sun_az_deg, sun_el_deg, height_m, px):
    L = height_m / math.tan(math.radians(sun_el_deg)) / px
    az = math.radians(sun_az_deg + 180.0)  # shadow points away from the sun
    return (L * math.sin(az), -L * math.cos(az))  # (dcol, drow): north is up


# ---------------------------------------------------------------- scene content
def layout(rng, cfg):
    """Date-independent layout: fields, roads, trees, existing/new buildings, disturbance."""
    N, px = cfg["size"], cfg["px"]
    H = W = N
    lay = {}
    # fields: Voronoi cells
    nf = int(rng.integers(25, 60))
    seeds = rng.uniform(0, N, (nf, 2))
    yy, xx = np.mgrid[0:H, 0:W]
    warp = smooth_noise(rng, (H, W), 25, 8.0)
    _, lab = cKDTree(seeds).query(np.stack([xx.ravel() + warp.ravel(), yy.ravel()], 1))
    lab = lab.reshape(H, W).astype(np.int32)
    kinds = rng.choice(["grass", "crop", "fallow", "bare", "grass", "crop"], nf)
    lay["field_lab"], lay["field_kind"] = lab, kinds
    lay["field_tint"] = rng.normal(1.0, 0.08, (nf, 4)).astype(np.float32)
    lay["field_stripe"] = rng.uniform(0, np.pi, nf)
    lay["field_harvest"] = rng.random(nf) < cfg.get("harvest_frac", 0.15)
    # roads
    roads = []
    for _ in range(int(rng.integers(2, 5))):
        p0 = rng.uniform(0, N, 2)
        ang = rng.uniform(0, np.pi)
        d = np.array([np.cos(ang), np.sin(ang)]) * 2 * N
        pts = [p0 - d, p0, p0 + d + rng.normal(0, N * 0.05, 2)]
        asph = rng.random() < 0.6
        wid = (rng.uniform(6, 10) if asph else rng.uniform(3.5, 5)) / px
        roads.append((LineString(pts).buffer(wid / 2, cap_style=2), "asphalt" if asph else "dirt_road"))
    lay["roads"] = roads
    road_union = unary_union([r for r, _ in roads])
    # water pond sometimes
    lay["water"] = None
    if rng.random() < 0.4:
        c = rng.uniform(0.15 * N, 0.85 * N, 2)
        r = rng.uniform(20, 45) / px
        ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        rr = r * (1 + 0.25 * np.sin(3 * ang + rng.uniform(0, 6)))
        lay["water"] = Polygon(np.c_[c[0] + rr * np.cos(ang), c[1] + rr * np.sin(ang)]).difference(road_union)

    occupied = [road_union.buffer(2 / px)]
    if lay["water"] is not None:
        occupied.append(lay["water"].buffer(3 / px))

    def place(area_range, n, gap_m, kinds_p, extra_ok=None):
        out = []
        tries = 0
        while len(out) < n and tries < n * 200:
            tries += 1
            a = float(np.exp(rng.uniform(np.log(area_range[0]), np.log(area_range[1]))))
            kind = "L" if rng.random() < kinds_p else "rect"
            cx, cy = rng.uniform(0.05 * N, 0.95 * N, 2)
            foot, parts, ang = make_footprint(rng, a, px, cx, cy, kind)
            if not box(3, 3, N - 3, N - 3).contains(foot.buffer(25 / px)):
                continue
            occ = unary_union(occupied)
            if occ.intersects(foot.buffer(gap_m / px)):
                continue
            out.append(dict(foot=foot, parts=parts, kind=kind, angle=float(ang),
                            height=float(rng.uniform(3, 14)),
                            roof=str(rng.choice(list(ROOFS), p=cfg.get("roof_p", None))),
                            gable=bool(rng.random() < 0.4)))
            occupied.append(foot.buffer(gap_m / px))
        return out

    lay["old"] = place((80, 2500), cfg["n_old"], 6, 0.3)
    lay["new"] = place(cfg.get("new_area", (80, 3000)), cfg["n_new"], 6, 0.35)
    for b in lay["new"]:
        b["area_m2_true"] = b["foot"].area * px * px
    # demolished: a subset of old ones
    nd = cfg.get("n_demolish", 0)
    idx = rng.permutation(len(lay["old"]))[:nd]
    for i, b in enumerate(lay["old"]):
        b["demolished"] = bool(i in set(idx.tolist()))
    # trees: clumps (avoid buildings, roads)
    blocked = unary_union(occupied)
    trees = []
    for _ in range(int(rng.integers(8, 20))):
        c = rng.uniform(0, N, 2)
        for _ in range(int(rng.integers(3, 25))):
            p = c + rng.normal(0, 15 / px, 2)
            r = rng.uniform(1.5, 5) / px
            crown = Polygon([(p[0] + r * math.cos(t), p[1] + r * math.sin(t))
                             for t in np.linspace(0, 2 * np.pi, 16, endpoint=False)])
            if crown.intersects(blocked):
                continue
            trees.append(dict(crown=crown, height=float(rng.uniform(4, 15))))
    lay["trees"] = trees
    # construction disturbance: around some new buildings + standalone patches
    dist = []
    for b in lay["new"]:
        if rng.random() < cfg.get("disturb_frac", 0.5):
            d = b["foot"].buffer(rng.uniform(4, 15) / px).buffer(rng.uniform(-2, 2) / px)
            dist.append(d.difference(road_union))
    for _ in range(cfg.get("n_bare_patches", 3)):
        c = rng.uniform(0.1 * N, 0.9 * N, 2)
        a = rng.uniform(200, 2500) / px / px
        s = math.sqrt(a)
        p = affinity.rotate(box(c[0] - s / 2, c[1] - s * 0.35, c[0] + s / 2, c[1] + s * 0.35),
                            rng.uniform(0, 180))
        dist.append(p.difference(road_union))
    lay["disturb"] = dist
    return lay


def render(rng, cfg, lay, date):
    """Render reflectance (H, W, 4) float32 for 'before' or 'after'."""
    N, px = cfg["size"], cfg["px"]
    H = W = N
    sun_az, sun_el = cfg["sun"][date]
    season = cfg["season"][date]  # 0 = summer green, 1 = autumn/dry
    img = np.zeros((H, W, 4), np.float32)
    lab, kinds = lay["field_lab"], lay["field_kind"]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for i, k in enumerate(kinds):
        m = lab == i
        if not m.any():
            continue
        k_eff = k
        if date == "after" and lay["field_harvest"][i] and k in ("crop", "grass"):
            k_eff = "fallow"
        col = np.asarray(MAT[k_eff], np.float32) * lay["field_tint"][i]
        if k_eff in ("grass", "crop") and season > 0:
            col = col * np.array([1 + 0.9 * season, 1 + 0.25 * season, 1 + 0.1 * season,
                                  1 - 0.35 * season], np.float32)
        img[m] = col
        if k_eff == "crop":  # row stripes
            a = lay["field_stripe"][i]
            per = max(2.0, 3.0 / px)
            s = 1 + 0.10 * np.sin(2 * np.pi * (xx[m] * np.cos(a) + yy[m] * np.sin(a)) / per)
            img[m] *= s[:, None]
    # multi-scale texture (same pattern both dates: ground is the same ground)
    tex = (1 + lay["tex"]).clip(0.5, 1.6)
    img *= tex[..., None]
    # roads
    for poly, kind in lay["roads"]:
        cov, sl = coverage(poly, (H, W), ss=2)
        blend(img, cov, sl, MAT[kind])
    if lay["water"] is not None:
        cov, sl = coverage(lay["water"], (H, W), ss=2)
        blend(img, cov, sl, MAT["water"])
    # construction disturbance (after only)
    if date == "after":
        for d in lay["disturb"]:
            if d.is_empty:
                continue
            cov, sl = coverage(d, (H, W), ss=2)
            c = np.asarray(MAT["bare"], np.float32) * rng.normal(1, 0.08)
            blend(img, cov * (1 + 0.0), sl, c)
            img[sl] *= (1 + 0.12 * lay["tex2"][sl][..., None] * cov[sl][..., None])
    # building list for this date
    blds = []
    for b in lay["old"]:
        if date == "after" and b["demolished"]:
            cov, sl = coverage(b["foot"].buffer(2 / px), (H, W))
            blend(img, cov, sl, MAT["rubble"])
            img[sl] *= (1 + 0.25 * lay["tex2"][sl][..., None] * cov[sl][..., None])
            continue
        blds.append(b)
    if date == "after":
        blds += lay["new"]
    # shadows (trees + buildings) : darken, slight blue skylight
    shadow = np.zeros((H, W), np.float32)
    for t in lay["trees"]:
        v = shadow_vec(sun_az, sun_el, t["height"] * 0.6, px)
        sh = affinity.translate(t["crown"], *v).difference(t["crown"])
        cov, sl = coverage(sh, (H, W), ss=2)
        shadow[sl] = np.maximum(shadow[sl], cov[sl])
    for b in (blds if not cfg.get("no_shadow") else []):
        v = shadow_vec(sun_az, sun_el, b["height"], px)
        sh = shadow_of(b["parts"], b["foot"], v)
        cov, sl = coverage(sh, (H, W), ss=2)
        shadow[sl] = np.maximum(shadow[sl], cov[sl])
    sk = np.array([0.30, 0.33, 0.42, 0.22], np.float32)
    img = img * (1 - shadow[..., None] * (1 - sk))
    # trees
    for t in lay["trees"]:
        cov, sl = coverage(t["crown"], (H, W), ss=2)
        col = np.asarray(MAT["tree"], np.float32)
        if season > 0:
            col = col * np.array([1 + 1.2 * season, 1 + 0.3 * season, 1, 1 - 0.3 * season], np.float32)
        blend(img, cov * 0.95, sl, col)
        img[sl] *= (1 + 0.25 * lay["tex2"][sl][..., None] * cov[sl][..., None])
    # buildings (roof; gable = two facets split along the long axis)
    for b in blds:
        base = np.asarray(ROOFS[b["roof"]], np.float32) * b.setdefault("tint", float(rng.normal(1, 0.06)))
        cov, sl = coverage(b["foot"], (H, W))
        if b["gable"]:
            main = b["parts"][0]
            cx, cy = main.centroid.x, main.centroid.y
            a = math.radians(b["angle"])
            # facet side of each pixel: sign of distance from the ridge line
            rel = (yy[sl] - cy) * math.cos(a) - (xx[sl] - cx) * math.sin(a)
            # facing the sun gets brighter
            sun_dx, sun_dy = math.sin(math.radians(sun_az)), -math.cos(math.radians(sun_az))
            normal = (-math.sin(a), math.cos(a))
            bright_side = np.sign(normal[0] * sun_dx + normal[1] * sun_dy + 1e-6)
            f = np.where(rel * bright_side > 0, 1.15, 0.72).astype(np.float32)
            c = cov[sl][..., None]
            img[sl] = img[sl] * (1 - c) + c * base * f[..., None]
        else:
            blend(img, cov, sl, base)
        # roof texture + a dark rim (parapet) effect
        img[sl] *= (1 + 0.03 * lay["tex2"][sl][..., None] * cov[sl][..., None])
    return img


def sensor(rng, img_refl, cfg, date):
    """Radiometry + optics + noise + quantisation. Returns (bands, H, W) array."""
    rad = cfg["rad"][date]
    x = img_refl.copy()
    if date == "after" and any(cfg["shift"]):
        dx, dy = cfg["shift"]
        x = np.stack([ndi.shift(x[..., b], (dy, dx), order=3, mode="nearest") for b in range(4)], -1)
    x = x * np.asarray(rad["gain"], np.float32) + np.asarray(rad["offset"], np.float32)
    h = rad["haze"]
    x = x * (1 - h) + h * np.array([0.32, 0.35, 0.42, 0.25], np.float32)
    x = np.stack([ndi.gaussian_filter(x[..., b], rad["blur"]) for b in range(4)], -1)
    x = np.clip(x, 0, None)
    if cfg["dtype"] == "uint8":
        dn = 255.0 * np.clip(x / 0.7, 0, 1) ** (1.0 / rad["gamma"])
        dn += rng.normal(0, rad["noise"], dn.shape)
        out = np.clip(np.round(dn), 0, 255).astype(np.uint8)[..., :3]
    else:
        dn = 2000.0 * (x / 0.85) ** (1.0 / rad["gamma"])
        dn += rng.normal(0, rad["noise"] * 8, dn.shape)
        out = np.clip(np.round(dn), 1, 2047).astype(np.uint16)
    return np.moveaxis(out, -1, 0)


# ---------------------------------------------------------------- configurations
def rad(rng, strong=False):
    k = 2.0 if strong else 1.0
    return dict(gain=[float(v) for v in rng.normal(1.0, 0.08 * k, 4)],
                offset=[float(v) for v in rng.uniform(-0.005, 0.02 * k, 4)],
                haze=float(rng.uniform(0.0, 0.08 * k)),
                gamma=float(rng.uniform(0.85, 1.2)),
                blur=float(rng.uniform(0.5, 1.0)),
                noise=float(rng.uniform(1.0, 3.5)))


PAIRS = [
    # name, seed, size, px, dtype, epsg, origin(E,N), scenario, n_new, n_old, shift, extra
    dict(name="p1_rgb_05m", seed=101, size=1200, px=0.5, dtype="uint8", epsg=32652,
         origin=(352000.0, 4322000.0), scenario="new", n_new=20, n_old=25, shift=(0.0, 0.0)),
    dict(name="p2_rgb_03m", seed=202, size=1400, px=0.3, dtype="uint8", epsg=32652,
         origin=(348500.0, 4326500.0), scenario="new", n_new=14, n_old=18, shift=(0.4, -0.3)),
    dict(name="p3_rgbn16_08m", seed=303, size=1000, px=0.8, dtype="uint16", epsg=32618,
         origin=(585000.0, 4511000.0), scenario="new", n_new=22, n_old=30, shift=(2.0, 1.0)),
    dict(name="p4_rgb_10m_haze", seed=404, size=1300, px=1.0, dtype="uint8", epsg=32652,
         origin=(340000.0, 4330000.0), scenario="new", n_new=25, n_old=35, shift=(-1.3, 0.7),
         strong=True, season_after=0.8, harvest_frac=0.3),
    dict(name="p5_rgbn16_06m", seed=505, size=1500, px=0.6, dtype="uint16", epsg=32637,
         origin=(410000.0, 6180000.0), scenario="new", n_new=28, n_old=30, shift=(0.0, 0.0)),
    dict(name="p6_none_rgb_05m", seed=606, size=1100, px=0.5, dtype="uint8", epsg=32652,
         origin=(356000.0, 4318000.0), scenario="none", n_new=0, n_old=30, shift=(0.0, 0.0),
         season_after=0.6, harvest_frac=0.25),
    dict(name="p7_none_rgbn16_07m", seed=707, size=1200, px=0.7, dtype="uint16", epsg=32633,
         origin=(455000.0, 5550000.0), scenario="none", n_new=0, n_old=35, shift=(1.0, -0.6),
         strong=True, season_after=0.5),
    dict(name="p8_demolition_rgb_04m", seed=808, size=1250, px=0.4, dtype="uint8", epsg=32652,
         origin=(344000.0, 4324000.0), scenario="demolition", n_new=0, n_old=25, n_demolish=9,
         shift=(0.3, 0.5)),
]


# Ablations of pair 1 (same seed, same layout of buildings), generated with --ablations:
# they isolate what makes the detector miss buildings.
_P1 = PAIRS[0]
ABLATIONS = [
    dict(_P1, name="a1_p1_noshadow", no_shadow=True),
    dict(_P1, name="a2_p1_sameconditions", same_conditions=True),
    dict(_P1, name="a3_p1_same_nodisturb", same_conditions=True, no_disturb=True),
    dict(_P1, name="a4_p1_same_nodisturb_noshadow", same_conditions=True, no_disturb=True,
         no_shadow=True),
]


def build_cfg(p):
    rng = np.random.default_rng(p["seed"] + 7)
    cfg = dict(p)
    cfg["sun"] = {"before": (float(rng.uniform(120, 170)), float(rng.uniform(30, 60))),
                  "after": (float(rng.uniform(120, 220)), float(rng.uniform(25, 65)))}
    cfg["season"] = {"before": 0.0, "after": float(p.get("season_after", rng.uniform(0, 0.4)))}
    cfg["rad"] = {"before": rad(rng), "after": rad(rng, p.get("strong", False))}
    cfg["rad"]["before"]["gain"] = [1.0] * 4
    cfg["rad"]["before"]["offset"] = [0.0] * 4
    cfg["rad"]["before"]["haze"] = 0.02
    cfg["rad"]["before"]["gamma"] = 1.0
    if p["scenario"] != "new":
        cfg["n_bare_patches"] = 3
    if p.get("same_conditions"):  # ablation: after date seen exactly like the before date
        cfg["sun"]["after"] = cfg["sun"]["before"]
        cfg["season"]["after"] = 0.0
        cfg["rad"]["after"] = dict(cfg["rad"]["before"])
        cfg["harvest_frac"] = 0.0
    if p.get("no_disturb"):
        cfg["disturb_frac"] = 0.0
        cfg["n_bare_patches"] = 0
    return cfg


def generate(p, root):
    cfg = build_cfg(p)
    rng = np.random.default_rng(p["seed"])
    N, px = cfg["size"], cfg["px"]
    lay = layout(rng, cfg)
    lay["tex"] = (smooth_noise(rng, (N, N), 1.0, 0.05) + smooth_noise(rng, (N, N), 4, 0.06)
                  + smooth_noise(rng, (N, N), 25, 0.08))
    lay["tex2"] = smooth_noise(rng, (N, N), 1.5, 1.0)
    out = os.path.join(root, p["name"])
    os.makedirs(out, exist_ok=True)
    transform = from_origin(p["origin"][0], p["origin"][1], px, px)
    for date in ("before", "after"):
        refl = render(np.random.default_rng(p["seed"] * 10 + (date == "after")), cfg, lay, date)
        arr = sensor(np.random.default_rng(p["seed"] * 100 + (date == "after")), refl, cfg, date)
        prof = dict(driver="GTiff", height=N, width=N, count=arr.shape[0], dtype=arr.dtype,
                    crs=f"EPSG:{p['epsg']}", transform=transform, tiled=True,
                    blockxsize=256, blockysize=256, compress="deflate", photometric="RGB"
                    if arr.shape[0] == 3 else "MINISBLACK")
        with rasterio.open(os.path.join(out, f"{date}.tif"), "w", **prof) as ds:
            ds.write(arr)
            names = ["red", "green", "blue", "nir"][: arr.shape[0]]
            ds.descriptions = tuple(names)
    # truth on the before grid (pixel-centre rule), labels for per-object scoring
    shapes = [(b["foot"], i + 1) for i, b in enumerate(lay["new"])]
    ident = rasterio.Affine.identity()
    lab = (rasterize(shapes, out_shape=(N, N), transform=ident, dtype="uint16")
           if shapes else np.zeros((N, N), np.uint16))
    prof = dict(driver="GTiff", height=N, width=N, count=1, crs=f"EPSG:{p['epsg']}",
                transform=transform, compress="deflate")
    with rasterio.open(os.path.join(out, "truth.tif"), "w", dtype="uint8", **prof) as ds:
        ds.write((lab > 0).astype(np.uint8), 1)
    with rasterio.open(os.path.join(out, "truth_labels.tif"), "w", dtype="uint16", **prof) as ds:
        ds.write(lab, 1)
    # auxiliary map for diagnosing false detections (not used by the tool):
    # 1 standing old building, 2 demolished footprint, 3 construction disturbance / bare patch,
    # 4 field harvested between dates, 5 road, 6 tree crown
    aux = np.zeros((N, N), np.uint8)
    aux[lay["field_harvest"][lay["field_lab"]] & np.isin(lay["field_kind"][lay["field_lab"]], ["crop", "grass"])] = 4
    sh = [(r, 5) for r, _ in lay["roads"]] + [(t["crown"], 6) for t in lay["trees"]]
    sh += [(d, 3) for d in lay["disturb"] if not d.is_empty]
    sh += [(b["foot"], 2 if b["demolished"] else 1) for b in lay["old"]]
    aux = rasterize(sh, out_shape=(N, N), transform=ident, dtype="uint8", out=aux)
    with rasterio.open(os.path.join(out, "aux.tif"), "w", dtype="uint8", **prof) as ds:
        ds.write(aux, 1)
    rec = {k: v for k, v in cfg.items() if k not in ()}
    rec["truth_buildings"] = [
        dict(id=i + 1, area_m2=round(b["area_m2_true"], 2),
             area_m2_raster=float((lab == i + 1).sum() * px * px), roof=b["roof"],
             gable=b["gable"], kind=b["kind"], height_m=round(b["height"], 2),
             centroid_px=[round(b["foot"].centroid.x, 1), round(b["foot"].centroid.y, 1)])
        for i, b in enumerate(lay["new"])]
    rec["n_old"] = len(lay["old"])
    rec["demolished"] = [dict(area_m2=round(b["foot"].area * px * px, 1), roof=b["roof"],
                              centroid_px=[round(b["foot"].centroid.x, 1),
                                           round(b["foot"].centroid.y, 1)])
                         for b in lay["old"] if b["demolished"]]
    rec["n_trees"] = len(lay["trees"])
    return rec


def main():
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    root = sys.argv[1]
    only = [a for a in sys.argv[2:] if not a.startswith("--")]
    pairs = PAIRS + (ABLATIONS if "--ablations" in sys.argv else [])
    os.makedirs(root, exist_ok=True)
    recs = []
    jpath = os.path.join(root, "pairs.json")
    if only and os.path.exists(jpath):
        recs = [r for r in json.load(open(jpath)) if r["name"] not in only]
    for p in pairs:
        if only and p["name"] not in only:
            continue
        print("generating", p["name"], flush=True)
        recs.append(generate(p, root))
    recs.sort(key=lambda r: r["name"])
    with open(jpath, "w") as f:
        json.dump(recs, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


if __name__ == "__main__":
    main()
