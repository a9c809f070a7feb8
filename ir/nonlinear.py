"""The table of scalar nonlinearities: one entry per known function, read by every pass.

Each :class:`Nonlinear` says what a labelled ``Scalar`` computes and how to fit it:

- ``ref``: the float reference (numpy), with the entry's parameters as keywords;
- ``domain``: ``"line"`` (every real), ``"positive"`` (x > 0; a pole or a branch point
  at 0) or ``"nonpositive"`` (x <= 0, e.g. softmax's ``exp(x - max x)``);
- ``left`` / ``right``: the EXACT asymptotes ``slope * x + offset`` (callables of the
  parameters), or None where the function has none on that side (exp to the right,
  sqrt, reciprocal of a finite range); :func:`fit_domain` widens the fitted interior until
  the asymptote is within the error bound, so the spec is exact in the tails, never "held
  constant past the calibration range";
- ``contraction``: ``|f(x)| <= |x|`` for every x (range analysis carries L2 row norms
  through such functions);
- ``sigma``: the name of SIGMA's construction for it (``--gates sigma``), or None;
- ``scope``: the profiler bucket of its gates (DESIGN §7) outside a softmax / layer-norm block.

Labels come from :func:`identify` (``passes/fuse_scalar``): the fused sub-graph is compared
with each entry on test grids; parametric entries (leaky ReLU's alpha, hard sigmoid's alpha
and beta, clip bounds, ELU's alpha) first estimate their parameters from samples.
Parameters travel in the function dict (``fn["params"]``).

:func:`fit_domain` turns (label, proven range, calibrated range) into the :class:`Domain`
the spec is fitted on (``passes/fit_specs``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fusec.errors import CompileError
from fusec.ir.ops import gelu, gelu_tanh, sigmoid
from fusec.ir.spec import Tail

Asymptote = Callable[..., tuple[float, float]]   # params -> (slope, offset)


@dataclass(frozen=True)
class Nonlinear:
    label: str
    ref: Callable[..., np.ndarray]
    domain: str = "line"                       # "line" | "positive" | "nonpositive"
    left: Asymptote | None = None              # exact asymptote for x -> -inf (slope, offset)
    right: Asymptote | None = None             # exact asymptote for x -> +inf
    contraction: bool = False                  # |f(x)| <= |x| everywhere
    sigma: str | None = None                   # SIGMA construction (--gates sigma)
    scope: str = "other"                       # profiler scope outside a block
    params: Callable[[Callable], dict | None] | None = None   # estimate parameters from samples
    policy: str = "asymptotes"                 # fitting interval: "asymptotes" | "proven" | "geometric"
    doc: str = ""

    def __call__(self, x, **params):
        return self.ref(np.asarray(x, np.float64), **params)


def _c(slope: float, offset: float) -> Asymptote:
    return lambda **p: (slope, offset)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _softplus(x):
    return np.logaddexp(0.0, x)


def _hardsigmoid(x, alpha=0.2, beta=0.5):
    return np.clip(alpha * x + beta, 0.0, 1.0)


def _elu(x, alpha=1.0):
    with np.errstate(over="ignore"):
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def _clip(x, lo=None, hi=None):
    return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)


# ------------------------------------------------------------------ parameter estimation
BIG = 1.0e4


def _p_leaky(f):
    a = -float(f(np.asarray([-1.0]))[0])
    return {"alpha": a} if np.isfinite(a) and a != 0.0 else None


def _p_hardsigmoid(f):
    y0, y1 = (float(v) for v in f(np.asarray([0.0, 1e-3])))
    if not 0.0 < y0 < 1.0:
        return None
    return {"alpha": round((y1 - y0) / 1e-3, 9), "beta": y0}


def _p_clip(f):
    lo, hi, at0 = (float(v) for v in f(np.asarray([-BIG, BIG, 0.0])))
    if at0 != 0.0 and not lo < at0 < hi:
        return None
    return {"lo": None if lo <= -BIG else lo, "hi": None if hi >= BIG else hi}


def _p_elu(f):
    a = -float(f(np.asarray([-60.0]))[0])
    return {"alpha": a} if np.isfinite(a) and a > 0 else None


def _p_affine(f, power: float):
    """(scale, eps) with f(x) = (scale x + eps)^power on x > 0, else None."""
    xs = np.asarray([1.0, 2.0])
    with np.errstate(all="ignore"):
        v = np.asarray(f(xs), np.float64) ** (1.0 / power)
    if not np.all(np.isfinite(v)):
        return None
    scale = float(v[1] - v[0])
    eps = float(v[0] - scale)
    if scale <= 0 or eps < -1e-12:
        return None
    return {"scale": scale, "eps": max(eps, 0.0)}


def _tails_leaky(side):
    return (lambda alpha=0.01: (alpha, 0.0)) if side == "left" else _c(1.0, 0.0)


def _t_clip_left(lo=None, hi=None):
    return (1.0, 0.0) if lo is None else (0.0, lo)


def _t_clip_right(lo=None, hi=None):
    return (1.0, 0.0) if hi is None else (0.0, hi)


def _t_hs_left(alpha=0.2, beta=0.5):
    return (0.0, 0.0) if alpha > 0 else (0.0, 1.0)


def _t_hs_right(alpha=0.2, beta=0.5):
    return (0.0, 1.0) if alpha > 0 else (0.0, 0.0)


_ENTRIES = [
    Nonlinear("gelu", lambda x: gelu(x), left=_c(0, 0), right=_c(1, 0), contraction=True, sigma="gelu",
              scope="gelu", doc="x * Phi(x) (erf form)"),
    Nonlinear("gelu_tanh", lambda x: gelu_tanh(x), left=_c(0, 0), right=_c(1, 0), contraction=True, scope="gelu",
              sigma="gelu_tanh",
              doc="0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"),
    Nonlinear("silu", lambda x: x * sigmoid(x), left=_c(0, 0), right=_c(1, 0), contraction=True, sigma="silu",
              doc="x sigmoid(x)"),
    Nonlinear("sigmoid", lambda x: sigmoid(x), left=_c(0, 0), right=_c(0, 1)),
    Nonlinear("tanh", np.tanh, left=_c(0, -1), right=_c(0, 1), contraction=True),
    Nonlinear("erf", lambda x: _erf(x), left=_c(0, -1), right=_c(0, 1)),
    Nonlinear("relu", lambda x: np.maximum(x, 0.0), left=_c(0, 0), right=_c(1, 0), contraction=True,
              doc="exact spec (passes/fit_specs uses ir.spec.relu_spec)"),
    Nonlinear("softplus", _softplus, left=_c(0, 0), right=_c(1, 0), doc="log(1 + e^x)"),
    Nonlinear("mish", lambda x: x * np.tanh(_softplus(x)), left=_c(0, 0), right=_c(1, 0), contraction=True,
              doc="x tanh(softplus(x))"),
    Nonlinear("abs", np.abs, left=_c(-1, 0), right=_c(1, 0), contraction=True),
    Nonlinear("softsign", lambda x: x / (1.0 + np.abs(x)), left=_c(0, -1), right=_c(0, 1), contraction=True,
              doc="x / (1 + |x|): asymptotes approached as 1/x, so the interior is clipped to the proven range"),
    Nonlinear("exp", np.exp, left=_c(0, 0), right=None, doc="right end: the proven (else calibrated) range"),
    Nonlinear("nexp", np.exp, domain="nonpositive", left=_c(0, 0), right=_c(0, 1), sigma="nexp", scope="softmax",
              doc="exp of x - max(x) <= 0 (softmax); 1 above 0"),
    # parametric
    Nonlinear("leaky_relu", lambda x, alpha=0.01: np.where(x >= 0, x, alpha * x), left=_tails_leaky("left"),
              right=_tails_leaky("right"), contraction=False, params=_p_leaky, doc="x >= 0 ? x : alpha x"),
    Nonlinear("hardsigmoid", _hardsigmoid, left=_t_hs_left, right=_t_hs_right, params=_p_hardsigmoid,
              doc="clip(alpha x + beta, 0, 1): exact pieces"),
    Nonlinear("hardswish", lambda x: x * _hardsigmoid(x, 1.0 / 6.0, 0.5), left=_c(0, 0), right=_c(1, 0),
              contraction=True, doc="x clip(x/6 + 1/2, 0, 1): exact pieces (one quadratic)"),
    Nonlinear("clip", _clip, left=_t_clip_left, right=_t_clip_right, params=_p_clip,
              doc="clip(x, lo, hi): exact pieces"),
    Nonlinear("elu", _elu, left=lambda alpha=1.0: (0.0, -alpha), right=_c(1, 0), params=_p_elu,
              doc="x > 0 ? x : alpha (e^x - 1)"),
    # positive domain: geometric pieces over the whole proven range
    Nonlinear("reciprocal", lambda x, scale=1.0, eps=0.0: 1.0 / (scale * x + eps), domain="positive",
              sigma="reciprocal", policy="geometric", params=lambda f: _p_affine(f, -1.0),
              doc="1 / (scale x + eps)"),
    Nonlinear("rsqrt", lambda x, scale=1.0, eps=0.0: 1.0 / np.sqrt(scale * x + eps), domain="positive", sigma="rsqrt",
              scope="layernorm", policy="geometric", params=lambda f: _p_affine(f, -0.5),
              doc="1 / sqrt(scale x + eps): a layer norm's (attrs rsqrt_scale, rsqrt_eps) or an RMSNorm written out"),
    Nonlinear("sqrt", np.sqrt, domain="positive", policy="geometric"),
]

#: label -> entry
NONLINEAR: dict[str, Nonlinear] = {e.label: e for e in _ENTRIES}

#: labels with a SIGMA construction (``--gates sigma``)
SIGMA_LABELS = frozenset(e.label for e in _ENTRIES if e.sigma)
#: labels with |f(x)| <= |x| everywhere
CONTRACTIONS = frozenset(e.label for e in _ENTRIES if e.contraction)

# the order labels are tried in (first match wins): plain functions before parametric ones
_FIXED = ["gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "relu", "exp", "softplus", "mish", "erf", "abs",
          "hardswish", "softsign"]
_PARAMETRIC = ["leaky_relu", "hardsigmoid", "elu", "clip"]
_POSITIVE = ["reciprocal", "rsqrt", "sqrt"]


def entry(label: str | None) -> Nonlinear | None:
    return NONLINEAR.get(label or "")


def scope(label: str | None) -> str:
    e = entry(label)
    return e.scope if e else "other"


def identify(f: Callable[[np.ndarray], np.ndarray]) -> tuple[str, dict]:
    """(label, params) of the function ``f`` (float numpy in, out), or ('custom', {})."""
    grid = np.linspace(-6, 6, 241)
    wide = np.concatenate([-np.geomspace(BIG, 6.0, 40), grid, np.geomspace(6.0, BIG, 40)])
    pos = np.geomspace(1e-3, 1e3, 241)
    with np.errstate(all="ignore"):
        y, yp, yw = f(grid), f(pos), f(wide)
        for name in _FIXED:
            if np.all(np.isfinite(y)) and np.allclose(y, NONLINEAR[name].ref(grid), rtol=1e-4, atol=1e-5):
                # and far out, where the reference is finite (relu6 = clip(x, 0, 6) is not relu)
                rw = NONLINEAR[name].ref(wide)
                m = np.isfinite(rw)
                if np.all(np.isfinite(yw[m])) and np.allclose(yw[m], rw[m], rtol=1e-4, atol=1e-5):
                    return name, {}
        if np.all(np.isfinite(y)):
            for name in _PARAMETRIC:
                e = NONLINEAR[name]
                p = e.params(f)
                if p is None:
                    continue
                ref = e.ref(wide, **p)
                if np.all(np.isfinite(yw)) and np.allclose(yw, ref, rtol=1e-6, atol=1e-7):
                    return name, p
        for name in _POSITIVE:
            if np.all(np.isfinite(yp)) and np.allclose(yp, NONLINEAR[name].ref(pos), rtol=1e-4, atol=1e-7):
                return name, {}
        # of an affine argument: 1/sqrt(x/k + eps) (RMSNorm). (1/(a x + b) is left "custom": the SIGMA
        # lowering of a reciprocal needs the block's domain, which a written-out chain does not carry.)
        if np.all(np.isfinite(yp)):
            for name in ("rsqrt",):
                p = NONLINEAR[name].params(f)
                if p is not None and np.allclose(yp, NONLINEAR[name].ref(pos, **p), rtol=1e-6, atol=1e-9):
                    return name, p
    return "custom", {}


# ------------------------------------------------------------------ fitting domains
@dataclass
class Domain:
    lo: float
    hi: float
    left: Tail
    right: Tail
    geometric: bool = False   # pieces spaced geometrically (1/x, 1/sqrt x)
    note: str = ""
    exact_for: tuple[float, float] = field(default=(-math.inf, math.inf))   # where the spec is within bound


def _as_callable(fn) -> Callable[[np.ndarray], np.ndarray]:
    if callable(fn):
        return lambda x: np.asarray(fn(np.asarray(x, np.float64)), np.float64)
    from fusec.ir import scalar_fn  # noqa: PLC0415
    return lambda x: scalar_fn.evaluate(fn, np.asarray(x, np.float64))


def _finite(iv) -> tuple[float, float] | None:
    if iv is None:
        return None
    lo, hi = float(iv[0]), float(iv[1])
    return (lo, hi) if lo <= hi else None


def _switch(err: Callable[[np.ndarray], np.ndarray], side: int, tol: float, start: float, x_max: float) -> float | None:
    """Where the asymptote takes over: the point t (toward ``side``, +1 right / -1 left) such
    that err(x) <= tol for every sampled x beyond t, up to |x| = x_max; None if even the
    far end is outside tol (then the function has no such asymptote)."""
    near = np.linspace(start, start + side * 64.0, 8193)
    far = start + side * np.geomspace(64.0, max(x_max, 128.0), 4000)
    xs = np.concatenate([near, far])             # ordered away from ``start``
    with np.errstate(all="ignore"):
        e = err(xs)
    bad = ~(np.isfinite(e) & (e <= tol))
    if bad[-1]:
        return None
    if not bad.any():
        return float(start)
    last = int(np.nonzero(bad)[0][-1])
    return float(xs[min(last + 1, xs.size - 1)])


def fit_domain(label: str | None, fn, frac: int, calibrated, f_out: int, proven=None,
               attrs: dict | None = None) -> Domain:
    """The interval a spec of ``label`` is fitted on, and its exact tails.

    ``fn``: the function (a ``scalar_fn`` dict or a float callable); ``frac``: the
    activation grid's fractional bits; ``calibrated``: (lo, hi) seen in calibration;
    ``f_out``: output fractional bits; ``proven``: (lo, hi) holding for every input, or
    None / infinite where nothing is proven; ``attrs``: the node's attributes (``params``
    of a parametric entry, ``domain`` set by a block expansion, ``rsqrt_scale`` /
    ``rsqrt_eps`` of a layer norm) plus optional ``bound_ulps`` (the error bound, output
    ulps; default 8) and ``ring_bits``.

    Table entries with asymptotes get an interior wide enough that the asymptote is within
    a quarter of the bound beyond it (exact tails). Positive-domain entries are fitted with
    geometric pieces over their whole proven range. A "custom" function is fitted on its
    proven range when finite, else its calibrated range (the note says it is held constant
    outside). Every saturation inside the proven range is stated in ``note``.
    """
    attrs = dict(attrs or {})
    lab = label or "custom"
    f = _as_callable(fn)
    e = entry(lab)
    params = dict(attrs.get("params") or (fn.get("params") if isinstance(fn, dict) else None) or {})
    bound = float(attrs.get("bound_ulps", 8.0))
    tol = min(1.0, bound / 4) * 2.0 ** -f_out            # asymptote error allowed (real units)
    bits = int(attrs.get("ring_bits", 64))
    x_max = 2.0 ** max(8, min(30, bits - frac - 2))      # the largest |x| the ring holds, capped
    cal = _finite(calibrated) or (-1.0, 1.0)
    prv = _finite(proven)
    dom_attr = attrs.get("domain") or [None, None]
    if dom_attr[0] is not None or dom_attr[1] is not None:
        # a block's structural domain (softmax's row sum in [1, k], x - max x <= 0, a sum of squares
        # >= 0) is proven too. Nonzero ends are widened for the errors of the specs that feed them
        # (softmax: k terms, each within the bound): zero ends are exact in fixed point.
        k_est = abs(dom_attr[1]) if dom_attr[1] is not None and math.isfinite(dom_attr[1]) else 1.0
        slack = k_est * bound * 2.0 ** -frac
        lo_d = -math.inf if dom_attr[0] is None else (
            max(0.5 * dom_attr[0], dom_attr[0] - slack) if dom_attr[0] > 0 else float(dom_attr[0]))
        hi_d = math.inf if dom_attr[1] is None else (
            dom_attr[1] * (1 + 2.0 ** -6) + slack if dom_attr[1] > 0 else float(dom_attr[1]))
        if prv is None:
            prv = (lo_d, hi_d) if math.isfinite(lo_d) and math.isfinite(hi_d) else None
        else:
            new = (max(prv[0], lo_d), min(prv[1], hi_d))
            prv = new if new[0] <= new[1] else (lo_d, hi_d)
    finite_prv = prv if prv is not None and all(map(math.isfinite, prv)) else None
    val = lambda x: float(f(np.asarray([x], np.float64))[0])  # noqa: E731

    if e is not None and e.domain == "positive" or (e is None and dom_attr[0] == 0.0):
        return _positive(lab, f, val, frac, cal, prv, dom_attr, attrs, bits, f_out)
    if e is not None and (e.left is not None or e.right is not None):
        return _asymptotic(lab, e, params, f, val, frac, cal, prv, finite_prv, tol, x_max, f_out, dom_attr)
    return _custom(lab, f, val, frac, cal, finite_prv, bits, f_out)


def _asymptotic(lab, e, params, f, val, frac, cal, prv, finite_prv, tol, x_max, f_out, dom_attr) -> Domain:
    notes = []
    tails, ends = {}, {}
    for side, sgn, asym in (("left", -1, e.left), ("right", 1, e.right)):
        if side == "right" and e.domain == "nonpositive":
            # x > 0 is outside the (structural) domain; a block may allow up to its ``domain``'s small
            # positive end (softmax's coarse max), where the function itself is fitted
            end = float(dom_attr[1]) if dom_attr[1] is not None and dom_attr[1] > 0 else 0.0
            a, b = asym(**params) if asym is not None and end == 0.0 else (0.0, val(end))
            tails[side], ends[side] = Tail(a, b), end
            continue
        if asym is None:
            tails[side] = None
            continue
        a, b = asym(**params)
        err = lambda x, a=a, b=b: np.abs(f(x) - (a * x + b))  # noqa: E731
        t = _switch(err, sgn, tol, 0.0, x_max)
        if t is None:
            raise CompileError(f"{lab}: the function is not within {tol:g} of its {side} asymptote {a:g}x{b:+g} "
                               f"(is it really {lab}?)")
        # a sloped tail must be exact (coefficients and ring) over the whole proven range; unproven, the
        # fit keeps a non-dyadic slope within 1/4 ulp to 16x the interval (ir.spec._tail_scale)
        reach = max(abs(finite_prv[0]), abs(finite_prv[1])) if finite_prv else 0.0
        tails[side], ends[side] = Tail(a, b, exact_to=reach if a != 0.0 else 0.0), t
    # the side without an asymptote ends at the proven (else calibrated) range
    lo, hi = ends.get("left"), ends.get("right")
    if hi is None:
        top = finite_prv[1] if finite_prv else cal[1] + 0.25 * max(cal[1] - cal[0], 1.0)
        hi = max(top, (lo or 0.0) + 1.0)
        tails["right"] = Tail(0.0, val(hi))
        if not finite_prv:
            notes.append(f"{lab} held at {val(hi):.4g} above {hi:.4g} (no proven bound; calibrated max {cal[1]:.4g})")
    if lo is None:
        bot = finite_prv[0] if finite_prv else cal[0] - 0.25 * max(cal[1] - cal[0], 1.0)
        lo = min(bot, hi - 1.0)
        tails["left"] = Tail(0.0, val(lo))
        if not finite_prv:
            notes.append(f"{lab} held at {val(lo):.4g} below {lo:.4g} (no proven bound; calibrated min {cal[0]:.4g})")
    # the interior is clipped to the proven range (beyond it the asymptote is used; say how far off it is)
    if finite_prv is not None and e.left is not None and e.right is not None:
        p_lo, p_hi = finite_prv
        w = max(p_hi - p_lo, 1.0) / 16
        new_lo, new_hi = max(lo, p_lo - w), min(hi, p_hi + w)
        if new_hi - new_lo >= 1.0 and (new_lo > lo or new_hi < hi):
            worst = 0.0
            for side, a_, b_ in ((-1, new_lo, lo), (1, new_hi, hi)):
                if a_ != b_:
                    xs = np.linspace(min(a_, b_), max(a_, b_), 2049)
                    t = tails["left" if side < 0 else "right"]
                    worst = max(worst, float(np.max(np.abs(f(xs) - (t.slope * xs + t.offset)))))
            if worst > tol:
                notes.append(f"{lab}: interior clipped to the proven range [{p_lo:.4g}, {p_hi:.4g}] (+/-{w:.3g}); "
                             f"outside it the asymptotes are off by up to {worst * 2.0 ** f_out:.3g} ulps "
                             f"until [{lo:.4g}, {hi:.4g}]")
            lo, hi = new_lo, new_hi
    if hi - lo < 2.0:                            # kinks (relu, leaky relu, abs): a small interior around them
        c = 0.5 * (lo + hi)
        lo, hi = min(lo, c - 1.0), max(hi, c + 1.0)
    # snap to the activation grid (the fit floors the ends)
    g = 2.0 ** -frac
    lo, hi = math.floor(lo / g) * g, math.ceil(hi / g) * g
    return Domain(lo, hi, tails["left"], tails["right"], note="; ".join(notes))


def _custom(lab, f, val, frac, cal, finite_prv, bits, f_out) -> Domain:
    """A function with no table entry: its proven range when finite, else its calibrated range
    widened by a quarter (held constant outside, the note says so). Where the function is not
    finite, or larger than the ring holds at the output scale, inside that range, the interval
    is cut to the run of good values around the calibrated range and the note says where and
    what the function reaches there."""
    if finite_prv is not None:
        lo0, hi0 = finite_prv
        src = "proven"
    else:
        lo0, hi0 = cal
        src = "calibrated"
    span = max(hi0 - lo0, 2.0 ** -frac * 16)
    lo, hi = (lo0, hi0) if src == "proven" else (lo0 - 0.25 * span, hi0 + 0.25 * span)
    if hi - lo < 2.0 ** -frac * 16:
        lo, hi = lo - 8 * 2.0 ** -frac, hi + 8 * 2.0 ** -frac
    notes = []
    cap = 2.0 ** (bits - f_out - 16)          # leaves the fit room for its poly_scale
    xs = np.unique(np.concatenate([np.linspace(lo, hi, 16385), np.clip(np.asarray(cal, np.float64), lo, hi)]))
    with np.errstate(all="ignore"):     # functions defined on part of the line only (log, sqrt, 1/x)
        ys = f(xs)
    good = np.isfinite(ys) & (np.abs(ys) < cap)
    if not good.all():
        mid = min(max(0.5 * (cal[0] + cal[1]), lo), hi)
        k = int(np.argmin(np.abs(xs - mid)))
        if not good[k]:
            k = int(np.nonzero(good)[0][np.argmin(np.abs(np.nonzero(good)[0] - k))]) if good.any() else k
        a = k
        while a > 0 and good[a - 1]:
            a -= 1
        b = k
        while b < xs.size - 1 and good[b + 1]:
            b += 1
        for end, idx, side in ((lo, a, "below"), (hi, b, "above")):
            if (side == "below" and idx > 0) or (side == "above" and idx < xs.size - 1):
                bad = ys[:idx] if side == "below" else ys[idx + 1:]
                fin = bad[np.isfinite(bad)]
                reach = f"reaches |f| = {np.max(np.abs(fin)):.4g}" if fin.size else "is not finite"
                notes.append(f"{lab} held at {ys[idx]:.4g} {side} {xs[idx]:.4g}: the function {reach} "
                             f"between there and {end:.4g} ({src} range; not finite or beyond the "
                             f"{bits}-bit ring at 2^-{f_out})")
        lo, hi = float(xs[a]), float(xs[b])
        if hi - lo < 2.0 ** -frac * 16:
            hi = lo + 2.0 ** -frac * 16
    if src == "calibrated":
        notes.append(f"{lab} fitted on its calibrated range [{lo:.4g}, {hi:.4g}] (nothing proven), "
                     f"held constant outside")
    return Domain(lo, hi, Tail(0.0, val(lo)), Tail(0.0, val(hi)), note="; ".join(notes),
                  exact_for=(lo, hi))


#: the absolute widening passes/ranges adds to every proven bound (a proven 0 reads -2^-6)
PROVEN_ABS_MARGIN = 2.0 ** -6


def _positive(lab, f, val, frac, cal, prv, dom_attr, attrs, bits, f_out) -> Domain:
    """reciprocal / rsqrt / sqrt (and any function of a domain starting at 0): geometric
    pieces over the whole proven range [lo, hi]; below one input ulp the value of the first
    grid point is held (the note says what the function reaches at 0)."""
    g = 2.0 ** -frac
    notes = []
    p_lo = prv[0] if prv is not None else -math.inf
    p_hi = prv[1] if prv is not None else math.inf
    with np.errstate(all="ignore"):
        at0 = val(0.0)
    if prv is not None and p_lo < -2 * PROVEN_ABS_MARGIN and dom_attr[0] is None:
        raise CompileError(f"{lab} of a tensor whose proven range reaches {p_lo:g} < 0 (for some admissible input)",
                           "only positive inputs are supported for reciprocal / rsqrt / sqrt (a pole or branch "
                           "point at 0); narrow the input contract with --input-range if the inputs are positive")
    if p_lo <= 0 and not np.isfinite(at0) and prv is None and cal[0] <= 0:
        raise CompileError(f"{lab} of a tensor that reaches {cal[0]:g} <= 0 in calibration",
                           "only positive inputs are supported for reciprocal / rsqrt (a pole at 0)")
    # the bottom: the proven lower end, but at least one ulp of the activation grid
    lo = max(p_lo if math.isfinite(p_lo) else (cal[0] / 64 if cal[0] > 0 else g), g)
    # the largest value the ring holds at the output scale with room for the fit's guard bits
    cap = 2.0 ** (bits - 3 - f_out - 4)
    while val(lo) > cap and lo < 2.0 ** 20:
        lo *= 2.0
    if prv is None or not math.isfinite(p_lo):
        notes.append(f"{lab} held at {val(lo):.4g} below {lo:.4g} (no proven lower bound; calibrated min {cal[0]:.4g})")
    elif p_lo < lo:
        reach = at0 if p_lo <= 0 else val(p_lo)
        why = "one input ulp" if lo == max(p_lo, g) else "the largest value the ring holds"
        notes.append(f"{lab} held at {val(lo):.4g} below {lo:.4g} ({why}); the proven range reaches "
                     f"{max(p_lo, 0.0):.4g}, where it is {reach:.4g}")
    if math.isfinite(p_hi) and p_hi > lo:
        hi = p_hi
    elif dom_attr[1] is not None:
        hi = float(dom_attr[1])
    else:
        hi = max(cal[1] * 4.0, lo * 2 + 1.0)
        notes.append(f"{lab} held at {val(hi):.4g} above {hi:.4g} (no proven bound; calibrated max {cal[1]:.4g})")
    hi = max(hi, lo * 2)
    if hi / lo > 8 and val(lo) > 1:
        notes.append(f"{lab}: error relative above 1 (stated in ulps of f({lo:.4g}) = {val(lo):.4g}; the spec's "
                     f"notes give the relative error)")
    return Domain(lo, hi, Tail(0.0, val(lo)), Tail(0.0, val(hi)), geometric=hi / lo > 8,
                  note="; ".join(notes), exact_for=(lo, hi))
