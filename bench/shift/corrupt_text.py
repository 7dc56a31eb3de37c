"""The two OpenCV drawing calls MedMNIST-C's artefacts make, ported from OpenCV 4.10.0
(``modules/imgproc/src/drawing.cpp``, the release current when medmnistc 0.1.0 came out, June 2024).

- ``fill_circle``: ``cv2.circle(img, center, radius, color, thickness=-1)`` with the default LINE_8
  and no shift, i.e. ``Circle(..., fill=1)``: the integer midpoint circle, spans clipped to the image
  (``BlackCorner``).
- ``put_text``: ``cv2.putText(img, text, org, FONT_HERSHEY_DUPLEX, scale, color, 1, LINE_AA)``:
  each glyph of the Hershey "duplex" font (``hershey_fonts.cpp`` ``g_HersheyGlyphs``, entries
  2601-2626 for 'a'-'z', the only characters ``Characters`` writes) scaled in 16.16 fixed point
  (``putText``) and drawn stroke by stroke with the anti-aliased 1-px line ``LineAA`` (which in 4.x
  blends each pixel twice), after ``clipLine``.
"""
from __future__ import annotations

import numpy as np

XY_SHIFT = 16
XY_ONE = 1 << XY_SHIFT

# drawing.cpp: correction table by slope, Gaussian anti-aliasing filter
SLOPE_CORR = (181, 181, 181, 182, 182, 183, 184, 185, 187, 188, 190, 192, 194, 196, 198, 201,
              203, 206, 209, 211, 214, 218, 221, 224, 227, 231, 235, 238, 242, 246, 250, 254)
FILTER = (168, 177, 185, 194, 202, 210, 218, 224, 231, 236, 241, 246, 249, 252, 254, 254,
          254, 254, 252, 249, 246, 241, 236, 231, 224, 218, 210, 202, 194, 185, 177, 168,
          158, 149, 140, 131, 122, 114, 105, 97, 89, 82, 75, 68, 62, 56, 50, 45,
          40, 36, 32, 28, 25, 22, 19, 16, 14, 12, 11, 9, 8, 7, 5, 5)

# hershey_fonts.cpp g_HersheyGlyphs[2601..2626] (drawing.cpp HersheyDuplex maps 'a'-'z' to them)
DUPLEX_LOWER = (
    'H\\WMW[X[ WMXMX[ WPUNSMPMNNLPKSKULXNZP[S[UZWX WPSNPNNOMPLSLUMXNYPZSZWX',  # a (2601)
    'H\\LFL[M[ LFMFM[ MPONQMTMVNXPYSYUXXVZT[Q[OZMX MPQNTNVOWPXSXUWXVYTZQZMX',  # b (2602)
    'I[XPVNTMQMONMPLSLUMXOZQ[T[VZXX XPWQVOTNQNOONPMSMUNXOYQZTZVYWWXX',  # c (2603)
    'H\\WFW[X[ WFXFX[ WPUNSMPMNNLPKSKULXNZP[S[UZWX WPSNPNNOMPLSLUMXNYPZSZWX',  # d (2604)
    'I[MTXTXQWOVNTMQMONMPLSLUMXOZQ[T[VZXX MSWSWQVOTNQNOONPMSMUNXOYQZTZVYWWXX',  # e (2605)
    'LZWFUFSGRJR[S[ WFWGUGSH TGSJS[ OMVMVN OMONVN',  # f (2606)
    'H\\XMWMW\\V_U`SaQaO`N_L_ XMX\\W_UaSbPbNaL_ WPUNSMPMNNLPKSKULXNZP[S[UZWX WPSNPNNOMPLSLUMXNYPZSZWX',  # g (2607)
    'H\\LFL[M[ LFMFM[ MQPNRMUMWNXQX[ MQPORNTNVOWQW[X[',  # h (2608)
    'NWRFQGQHRISITHTGSFRF RGRHSHSGRG RMR[S[ RMSMS[',  # i (2609)
    'NWRFQGQHRISITHTGSFRF RGRHSHSGRG RMRbSb RMSMSb',  # j (2610)
    'H[LFL[M[ LFMFM[ XMWMMW XMMX PTV[X[ QSX[',  # k (2611)
    'NWRFR[S[ RFSFS[',  # l (2612)
    'CbGMG[H[ GMHMH[ HQKNMMPMRNSQS[ HQKOMNONQORQR[S[ SQVNXM[M]N^Q^[ SQVOXNZN\\O]Q][^[',  # m (2613)
    'H\\LML[M[ LMMMM[ MQPNRMUMWNXQX[ MQPORNTNVOWQW[X[',  # n (2614)
    'I\\QMONMPLSLUMXOZQ[T[VZXXYUYSXPVNTMQM QNOONPMSMUNXOYQZTZVYWXXUXSWPVOTNQN',  # o (2615)
    'H\\LMLbMb LMMMMb MPONQMTMVNXPYSYUXXVZT[Q[OZMX MPQNTNVOWPXSXUWXVYTZQZMX',  # p (2616)
    'H\\WMWbXb WMXMXb WPUNSMPMNNLPKSKULXNZP[S[UZWX WPSNPNNOMPLSLUMXNYPZSZWX',  # q (2617)
    'KYOMO[P[ OMPMP[ PSQPSNUMXM PSQQSOUNXNXM',  # r (2618)
    'J[XPWNTMQMNNMPNRPSUUWV VUWWWXVZ WYTZQZNY OZNXMX XPWPVN WOTNQNNO ONNPOR NQPRUTWUXWXXWZT[Q[NZMX',  # s (2619)
    'MXRFR[S[ RFSFS[ OMVMVN OMONVN',  # t (2620)
    'H\\LMLWMZO[R[TZWW LMMMMWNYPZRZTYWW WMW[X[ WMXMX[',  # u (2621)
    'JZLMR[ LMMMRY XMWMRY XMR[',  # v (2622)
    'F^IMN[ IMJMNX RMNX RPN[ RPV[ RMVX [MZMVX [MV[',  # w (2623)
    'I[LMW[X[ LMMMX[ XMWML[ XMM[L[',  # x (2624)
    'JZLMR[ LMMMRY XMWMRYNb XMR[ObNb',  # y (2625)
    'I[VNL[ XMNZ LMXM LMLNVN NZXZX[ L[X[',  # z (2626)
)
DUPLEX_BASE_LINE = -((9 + 12 * 16) & 15)  # putText: -(ascii[0] & 15) for HersheyDuplex


def fill_circle(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    """Boolean mask of ``cv2.circle(mask, center, radius, 255, thickness=-1)`` (drawing.cpp ``Circle``)."""
    h, w = shape
    cx, cy = center
    mask = np.zeros((h, w), dtype=bool)
    err, dx, dy, plus, minus = 0, radius, 0, 1, (radius << 1) - 1

    def span(y: int, xa: int, xb: int) -> None:
        if 0 <= y < h:
            mask[y, max(xa, 0):min(xb, w - 1) + 1] = True

    while dx >= dy:
        y11, y12, y21, y22 = cy - dy, cy + dy, cy - dx, cy + dx
        x11, x12, x21, x22 = cx - dx, cx + dx, cx - dy, cx + dy
        # the inside and clipped branches of Circle fill the same spans
        if x11 < w and x12 >= 0 and y21 < h and y22 >= 0:
            span(y11, x11, x12)
            span(y12, x11, x12)
            if x21 < w and x22 >= 0:
                span(y21, x21, x22)
                span(y22, x21, x22)
        dy += 1
        err += plus
        plus += 2
        m = 0 if err <= 0 else -1
        err -= minus & m
        dx += m
        minus -= m & 2
    return mask


def _tdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def clip_line(width: int, height: int, p1: list[int], p2: list[int]) -> bool:
    """drawing.cpp ``clipLine(Size2l, Point2l&, Point2l&)``, in place on [x, y] lists."""
    right, bottom = width - 1, height - 1
    if width <= 0 or height <= 0:
        return False
    x1, y1 = p1
    x2, y2 = p2
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += int(float(a - y1) * (x2 - x1) / (y2 - y1))
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += int(float(a - y2) * (x2 - x1) / (y2 - y1))
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += int(float(a - x1) * (y2 - y1) / (x2 - x1))
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += int(float(a - x2) * (y2 - y1) / (x2 - x1))
                x2 = a
                c2 = 0
    p1[:] = [x1, y1]
    p2[:] = [x2, y2]
    return (c1 | c2) == 0


def line_aa(img: np.ndarray, pt1: tuple[int, int], pt2: tuple[int, int], color: tuple[int, ...]) -> None:
    """drawing.cpp ``LineAA`` for a uint8 image (H, W, C), points in 16.16 fixed point, in place."""
    h0, w0 = img.shape[:2]
    p1, p2 = [pt1[0], pt1[1]], [pt2[0], pt2[1]]
    if not clip_line(w0 << XY_SHIFT, h0 << XY_SHIFT, p1, p2):
        return
    dx, dy = p2[0] - p1[0], p2[1] - p1[1]
    ax, ay = abs(dx), abs(dy)
    if ax > ay:
        if dx < 0:  # draw left to right
            dy = -dy
            p1, p2 = p2, p1
        y_step = _tdiv(dy << XY_SHIFT, ax | 1)
        p2[0] += XY_ONE
        ecount = (p2[0] >> XY_SHIFT) - (p1[0] >> XY_SHIFT)
        j = -(p1[0] & (XY_ONE - 1))
        p1[1] += ((y_step * j) >> XY_SHIFT) + (XY_ONE >> 1)
        slope = (y_step >> (XY_SHIFT - 5)) & 0x3f
        slope ^= 0x3f if y_step < 0 else 0
        i = (p1[0] >> (XY_SHIFT - 7)) & 0x78
        j = (p2[0] >> (XY_SHIFT - 7)) & 0x78
    else:
        if dy < 0:  # draw top to bottom
            dx = -dx
            p1, p2 = p2, p1
        x_step = _tdiv(dx << XY_SHIFT, ay | 1)
        p2[1] += XY_ONE
        ecount = (p2[1] >> XY_SHIFT) - (p1[1] >> XY_SHIFT)
        j = -(p1[1] & (XY_ONE - 1))
        p1[0] += ((x_step * j) >> XY_SHIFT) + (XY_ONE >> 1)
        slope = (x_step >> (XY_SHIFT - 5)) & 0x3f
        slope ^= 0x3f if x_step < 0 else 0
        i = (p1[1] >> (XY_SHIFT - 7)) & 0x78
        j = (p2[1] >> (XY_SHIFT - 7)) & 0x78
    slope = 0x100 if (slope & 0x20) else SLOPE_CORR[slope]
    t0 = slope << 7
    t1 = ((0x78 - i) | 4) * slope
    t2 = (j | 4) * slope
    ep = [0] * 9
    ep[8] = slope
    ep[1] = ep[3] = ((((j - i) & 0x78) | 4) * slope >> 8) & 0x1ff
    ep[2] = (t1 >> 8) & 0x1ff
    ep[4] = ((((j - i) + 0x80) | 4) * slope >> 8) & 0x1ff
    ep[5] = ((t1 + t0) >> 8) & 0x1ff
    ep[6] = (t2 >> 8) & 0x1ff
    ep[7] = ((t2 + t0) >> 8) & 0x1ff
    nch = img.shape[2] if img.ndim == 3 else 1

    def put(x: int, y: int, a: int) -> None:
        px = img[y, x] if nch > 1 else img[y:y + 1, x]
        for c in range(nch):
            v = int(px[c])
            v += ((color[c] - v) * a + 127) >> 8
            v += ((color[c] - v) * a + 127) >> 8  # OpenCV 4.x blends twice
            px[c] = v

    scount = 0
    if ax > ay:
        x = p1[0] >> XY_SHIFT
        y_fix = p1[1]
        while ecount >= 0:
            if 0 <= x < w0:
                y = (y_fix >> XY_SHIFT) - 1
                ep_corr = ep[(((scount >= 2) + 1) & (scount | 2)) * 3 + (((ecount >= 2) + 1) & (ecount | 2))]
                dist = (y_fix >> (XY_SHIFT - 5)) & 31
                for k, f in enumerate((FILTER[dist + 32], FILTER[dist], FILTER[63 - dist])):
                    if 0 <= y + k < h0:
                        put(x, y + k, (ep_corr * f >> 8) & 0xff)
            x += 1
            y_fix += y_step
            scount += 1
            ecount -= 1
    else:
        y = p1[1] >> XY_SHIFT
        x_fix = p1[0]
        while ecount >= 0:
            if 0 <= y < h0:
                x = (x_fix >> XY_SHIFT) - 1
                ep_corr = ep[(((scount >= 2) + 1) & (scount | 2)) * 3 + (((ecount >= 2) + 1) & (ecount | 2))]
                dist = (x_fix >> (XY_SHIFT - 5)) & 31
                for k, f in enumerate((FILTER[dist + 32], FILTER[dist], FILTER[63 - dist])):
                    if 0 <= x + k < w0:
                        put(x + k, y, (ep_corr * f >> 8) & 0xff)
            y += 1
            x_fix += x_step
            scount += 1
            ecount -= 1


def put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, ...]) -> None:
    """``cv2.putText(img, text, org, cv2.FONT_HERSHEY_DUPLEX, scale, color, 1, cv2.LINE_AA)`` in place,
    for lower-case ASCII text on a uint8 image (drawing.cpp ``putText``, thickness 1 -> ``LineAA``)."""
    hscale = vscale = round(scale * XY_ONE)  # cvRound: to nearest, ties to even
    view_x = org[0] << XY_SHIFT
    view_y = (org[1] << XY_SHIFT) + DUPLEX_BASE_LINE * vscale
    for ch in text:
        if not "a" <= ch <= "z":
            raise ValueError(f"only lower-case ASCII letters are ported, got {ch!r}")
        glyph = DUPLEX_LOWER[ord(ch) - ord("a")]
        left, right = ord(glyph[0]) - ord("R"), ord(glyph[1]) - ord("R")
        advance = right * hscale
        view_x -= left * hscale
        for stroke in glyph[2:].split(" "):
            pts = [((ord(stroke[k]) - ord("R")) * hscale + view_x, (ord(stroke[k + 1]) - ord("R")) * vscale + view_y)
                   for k in range(0, len(stroke) - 1, 2)]
            for a, b in zip(pts, pts[1:]):  # PolyLine, open: one LineAA per segment
                line_aa(img, a, b, color)
        view_x += advance
