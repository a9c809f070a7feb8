"""What to run: the options of ``fusec bench`` and the grid of configurations they span."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fusec.bench.presets import ModelSpec
from fusec.bench.util import unique
from fusec.errors import FusecError

if TYPE_CHECKING:                                   # the package imports the standard library only
    from fusec.runtime.shaping import NetSetting

GATE_SETS = ("fused", "sigma")
#: How the parties run a set (``config.runtime``): interpreted gate by gate, replayed launch plans
#: (--cuda-graphs), or interpreted with keys copied to the device inside the clock (--stream-keys).
RUNTIMES = {"--cuda-graphs": "launch plans", "--stream-keys": "keys in clock"}
DEFAULT_RUNTIME = "interpreted"
#: The name suffix of each runtime but the default: results of one configuration under two runtimes
#: must not merge as one (util.load_results keys on the name).
RUNTIME_TAGS = {"launch plans": "plans", "keys in clock": "keys-in-clock"}


def runtime_of(party_argv) -> str:
    """The runtime that the workers' options select (the CLI refuses both flags at once)."""
    return next((name for flag, name in RUNTIMES.items() if flag in party_argv), DEFAULT_RUNTIME)


def stripes_of(party_argv) -> int:
    """The TCP connections the workers used: their ``--stripes`` (the bench records it since
    4 became the default), else 1 (files from before ran on one connection)."""
    argv = list(party_argv or [])
    return int(argv[argv.index("--stripes") + 1]) if "--stripes" in argv[:-1] else 1


@dataclass(frozen=True)
class Case:
    """One configuration: what is compiled (model, seq, batch, gates, padding) and where
    the parties run (GPUs; None on the CPU backend)."""

    model: ModelSpec
    seq: int
    batch: int
    gates: str
    gpus: int | None
    padded: bool = True
    net: NetSetting | None = None           # an emulated link between the parties (--net), None: loopback as is
    runtime: str = DEFAULT_RUNTIME          # RUNTIMES: how the parties run each set
    lanes: int = 1                          # pairs of workers in flight at once, each on batch / lanes (--lanes)
    compile_args: tuple[str, ...] = ()      # more `fusec compile` arguments (--compile-arg), e.g. --max-tree packed

    @property
    def compile_tag(self) -> str:
        """The compile arguments as a name part: ``--max-tree packed`` -> ``max-tree-packed``."""
        return "-".join(a.lstrip("-").replace("=", "-") for a in self.compile_args)

    @property
    def lane_batch(self) -> int:
        """The batch each lane's build is compiled for: a batch of ``batch`` runs as ``lanes``
        concurrent inferences of ``batch / lanes`` (fusec/bench/lanes.py)."""
        return self.batch // self.lanes

    @property
    def gate_label(self) -> str:
        return self.gates if self.padded else f"{self.gates}-unpadded"

    @property
    def name(self) -> str:
        where = "cpu" if self.gpus is None else f"{self.gpus}gpu"
        net = "" if self.net is None else f"/{self.net.name}"
        run = f"/{RUNTIME_TAGS[self.runtime]}" if self.runtime in RUNTIME_TAGS else ""
        lanes = f"/{self.lanes}x{self.lane_batch}" if self.lanes > 1 else ""
        built = f"/{self.compile_tag}" if self.compile_args else ""
        return f"{self.model.label}/seq{self.seq}/b{self.batch}{lanes}/{self.gate_label}{built}/{where}{net}{run}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "_")

    @property
    def build_slug(self) -> str:
        """Builds do not depend on where the parties run: one compile serves every GPU count."""
        built = f"_{self.compile_tag}" if self.compile_args else ""
        return f"{self.model.label}_n{self.model.bits}_seq{self.seq}_b{self.lane_batch}_{self.gate_label}{built}"

    def as_dict(self, opts: "BenchOptions") -> dict:
        return {"name": self.name, "model": self.model.name, "label": self.model.label, "model_file": self.model.path,
                "layers": self.model.layers, "seq": self.seq, "batch": self.batch,
                "internal_batch": opts.internal_batch, "gates": self.gates, "padded": self.padded,
                "gpus": self.gpus, "backend": opts.backend, "bits": self.model.bits,
                "warmup": opts.warmup, "repeat": opts.repeat,
                "net": None if self.net is None else self.net.as_dict(), "runtime": self.runtime,
                "lanes": self.lanes, "lane_batch": self.lane_batch, "compile_args": list(self.compile_args),
                "stripes": stripes_of(opts.party_argv)}


@dataclass
class BenchOptions:
    """Everything ``fusec bench`` was asked to do (also recorded in the JSON)."""

    models: list[ModelSpec]
    seqs: list[int] = field(default_factory=lambda: [128])
    batches: list[int] = field(default_factory=lambda: [1])
    seq_sweep: list[int] = field(default_factory=list)
    internal_batch: int = 4
    gates: list[str] = field(default_factory=lambda: list(GATE_SETS))
    gpus: list[int] = field(default_factory=lambda: [1])
    nets: list[NetSetting | None] = field(default_factory=lambda: [None])     # --net, each a run of the grid
    backend: str = "cpu"
    warmup: int = 1
    repeat: int = 5
    workdir: Path = Path("bench-work")
    keys_dir: Path | None = None
    keys_mode: str = "auto"
    dealers: int = 1
    padding_ablation: bool = False
    timeout: float = 1800.0
    keep_going: bool = False
    json_path: Path | None = None
    markdown_path: Path | None = None
    command: str = ""
    party_argv: list[str] = field(default_factory=list)     # more worker options: --tls-* (fusec.party_cli)
    gate_microbench: dict | None = None     # --gate-speedups: per-gate speed-ups measured alone (bench/amdahl.py)
    lanes: int = 1                          # --lanes: a batch as this many concurrent worker pairs (lanes.py)
    compile_args: list[str] = field(default_factory=list)   # --compile-arg: more `fusec compile` arguments
    mps: bool = False                       # --mps: under CUDA's Multi-Process Service (fusec/bench/mps.py)

    @property
    def runtime(self) -> str:
        return runtime_of(self.party_argv)

    @property
    def steps(self) -> int:
        return self.warmup + self.repeat

    @property
    def key_root(self) -> Path:
        return Path(self.keys_dir) if self.keys_dir else Path(self.workdir) / "keys"

    def validate(self) -> None:
        if not self.models:
            raise FusecError("no model to benchmark", "pass --model bert-base,gpt2 (or a path to an .onnx file)")
        bad = [g for g in self.gates if g not in GATE_SETS]
        if bad:
            raise FusecError(f"unknown gate set(s) {', '.join(bad)}", f"choose from {', '.join(GATE_SETS)}")
        if self.backend not in ("cpu", "gpu"):
            raise FusecError(f"unknown backend {self.backend!r}", "choose cpu or gpu")
        if any(g not in (1, 2) for g in self.gpus):
            raise FusecError(f"--gpus takes 1 (both parties on GPU 0) or 2 (one GPU each), got {self.gpus}")
        if self.keys_mode not in ("auto", "upfront", "per-step", "stream"):
            raise FusecError(f"--keys {self.keys_mode!r}: choose auto, upfront, per-step or stream")
        for what, values in (("--seq", self.seqs + self.seq_sweep), ("--batch", self.batches),
                             ("--internal-batch", [self.internal_batch]), ("--repeat", [self.repeat])):
            if not values or min(values) < 1:
                raise FusecError(f"{what} needs positive integers, got {values}")
        if self.lanes < 1:
            raise FusecError(f"--lanes must be >= 1, got {self.lanes}")
        uneven = [b for b in self.batches if b % self.lanes_for(b)]
        if uneven:
            raise FusecError(f"--lanes {self.lanes} does not divide --batch {', '.join(map(str, uneven))}",
                             "each lane runs batch / lanes inferences: pick batches that are multiples of --lanes")
        if self.dealers < 1:
            raise FusecError(f"--dealers must be >= 1, got {self.dealers}")
        if self.mps and self.backend != "gpu":
            raise FusecError("--mps shares a GPU between the parties' processes: it needs --backend gpu")
        if self.warmup < 0:
            raise FusecError(f"--warmup must be >= 0, got {self.warmup}")
        names = [n.name if n else "none" for n in self.nets]
        if not names or len(set(names)) < len(names):
            raise FusecError(f"--net settings must be distinct, got {', '.join(names) or 'none'}")

    def lanes_for(self, batch: int) -> int:
        """Lanes of a batch: --lanes, or fewer when the batch is smaller (batch 1 is one lane)."""
        return max(1, min(self.lanes, batch))

    def settings(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("models", "command")}
        d["models"] = [asdict(m) for m in self.models]
        return json.loads(json.dumps(d, default=str))


def plan_cases(opts: BenchOptions) -> list[Case]:
    """The grid ``seq x batch`` (plus ``--seq-sweep`` at the smallest batch) for every model,
    gate set, GPU count and network setting, then the padding ablation (fused without
    mask-independent padding, first seq, smallest batch, every network setting). Ordered
    so that one build serves consecutive cases."""
    small = min(opts.batches)
    shapes = unique([(s, b) for s in opts.seqs for b in opts.batches] + [(s, small) for s in opts.seq_sweep])
    where = list(opts.gpus) if opts.backend == "gpu" else [None]
    nets = list(opts.nets) or [None]
    rt = opts.runtime
    extra = tuple(opts.compile_args)
    cases = [Case(m, s, b, g, w, net=n, runtime=rt, lanes=opts.lanes_for(b), compile_args=extra) for m in opts.models for s, b in shapes for g in opts.gates for w in where
             for n in nets]
    if opts.padding_ablation:
        cases += [Case(m, opts.seqs[0], small, "fused", w, padded=False, net=n, runtime=rt, compile_args=extra)
                  for m in opts.models for w in where for n in nets]
    return cases
