#!/usr/bin/env python3
"""Regenerate world.svg: the dashboard's land outline (equirectangular, x = lon + 180,
y = 90 - lat, so a 360 x 180 viewBox is the whole globe).

Source: Natural Earth 1:110m admin-0 countries (public domain), as shipped in the geopandas
0.14 wheel (geopandas/datasets/naturalearth_lowres/naturalearth_lowres.shp). Rings are
simplified with Douglas-Peucker (0.35 degree) and islands under 2 square degrees dropped,
so the file stays small; it is a backdrop for region markers, not a map to navigate by.

    pip download geopandas==0.14.4 --no-deps && unzip geopandas-0.14.4-py3-none-any.whl
    python3 make-world.py geopandas/datasets/naturalearth_lowres/naturalearth_lowres.shp > world.svg
"""
import struct
import sys

EPS = 0.35
MIN_AREA = 2.0


def rings(path):
    data = open(path, "rb").read()
    pos = 100
    while pos < len(data):
        _num, length = struct.unpack(">ii", data[pos:pos + 8])
        rec = data[pos + 8:pos + 8 + 2 * length]
        pos += 8 + 2 * length
        (kind,) = struct.unpack("<i", rec[:4])
        if kind != 5:  # polygon
            continue
        nparts, npoints = struct.unpack("<ii", rec[36:44])
        parts = list(struct.unpack(f"<{nparts}i", rec[44:44 + 4 * nparts])) + [npoints]
        base = 44 + 4 * nparts
        pts = [struct.unpack("<dd", rec[base + 16 * i:base + 16 * i + 16]) for i in range(npoints)]
        for a, b in zip(parts, parts[1:]):
            yield pts[a:b]


def area(r):
    return abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(r, r[1:] + r[:1]))) / 2


def simplify(pts, eps):
    if len(pts) < 3:
        return pts
    (x1, y1), (x2, y2) = pts[0], pts[-1]
    dx, dy = x2 - x1, y2 - y1
    norm = (dx * dx + dy * dy) ** 0.5
    best, idx = 0.0, 0
    for i in range(1, len(pts) - 1):
        x, y = pts[i]
        d = abs(dy * x - dx * y + x2 * y1 - y2 * x1) / norm if norm else ((x - x1) ** 2 + (y - y1) ** 2) ** 0.5
        if d > best:
            best, idx = d, i
    if best <= eps:
        return [pts[0], pts[-1]]
    return simplify(pts[:idx + 1], eps)[:-1] + simplify(pts[idx:], eps)


def main():
    out = []
    for r in rings(sys.argv[1]):
        if area(r) < MIN_AREA:
            continue
        s = simplify(r, EPS)
        if len(s) < 4:
            continue
        pts = [(round(lon + 180, 1), round(90 - lat, 1)) for lon, lat in s[:-1]]
        d = "M" + " ".join(f"{x:g},{y:g}" for x, y in pts) + "Z"
        out.append(d)
    print('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 360 180">')
    print("<!-- Land: Natural Earth 1:110m (public domain), simplified; see make-world.py -->")
    print('<path fill="#cfd8cf" d="' + "".join(out) + '"/>')
    print("</svg>")


main()
