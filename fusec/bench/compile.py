"""``fusec compile`` of a configuration, cached per build and model file."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from fusec.bench.failures import BenchError
from fusec.bench.plan import Case
from fusec.bench.stage import module_argv, run_stage
from fusec.runtime.layout import KeyLayout
from fusec.runtime.seeded_shares import party_layout


@dataclass
class CompileInfo:
    build: Path
    seconds: float
    cached: bool
    set_nbytes: int          # bytes of a key set (one true-batch forward) in a server's memory, per party
    rounds_planned: int
    stored_nbytes: tuple[int, int]   # what each party's key file or stream holds per set
    aes_per_set: int | None = None   # AES blocks one party computes per set (the build's report)

    @property
    def stored_key_nbytes(self) -> float:
        """What a set takes per party in files and streams: the two parties' mean (seeded
        shares make them differ, runtime/seeded_shares.py)."""
        return sum(self.stored_nbytes) / 2

    def as_dict(self) -> dict:
        return {"build": str(self.build), "seconds": self.seconds, "cached": self.cached,
                "rounds_planned": self.rounds_planned, "key_bytes_per_set": self.stored_key_nbytes,
                "key_bytes_per_set_by_party": list(self.stored_nbytes), "key_bytes_per_set_unseeded": self.set_nbytes,
                "aes_per_set": self.aes_per_set}


def compile_case(case: Case, model_path: Path, workdir: Path, timeout: float) -> CompileInfo:
    """``fusec compile`` for the case, cached per build and model file (path, size, mtime).
    A refusal of the insecure ablation build is remembered too, so that a long compile
    is not repeated for every GPU count only to be refused again."""
    build = Path(workdir) / "builds" / case.build_slug
    ok, refused = build / ".bench-ok", build / ".bench-refused"
    st = Path(model_path).stat()
    source = json.dumps({"model": str(Path(model_path).resolve()), "size": st.st_size, "mtime": st.st_mtime})
    if refused.exists() and (build / ".bench-source").read_text() == source:
        raise BenchError(refused.read_text(), kind="refused")
    cached = ok.exists() and ok.read_text() == source
    if not cached:
        shutil.rmtree(build, ignore_errors=True)
        argv = module_argv("fusec", "compile", str(model_path), "-o", str(build), "--batch", str(case.lane_batch),
                           "--seq", str(case.seq), "--bits", str(case.model.bits), "--gates", case.gates)
        argv += list(case.compile_args)
        if not case.padded:
            argv.append("--insecure-mask-dependent-shapes")
        try:
            run_stage(argv, "compile", case, timeout, Path(workdir) / "logs" / f"compile_{case.build_slug}.log")
        except BenchError as e:
            if case.padded or e.status != 2:         # 2: the compiler's own error message, not a crash
                raise
            reason = _compiler_refusal(e.message)
            build.mkdir(parents=True, exist_ok=True)
            (build / ".bench-source").write_text(source)
            refused.write_text(reason)
            raise BenchError(reason, kind="refused") from None
        ok.write_text(source)
    manifest = json.loads((build / "manifest.json").read_text())
    layout = KeyLayout.from_json((build / "keys.layout.json").read_text())
    program = json.loads((build / "program.json").read_text())
    stored = tuple(party_layout(layout, p).set_nbytes for p in (0, 1))
    return CompileInfo(build, float(manifest.get("compile_seconds", 0.0)), cached, layout.set_nbytes,
                       int(program.get("rounds", 0)), stored, reported_aes(build / "report.txt"))


_AES_LINE = re.compile(r"^AES calls per party: ([\d,]+)", re.M)


def reported_aes(report: Path) -> int | None:
    """The AES blocks per party per set that ``fusec compile``'s report states (the gates'
    own cost model), None where the report is missing or says nothing of it."""
    try:
        m = _AES_LINE.search(report.read_text())
    except OSError:
        return None
    return int(m.group(1).replace(",", "")) if m else None


def _compiler_refusal(message: str) -> str:
    """The compiler's own ``error: ...`` lines out of a failed compile's output."""
    lines = message.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), 1)
    text = " ".join(line.strip() for line in lines[start:]).removeprefix("error: ")
    reason, _, hint = text.partition(" hint: ")
    return f"compiler refused: {reason}" + (f" (hint: {hint})" if hint else "")
