"""CUDA source generation for the GPU backend (DESIGN §5.2, §5.3, §7).

``render(config)`` turns ``templates/fss_kernels.cu.j2`` into the ``kernels.cu`` of a build:
the generic kernels (fixed-key AES-MMO, PRG children and value blocks, the AES-CTR
keystream, DCF/DPF walks with run-time shapes, bit packing, matmul helpers) plus one
specialized instance per DCF shape ``(n, m, w)``, DPF domain width and packing width the
program uses, so their loops unroll over compile-time constants. The output is a pure
function of the config (sorted, deduplicated), so the manifest can hash it.

The AES tables and the AES-128 key schedule are computed here in Python: the T-table is
stamped into the source, the round keys of the fixed PRG keys are uploaded by the runtime
wrapper (``runtime/gpu_kernels.py``) once per module, and the CTR keys once per key.

``compile_check`` and ``compile_host_library`` run ``nvcc``: the first builds a cubin for a
GPU architecture (catches device-side errors without a GPU), the second builds the host
test harness (``-DFUSEC_HOST_TEST``) whose ``extern "C"`` loops run the same per-element
code on the CPU, so CI checks the kernels' logic bit for bit against numpy.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

import fusec.templates
from fusec.errors import FusecError, ParameterError
from fusec.runtime.dpf_arc import DpfArc
from fusec.runtime.dpf_trie import MAX_TRIE_POINTS

TEMPLATE = "fss_kernels.cu.j2"
BLOCK_SIZE = 256

#: DPF evaluation modes -> the C constant selecting them in ``dpf_one``.
DPF_MODES: dict[str, str] = {"eval": "FUSEC_DPF_EVAL", "prefix": "FUSEC_DPF_PREFIX", "lt": "FUSEC_DPF_LT"}

#: Largest payload length stamped as a register-resident specialization (beyond it the
#: accumulators would spill; the generic kernel accumulates in the output row instead).
MAX_SPECIALIZED_M = 64


class CudaCompileError(FusecError):
    """nvcc rejected a generated source (the message carries nvcc's diagnostics)."""


# ------------------------------------------------------------------------------ config
def _bits(v: int, what: str) -> int:
    if not isinstance(v, int) or not 1 <= v <= 64:
        raise ParameterError(f"{what} must be between 1 and 64 bits, got {v!r}")
    return v


@dataclass(frozen=True)
class KernelConfig:
    """What a program needs specialized; everything else runs on the generic kernels.

    ``dcf_shapes``: DCF (domain bits n, payload length m, payload bits w);
    ``dpf_widths``: DPF domain bits (each gets eval, prefix-parity and less-than kernels);
    ``ring_widths``: bit widths of opened values (packing/unpacking specializations; matmul
    takes its width at run time because a mask costs nothing there).
    ``dpf_arcs``: the packed comparisons' arc walks (runtime/dpf_arc.py), one generated
    function each, straight-line from the arc's plan.
    ``inline_aes``: inline the AES into every call site instead of one out-of-line copy per
    kernel (compiles several times slower; the benchmark compares the two).
    Normalized on construction (sorted, deduplicated, validated) so equal sets render equal text.
    """

    dcf_shapes: tuple[tuple[int, int, int], ...] = ()
    dpf_widths: tuple[int, ...] = ()
    ring_widths: tuple[int, ...] = ()
    block_size: int = BLOCK_SIZE
    inline_aes: bool = False
    dpf_arcs: tuple[DpfArc, ...] = ()

    def __post_init__(self) -> None:
        shapes = set()
        for shape in self.dcf_shapes:
            n, m, w = (int(v) for v in shape)
            _bits(n, "DCF domain width")
            _bits(w, "DCF payload width")
            if not 1 <= m <= MAX_SPECIALIZED_M:
                raise ParameterError(f"DCF payload length {m} cannot be specialized",
                                     f"use 1..{MAX_SPECIALIZED_M}; longer payloads run on the generic kernel")
            shapes.add((n, m, w))
        dpf = {_bits(int(n), "DPF domain width") for n in self.dpf_widths}
        rings = {_bits(int(b), "ring width") for b in self.ring_widths}
        object.__setattr__(self, "dcf_shapes", tuple(sorted(shapes)))
        object.__setattr__(self, "dpf_widths", tuple(sorted(dpf)))
        object.__setattr__(self, "ring_widths", tuple(sorted(rings)))
        object.__setattr__(self, "dpf_arcs", tuple(sorted(set(self.dpf_arcs), key=lambda a: (a.n, a.offsets))))
        if self.block_size not in (128, 256):
            raise ParameterError(f"block size {self.block_size} is not supported", "use 256 (or 128)")

    def merged(self, other: "KernelConfig") -> "KernelConfig":
        """The union of two configs (e.g. the default shapes plus a program's own)."""
        return KernelConfig(self.dcf_shapes + other.dcf_shapes, self.dpf_widths + other.dpf_widths,
                            self.ring_widths + other.ring_widths, self.block_size, self.inline_aes,
                            self.dpf_arcs + other.dpf_arcs)


def default_config() -> KernelConfig:
    """Shapes the gate library uses at the baselines' rings n = 37, 50, 64 (DESIGN §4, §5).

    DCF: 1-bit and n-bit payloads (comparisons, truncation), spline payloads of 2..5 n-bit
    coefficients (compiled scalar gates of degree 1..4), and 12-bit domains (truncation by
    f = 12). DPF: n and n - 1 (DReLU's less-than), 12 (truncation). Packing: 1, 2 and n bits.
    """
    rings = (37, 50, 64)
    dcf = [(n, 1, 1) for n in rings] + [(n, m, n) for n in rings for m in (1, 2, 3, 4, 5)]
    dcf += [(12, 1, n) for n in rings]
    dpf = [w for n in rings for w in (n, n - 1)] + [12]
    return KernelConfig(tuple(dcf), tuple(dpf), (1, 2) + rings)


# ------------------------------------------------------------------------------ kernel names
#: Kernels that take every shape at run time; a specialization is used when it exists.
DCF_GENERIC = "fusec_dcf_eval_generic"
PACK_GENERIC = ("fusec_pack_bits_generic", "fusec_unpack_bits_generic")


def dcf_kernel_name(n: int, m: int, w: int) -> str:
    """Name of the DCF kernel specialized for (n, m, w) (present if the config lists it)."""
    return f"fusec_dcf_eval_n{n}_m{m}_w{w}"


def dpf_kernel_name(mode: str, n: int | None) -> str:
    """Name of the DPF kernel for ``mode`` in DPF_MODES, specialized for n (None: generic)."""
    if mode not in DPF_MODES:
        raise ParameterError(f"unknown DPF mode {mode!r}", f"choose one of {sorted(DPF_MODES)}")
    return f"fusec_dpf_{mode}_{'generic' if n is None else f'n{n}'}"


def dpf_arc_kernel_name(arc: DpfArc) -> str:
    """Name of the arc walk generated for ``arc`` (its width and a digest of its offsets)."""
    digest = hashlib.blake2b(",".join(map(str, arc.offsets)).encode(), digest_size=5).hexdigest()
    return f"fusec_dpf_lt_arc_n{arc.n}_{digest}"


def _arc_instance(plan: DpfArc) -> dict:
    """The compile-time plan of one arc walk, as the template stamps it (runtime/dpf_arc.py)."""
    runs = []
    for cols, arc in plan.runs:
        R = arc.range_depth
        levels = [{"l": lv, "count": arc.count(lv), "even": arc.parents(lv)[0], "odd": arc.parents(lv)[1]}
                  for lv in range(1, R + 1)]
        runs.append({"cols": cols, "span": arc.span, "aes": arc.aes_per_eval(), "start": arc.start,
                     "offsets": arc.offsets, "rel": arc.rel, "levels": levels,
                     "cmax": max(arc.count(lv) for lv in range(R + 1)), "range_depth": R, "count_r": arc.count(R),
                     "full_r": arc.full(R), "leaves_in_range": arc.switch > arc.depth, "switch": arc.switch,
                     "depth": arc.depth})
    return {"name": dpf_arc_kernel_name(plan), "n": plan.n, "M": plan.points, "aes": plan.aes_per_eval(),
            "plain_aes": plan.plain_aes_per_eval(), "mask": (1 << plan.n) - 1,
            "leaf_mask": (1 << min(7, plan.n)) - 1, "runs": runs}


def pack_kernel_names(bits: int) -> tuple[str, str]:
    """(pack kernel, unpack kernel) specialized for values of ``bits`` bits."""
    return f"fusec_pack_bits_b{bits}", f"fusec_unpack_bits_b{bits}"


# ------------------------------------------------------------------------------ AES tables
def _xtime(b: int) -> int:
    """Multiply by x in GF(2^8) mod x^8 + x^4 + x^3 + x + 1."""
    b <<= 1
    return (b ^ 0x11B) if b & 0x100 else b


@functools.cache
def aes_sbox() -> tuple[int, ...]:
    """The AES S-box from its definition (inverse in GF(2^8), then the affine map)."""
    exp, log = [0] * 255, [0] * 256
    p = 1
    for i in range(255):  # 3 generates the multiplicative group
        exp[i], log[p] = p, i
        p ^= _xtime(p)
    box = []
    for a in range(256):
        b = 0 if a == 0 else exp[(255 - log[a]) % 255]
        s = b
        for r in range(1, 5):
            s ^= ((b << r) | (b >> (8 - r))) & 0xFF
        box.append(s ^ 0x63)
    return tuple(box)


@functools.cache
def aes_t0() -> tuple[int, ...]:
    """T0[x] = the MixColumns column (2S, S, S, 3S) of S = SBOX[x], as a little-endian word."""
    out = []
    for s in aes_sbox():
        s2 = _xtime(s)
        out.append(s2 | (s << 8) | (s << 16) | ((s2 ^ s) << 24))
    return tuple(out)


@functools.cache
def expand_key(key: bytes) -> tuple[int, ...]:
    """AES-128 key schedule: 44 round-key words, each the little-endian uint32 of 4 bytes.

    FIPS-197 §5.2 on bytes; the little-endian packing matches the kernels' column words.
    """
    key = bytes(key)
    if len(key) != 16:
        raise ParameterError(f"an AES-128 key has 16 bytes, got {len(key)}")
    sbox = aes_sbox()
    w = [list(key[4 * i: 4 * i + 4]) for i in range(4)]
    rcon = 1
    for i in range(4, 44):
        t = list(w[i - 1])
        if i % 4 == 0:
            t = [sbox[b] for b in t[1:] + t[:1]]
            t[0] ^= rcon
            rcon = _xtime(rcon)
        w.append([a ^ b for a, b in zip(w[i - 4], t)])
    return tuple(int.from_bytes(bytes(col), "little") for col in w)


# ------------------------------------------------------------------------------ rendering
@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(fusec.templates.__file__).resolve().parent)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _instances(config: KernelConfig) -> dict[str, list[dict]]:
    """The kernel instances to stamp; the generic one of each family has zero parameters."""
    dcf = [{"name": dcf_kernel_name(n, m, w), "n": n, "m": m, "w": w} for n, m, w in config.dcf_shapes]
    dcf.append({"name": DCF_GENERIC, "n": 0, "m": 0, "w": 0})
    dpf = [{"name": dpf_kernel_name(mode, n), "n": n or 0, "mode": c}
           for mode, c in DPF_MODES.items() for n in (*config.dpf_widths, None)]
    pack = [{"pack_name": p, "unpack_name": u, "bits": b, "name": f"b{b}"}
            for b in config.ring_widths for p, u in [pack_kernel_names(b)]]
    pack.append({"pack_name": PACK_GENERIC[0], "unpack_name": PACK_GENERIC[1], "bits": 0, "name": "generic"})
    return {"dcf": dcf, "dpf": dpf, "pack": pack, "arcs": [_arc_instance(a) for a in config.dpf_arcs]}


def render(config: KernelConfig | None = None) -> str:
    """The full kernels.cu source for ``config`` (default: :func:`default_config`)."""
    config = config or default_config()
    summary = (f"{len(config.dcf_shapes)} DCF shapes, {len(config.dpf_widths)} DPF widths, "
               f"{len(config.ring_widths)} packing widths, {len(config.dpf_arcs)} DPF arcs, block {config.block_size}"
               f"{', inlined AES' if config.inline_aes else ''}")
    return _environment().get_template(TEMPLATE).render(
        t0=aes_t0(), block_size=config.block_size, inline_aes=config.inline_aes, config_summary=summary,
        trie_max_points=MAX_TRIE_POINTS,
        **_instances(config))


# ------------------------------------------------------------------------------ nvcc
def nvcc_path() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH / /usr/local/cuda; None if absent."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def _run_nvcc(src: str, out_name: str, flags: list[str], out_dir: Path) -> Path:
    nvcc = nvcc_path()
    if nvcc is None:
        raise CudaCompileError("nvcc was not found", "install the CUDA toolkit or set CUDA_HOME")
    out_dir.mkdir(parents=True, exist_ok=True)
    cu = out_dir / "kernels.cu"
    cu.write_text(src)
    out = out_dir / out_name
    cmd = [nvcc, "-std=c++17", *flags, "-o", str(out), str(cu)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CudaCompileError(f"nvcc failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}",
                               "the generated CUDA source does not compile; see nvcc's messages above")
    return out


def compile_check(src: str, arch: str = "sm_90") -> None:
    """Compile ``src`` for the device with ``nvcc -arch=<arch> -cubin``; raise on failure."""
    with tempfile.TemporaryDirectory(prefix="fusec-nvcc-") as tmp:
        _run_nvcc(src, "kernels.cubin", [f"-arch={arch}", "-cubin"], Path(tmp))


def compile_host_library(src: str, out_dir: str | Path) -> Path:
    """Build the host test harness (``-DFUSEC_HOST_TEST``) as a shared library in ``out_dir``."""
    return _run_nvcc(src, "libfusec_host.so",
                     ["-O2", "-shared", "-Xcompiler", "-fPIC", "-DFUSEC_HOST_TEST", "-x", "cu"], Path(out_dir))
