#!/usr/bin/env python
"""Run changedet detect + evaluate on every pair of ``gen_pairs.py`` and score per object.

Usage: python score_pairs.py DATAROOT RUNROOT [pair names...] [--no-detect] [-- extra detect args]

Own per-object scoring: predicted polygons (new_buildings.geojson, reprojected from WGS84 to
the before grid's CRS) are burnt with rasterio.features.rasterize
(pixel-centre rule) onto the before grid, one id per polygon. A true building
(truth_labels.tif) of >= 100 m^2 is FOUND when the union of predicted polygons covers
>= 50 % of its pixels. Its area error uses the sum of area_m2 (the tool's own figure)
of all predicted polygons that share at least one pixel with it, against the generator's
analytic footprint area. A FALSE building is a predicted polygon with area_m2 >= 100
that shares no pixel with any true building.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from shapely.geometry import shape

# The changedet command of this interpreter's environment.
VENV = os.path.dirname(sys.executable)
AUXN = {0: "ground/field", 1: "standing old bldg", 2: "demolished", 3: "bare/disturbance",
        4: "harvested field", 5: "road", 6: "tree"}


def main():
    args = sys.argv[1:]
    extra = []
    if "--" in args:
        i = args.index("--")
        args, extra = args[:i], args[i + 1:]
    detect = "--no-detect" not in args
    args = [a for a in args if a != "--no-detect"]
    data, runs = args[0], args[1]
    only = args[2:]
    os.makedirs(runs, exist_ok=True)
    recs = json.load(open(os.path.join(data, "pairs.json")))
    results = []
    for r in recs:
        name = r["name"]
        if only and name not in only:
            continue
        d = os.path.join(data, name)
        out = os.path.join(runs, name)
        res = dict(name=name, px=r["px"], dtype=r["dtype"],
                   bands=4 if r["dtype"] == "uint16" else 3, scenario=r["scenario"],
                   shift=r["shift"])
        cmd = [f"{VENV}/changedet", "detect", f"{d}/before.tif", f"{d}/after.tif", "-o", out,
               "--overwrite"] + extra
        res["detect_cmd"] = " ".join(cmd)
        if detect:
            t0 = time.time()
            p = subprocess.run(cmd, capture_output=True, text=True)
            res["detect_s"] = round(time.time() - t0, 1)
            res["detect_rc"] = p.returncode
            open(out + ".stdout", "w").write(p.stdout)
            open(out + ".stderr", "w").write(p.stderr)
        else:
            prev = json.load(open(os.path.join(runs, name + ".score.json")))
            res["detect_s"], res["detect_rc"] = prev.get("detect_s"), prev.get("detect_rc")
        if res["detect_rc"] != 0:
            res["error"] = open(out + ".stderr").read()[-2000:]
            results.append(res)
            print(name, "DETECT FAILED", res["error"][-300:], flush=True)
            continue
        summ = json.load(open(os.path.join(out, "summary.json")))
        res["shift_est_px"] = summ.get("coregistration", {}).get("shift_px")
        res["n_standing_before"] = len(summ.get("standing_before", []) or [])
        ecmd = [f"{VENV}/changedet", "evaluate", os.path.join(out, "new_buildings.gpkg"),
                f"{d}/truth.tif", "--json"]
        res["evaluate_cmd"] = " ".join(ecmd)
        p = subprocess.run(ecmd, capture_output=True, text=True)
        res["evaluate_rc"] = p.returncode
        if p.returncode == 0:
            ev = json.loads(p.stdout)
            json.dump(ev, open(out + ".evaluate.json", "w"), indent=1)
            res["eval"] = {k: ev.get(k) for k in ("n_pred", "n_truth", "tp", "fp", "fn", "precision",
                                                   "recall", "f1", "pixel_f1", "pixel_iou",
                                                   "total_area_error_pct")}
        else:
            res["evaluate_error"] = (p.stderr or p.stdout)[-1000:]
            print(name, "EVALUATE FAILED", res["evaluate_error"], flush=True)
        # ---- own per-object scoring
        with rasterio.open(f"{d}/truth_labels.tif") as ds:
            lab = ds.read(1)
            tr, crs, shp = ds.transform, ds.crs, ds.shape
        with rasterio.open(f"{d}/aux.tif") as ds:
            aux = ds.read(1)
        # new_buildings.geojson (WGS84) reprojected onto the before grid's CRS
        # (fiona is not installed; 7-decimal GeoJSON is ~1 cm)
        gj = json.load(open(os.path.join(out, "new_buildings.geojson")))
        preds = [(shape(transform_geom("EPSG:4326", crs, f["geometry"])), dict(f["properties"]))
                 for f in gj["features"]]
        plab = (rasterize([(g, i + 1) for i, (g, _) in enumerate(preds)], out_shape=shp,
                          transform=tr, dtype="int32") if preds else np.zeros(shp, np.int32))
        tb = {b["id"]: b for b in r["truth_buildings"]}
        objs = []
        for tid, b in tb.items():
            m = lab == tid
            npx = int(m.sum())
            cov = float((plab[m] > 0).mean()) if npx else 0.0
            touching = sorted(set(np.unique(plab[m]).tolist()) - {0})
            parea = sum(preds[i - 1][1]["area_m2"] for i in touching)
            pmin = sum(preds[i - 1][1]["area_m2_min"] for i in touching)
            pmax = sum(preds[i - 1][1]["area_m2_max"] for i in touching)
            err = 100.0 * (parea - b["area_m2"]) / b["area_m2"] if touching else None
            objs.append(dict(id=tid, area=b["area_m2"], roof=b["roof"], gable=b["gable"],
                             kind=b["kind"], cover=round(cov, 3), n_parts=len(touching),
                             pred_area=round(parea, 1), err_pct=None if err is None else round(err, 1),
                             found=cov >= 0.5,
                             in_range=bool(touching) and pmin <= b["area_m2"] <= pmax))
        res["objects"] = objs
        big = [o for o in objs if o["area"] >= 100]
        res["n_true"] = len(objs)
        res["n_true100"] = len(big)
        res["found100"] = sum(o["found"] for o in big)
        res["missed100"] = len(big) - res["found100"]
        errs = [abs(o["err_pct"]) for o in big if o["found"] and o["err_pct"] is not None]
        res["found100_true_area_in_tool_range"] = sum(o["in_range"] for o in big if o["found"])
        res["median_abs_err_pct"] = round(float(np.median(errs)), 1) if errs else None
        fals = []
        for i, (g, pr) in enumerate(preds):
            pm = plab == i + 1
            if (lab[pm] > 0).any():
                continue
            if pm.sum() == 0:
                continue
            under = np.bincount(aux[pm], minlength=7)
            fals.append(dict(pred_id=pr.get("id"), area=round(pr["area_m2"], 1),
                             under=AUXN[int(under.argmax())],
                             under_frac=round(float(under.max() / pm.sum()), 2)))
        res["false_all"] = fals
        res["false100"] = sum(f["area"] >= 100 for f in fals)
        res["n_pred"] = len(preds)
        json.dump(res, open(os.path.join(runs, name + ".score.json"), "w"), indent=1)
        results.append(res)
        e = res.get("eval", {})
        print(f"{name}: {res['detect_s']}s pred={len(preds)} true={res['n_true']} "
              f"found100={res['found100']}/{res['n_true100']} P/R/F1={e.get('precision')}/"
              f"{e.get('recall')}/{e.get('f1')} pixF1={e.get('pixel_f1')} "
              f"false100={res['false100']} medErr={res['median_abs_err_pct']}", flush=True)
    # results.json / the table cover every pair scored so far in RUNROOT
    import glob
    results = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(runs, "*.score.json")))]
    json.dump(results, open(os.path.join(runs, "results.json"), "w"), indent=1)
    table(results)


def table(results):
    print("\n| pair | px m | bands | #true (>=100) | found>=100 | obj P/R/F1 | pixel F1 | missed>=100 | "
          "false>=100 | med abs area err % | time s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.get("detect_rc") != 0:
            print(f"| {r['name']} | {r['px']} | | CRASH | | | | | | | {r.get('detect_s')} |")
            continue
        e = r.get("eval", {})
        print(f"| {r['name']} | {r['px']} | {r['bands']}x{r['dtype']} | {r['n_true']} ({r['n_true100']}) | "
              f"{r['found100']} | {e.get('precision')}/{e.get('recall')}/{e.get('f1')} | {e.get('pixel_f1')} | "
              f"{r['missed100']} | {r['false100']} | {r['median_abs_err_pct']} | {r['detect_s']} |")


if __name__ == "__main__":
    main()
