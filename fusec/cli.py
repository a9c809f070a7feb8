"""The ``fusec`` command line."""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import click
import numpy as np

from fusec.allocator import tune_host_allocator
from fusec.errors import FusecError, ParameterError
from fusec.limits import Limits
from fusec.passes.options import ROUND_PRICES
from fusec.party_cli import address_type, key_set_count, party_options, seconds_type, tls_argv, tls_options


def main() -> None:
    """Entry point: user errors print a message and exit 2, never a traceback; a warning
    (an INSECURE ablation, a launch plan that does not fit) is one line on stderr."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    tune_host_allocator()
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except FusecError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except Exception as e:
        from fusec.runtime.device_keys import memory_error  # noqa: PLC0415
        err = memory_error(e)
        if err is None:
            raise
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="fusec")
def cli() -> None:
    """fusec: compile models to two-party FSS secure inference."""


@cli.command()
def ops() -> None:
    """The ONNX ops fusec lowers on secret data, and where any other op may run."""
    from fusec.ir.owner_prefix import ops_text

    click.echo(ops_text())


@cli.command()
@click.option("--bits", default=50, show_default=True, help="ring width n")
@click.option("--frac", default=12, show_default=True, help="fractional bits f (the shift)")
def gates(bits, frac) -> None:
    """Per-element cost of every gate in the library (per party)."""
    from fusec.runtime.gates.catalog import table

    click.echo(f"n={bits}, f={frac}; key bytes, AES blocks, rounds and bits opened per element, per party")
    click.echo(table(bits, frac))


# ---------------------------------------------------------------------- demo
@cli.group(invoke_without_command=True)
@click.option("--elements", default=8, show_default=True, help="vector length")
@click.option("--bits", default=50, show_default=True, help="ring width n")
@click.option("--frac", default=12, show_default=True, help="fractional bits f")
@click.option("--workdir", type=click.Path(file_okay=False), help="where keys/inputs go (default: a temp dir)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed for the example's *inputs* (keys always use the CSPRNG)")
@click.pass_context
def demo(ctx, elements, bits, frac, workdir, seed) -> None:
    """Dealer, P0 and P1 as three processes on a small gate graph; prints secure vs plaintext."""
    if ctx.invoked_subcommand is not None:
        return
    from fusec import demo as d
    from fusec.run3 import free_port, fusec_cmd, run_three
    from fusec.run3 import workdir as mkwd

    wd = mkwd(workdir)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, elements)
    w = rng.uniform(-1.5, 1.5, elements)
    np.save(wd / "x.npy", x)
    np.save(wd / "w.npy", w)
    port = free_port()
    common = ["--elements", str(elements), "--bits", str(bits), "--frac", str(frac)]
    click.echo(f"dealer -> {wd}/p0.key, {wd}/p1.key; P0 listens on 127.0.0.1:{port}; P1 connects")
    run_three(fusec_cmd("demo", "keygen", *common, "-o", str(wd)),
              fusec_cmd("demo", "run", *common, "--party", "0", "--keys", str(wd / "p0.key"),
                        "--listen", f"127.0.0.1:{port}", "--input", str(wd / "w.npy")),
              fusec_cmd("demo", "run", *common, "--party", "1", "--keys", str(wd / "p1.key"),
                        "--peer", f"127.0.0.1:{port}", "--input", str(wd / "x.npy"),
                        "--output", str(wd / "out.json")))
    got = json.loads((wd / "out.json").read_text())
    ref = d.plaintext(x, w)
    click.echo(f"{'x':>8} {'w':>8} {'secure gelu(x*w)':>17} {'plaintext':>10} {'abs err':>9}")
    for i in range(elements):
        s, p = got["outputs"]["gelu_out"][i], ref["gelu_out"][i]
        click.echo(f"{x[i]:8.4f} {w[i]:8.4f} {s:17.5f} {p:10.5f} {abs(s - p):9.2e}")
    click.echo(f"max(relu(x*w)): secure {got['outputs']['max_out'][0]:.5f}  plaintext {ref['max_out'][0]:.5f}")
    click.echo(f"P1 online: {got['online_seconds']:.3f} s, {got['rounds']} rounds, {got['bytes_sent']} bytes sent")


@demo.command("keygen")
@click.option("--elements", default=8)
@click.option("--bits", default=50)
@click.option("--frac", default=12)
@click.option("--count", default=1, show_default=True, type=key_set_count, help="key sets (one per inference)")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False))
def demo_keygen(elements, bits, frac, count, out) -> None:
    """The dealer: write p0.key and p1.key for the demo graph."""
    from fusec import demo as d
    from fusec.runtime.dealer import write_keys

    paths = write_keys(d.build_graph(elements, bits, frac), out, count)
    click.echo(f"wrote {paths[0]} and {paths[1]} ({count} key set(s))")


@demo.command("run")
@click.option("--elements", default=8)
@click.option("--bits", default=50)
@click.option("--frac", default=12)
@party_options
def demo_run(elements, bits, frac, server) -> None:
    """One server of the demo graph (--input: .npy vector; --output: JSON)."""
    from fusec import demo as d

    summary = d.serve(server, elements, bits, frac)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "outputs"}))


# ---------------------------------------------------------------------- the compiler
def _shape_arg(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    out = {}
    for v in values:
        name, _, dims = v.partition("=")
        try:
            out[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise FusecError(f"--input-shape {v!r} is not NAME=D1xD2x...", "for example --input-shape input_ids=1x128")
    return out


def _array_arg(values: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    out = {}
    for v in values:
        name, _, path = v.partition("=")
        if not path:
            raise FusecError(f"{what} {v!r} is not NAME=FILE.npy")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise FusecError(f"{what}: cannot read {path}: {e}") from None
    return out


def _range_arg(values: tuple[str, ...]) -> dict[str, tuple[float, float]] | None:
    """``--input-range NAME=LO:HI`` (repeatable) -> {name: (lo, hi)}; None when not given."""
    out = {}
    for v in values:
        name, eq, rng = v.partition("=")
        lo, colon, hi = rng.rpartition(":") if rng.count(":") == 1 else ("", "", "")
        try:
            lo_f, hi_f = float(lo), float(hi)
        except ValueError:
            lo_f = hi_f = float("nan")
        if not (name and eq and colon) or not (math.isfinite(lo_f) and math.isfinite(hi_f) and lo_f < hi_f):
            raise FusecError(f"--input-range {v!r} is not NAME=LO:HI with finite LO < HI",
                             "for example --input-range x=-8:8 or --input-range pixels=0:1")
        if name in out:
            raise FusecError(f"--input-range gives {name!r} twice")
        out[name] = (lo_f, hi_f)
    return out or None


def compile_options(f):
    """The flags shared by `compile` and `verify`."""
    opts = [
        click.option("--batch", type=click.IntRange(min=1),
                     help="fix the batch dimension (true batching: one forward on [B, ...])"),
        click.option("--seq", type=click.IntRange(min=1), help="fix the sequence-length dimension"),
        click.option("--input-shape", "input_shape", multiple=True, help="NAME=D1xD2... (overrides --batch/--seq)"),
        click.option("--public-input", "public_input", multiple=True,
                     help="NAME=FILE.npy: an input fixed at compile time (role constant; default: attention_mask "
                          "= ones, token_type_ids = zeros, position_ids = arange)"),
        click.option("--input-role", "input_role", multiple=True,
                     help="NAME=private|public|constant: private (default for data) stays hidden; public is given "
                          "per request and seen by both servers; constant is fixed in the build"),
        click.option("--bits", default=50, show_default=True, help="ring width n"),
        click.option("--frac", default=12, show_default=True, help="fractional bits f"),
        click.option("--gates", "gate_set", type=click.Choice(["fused", "sigma"]), default="fused", show_default=True,
                     help="fused: compiled scalar gates (ours); sigma: SIGMA-style constructions (baseline)"),
        click.option("--weights", type=click.Choice(["public", "private"]), default="public", show_default=True),
        click.option("--rescale", type=click.Choice(["slack", "ars"]), default="slack", show_default=True),
        click.option("--max-error-ulps", default=8.0, show_default=True, help="error bound for fitted specs"),
        click.option("--max-tree", type=click.Choice(["auto", "shifted", "packed"]), default="auto", show_default=True,
                     help="row maxima (softmax): each tree level in one round (shifted) or in two with a third of the "
                          "AES and half the key (packed); auto: the first levels packed, as many as pay for their rounds"),
        click.option("--round-worth", "round_worth", type=click.FloatRange(0, 1e9), default=32.0, show_default=True,
                     help="MiB of key (16 B per AES counted as key) a construction must save to be worth one more "
                          "round: raise it for a high-latency link, lower it for large batches on one card"),
        click.option("--round-price", "round_price", type=click.Choice(ROUND_PRICES), default="batch",
                     show_default=True,
                     help="weigh a construction's saving over the whole true batch (a larger batch may buy AES with "
                          "rounds) or per inference (every batch size compiles to batch 1's program per inference)"),
        click.option("--seeded-shares", "seeded_shares", type=click.Choice(["auto", "on", "off"]), default="auto",
                     show_default=True,
                     help="the dealer gives one party of each gate a 16-byte seed in place of its additive shares "
                          "(about a quarter less key per party); auto: on for --gates fused, off for sigma (SIGMA's "
                          "keys hold both parties' shares)"),
        click.option("--calib", type=click.Path(exists=True),
                     help=".npy/.npz calibration request, one with more rows than --batch (split into batches), "
                          "or a folder of them; ranges cover all within --calib-seconds (default: random ids / "
                          "standard normal)"),
        click.option("--insecure-mask-dependent-shapes", "insecure", is_flag=True,
                     help="INSECURE: key shapes depend on masks (padding ablation only)"),
        click.option("--input-range", "input_range", multiple=True,
                     help="NAME=LO:HI: the range a float input is promised to lie in (proven widths assume it; "
                          "`fusec run` refuses values outside; default: calibration max |x| x 4, a power of two)"),
        click.option("--max-elements", type=click.IntRange(min=1), default=Limits.max_elements, show_default=True,
                     help="largest tensor (shape, constant, intermediate) a model may ask for, in elements"),
        click.option("--max-bytes", type=click.IntRange(min=1), default=Limits.max_bytes, show_default=True,
                     help="largest tensor in bytes, and all folded constants together"),
        click.option("--fold-seconds", type=click.FloatRange(min=0, min_open=True, max=1e7),
                     default=Limits.fold_seconds, show_default=True, help="time budget of constant folding"),
        click.option("--calib-seconds", type=click.FloatRange(min=0, min_open=True, max=1e7),
                     default=Limits.calib_seconds, show_default=True, help="time budget of the calibration runs"),
        click.option("-q", "--quiet", is_flag=True, help="no compile progress lines (one per stage, with its seconds)"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _role_arg(values: tuple[str, ...]) -> dict[str, str]:
    """``--input-role NAME=ROLE`` (repeatable) -> {name: role}."""
    from fusec.ir.input_roles import parse_role

    out: dict[str, str] = {}
    for v in values:
        name, role = parse_role(v)
        if name in out and out[name] != role:
            raise FusecError(f"--input-role gives {name!r} two roles ({out[name]}, {role})")
        out[name] = role
    return out


def _compile(model, out, batch, seq, input_shape, public_input, bits, frac, gate_set, weights, rescale,
             max_error_ulps, calib, insecure, input_range=(), quiet: bool = False, input_role=(), max_tree="auto",
             round_worth=32.0, seeded_shares="auto", round_price="batch",
             max_elements=Limits.max_elements, max_bytes=Limits.max_bytes, fold_seconds=Limits.fold_seconds,
             calib_seconds=Limits.calib_seconds):
    from fusec.limits import using

    lim = Limits(max_elements=max_elements, max_bytes=max_bytes, fold_seconds=fold_seconds,
                 calib_seconds=calib_seconds)
    with using(lim):
        return _compile_within_limits(model, out, batch, seq, input_shape, public_input, bits, frac, gate_set,
                                      weights, rescale, max_error_ulps, calib, insecure, input_range, quiet,
                                      input_role, lim, max_tree, round_worth, seeded_shares, round_price)


def _compile_within_limits(model, out, batch, seq, input_shape, public_input, bits, frac, gate_set, weights, rescale,
                           max_error_ulps, calib, insecure, input_range, quiet, input_role, lim, max_tree="auto",
                           round_worth=32.0, seeded_shares="auto", round_price="batch"):
    from fusec.build import compile_model, frontend
    from fusec.calib_set import load_calibration
    from fusec.passes.options import CompileOptions

    calib_feeds = None
    ranges = _range_arg(input_range)
    roles = _role_arg(input_role)
    if calib or ranges:
        probe = frontend(model, batch, seq, _shape_arg(input_shape), _array_arg(public_input, "--public-input"), roles)
        calib_feeds = load_calibration(calib, probe) if calib else None
        floats = [t for t in probe.inputs if probe.info(t).dtype == "float"]
        for name in ranges or {}:
            if name not in floats:
                raise FusecError(f"--input-range {name}: the model has no float input {name!r}",
                                 f"its float inputs: {', '.join(floats) or 'none (token ids need no range)'}")
    opts = CompileOptions(bits=bits, frac=frac, weight_frac=frac, gates=gate_set, weights=weights, rescale=rescale,
                          max_error_ulps=max_error_ulps, insecure_mask_dependent_shapes=insecure, calib=calib_feeds,
                          input_ranges=ranges, max_tree=max_tree, round_worth_mib=round_worth, round_price=round_price,
                          seeded_shares={"auto": None, "on": True, "off": False}[seeded_shares])
    if insecure:
        click.echo("WARNING: --insecure-mask-dependent-shapes: this build leaks information about its masks "
                   "through key shapes. Ablation only; never deploy it.", err=True)
    say = None if quiet else _say_stage
    return compile_model(model, out, opts, batch=batch, seq=seq, input_shapes=_shape_arg(input_shape),
                         public_inputs=_array_arg(public_input, "--public-input"), progress=say, input_roles=roles,
                         limits=lim)


def _say_stage(stage: str, done: str | None) -> None:
    """One stderr line per compile stage: its name when it starts, its seconds (or "failed",
    before the error's own line) when it ends."""
    if done is None:
        click.echo(f"  [{stage}] ", err=True, nl=False)
    else:
        click.echo(done, err=True)


@cli.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="build directory")
@compile_options
def compile_cmd(model, out, **kw) -> None:
    """ONNX model -> build directory (IR, program, key layout, weights, report)."""
    from fusec.notes import grouped
    from fusec.report import totals

    b = _compile(model, out, **kw)
    t = totals(b)
    click.echo(f"compiled {model} -> {out}: {t['gates']} gates, {t['rounds']} rounds, "
               f"key {t['key_bytes'] / 2**20:.2f} MiB/party, online {t['bytes_sent_per_party'] / 2**20:.2f} MiB/party")
    for n in grouped(b.ir.meta.get("notes", [])):     # one line per message, not per layer
        click.echo(f"note: {n}", err=True)


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--ir", "show_ir", is_flag=True, help="print the IR")
@click.option("--layout", "show_layout", is_flag=True, help="print the keystream layout")
@click.option("--program", "show_program", is_flag=True, help="print the round schedule")
@click.option("--ranges", "all_ranges", is_flag=True,
              help="list every secret tensor's calibrated/proven range and width (default: a summary + the widest)")
@click.option("--top", default=10, show_default=True, type=click.IntRange(0), help="widest tensors listed by default")
@click.option("--json", "as_json", is_flag=True, help="the report's numbers as JSON (totals, classes, specs, ranges)")
def inspect(build_dir, show_ir, show_layout, show_program, all_ranges, top, as_json) -> None:
    """Look at a build: IR, per-gate costs, specs, split, ranges, key layout, estimated rounds/bytes/keys."""
    from fusec.build import load_build
    from fusec.report import report, summary

    b = load_build(build_dir)
    if b.manifest.get("insecure"):
        click.echo("WARNING: this build is INSECURE (mask-dependent key shapes; ablation only)", err=True)
    if as_json:
        click.echo(json.dumps(summary(b), indent=1, allow_nan=False))
        return
    if show_ir:
        click.echo(b.ir.pretty())
    if show_layout:
        from fusec.runtime.seeded_shares import party_layout, seeded_parties

        lay = b.gates.layout()
        seeded = seeded_parties(lay)
        stored = [party_layout(lay, p) for p in (0, 1)]
        click.echo("| # | gate | kind | elements | offset | bytes (P0 file / P1 file / in memory) | seed to | fields |")
        click.echo("| ---: | --- | --- | ---: | ---: | ---: | --- | --- |")
        for i, s in enumerate(lay.slots):
            fields = ", ".join(f"{f.name}{list(f.shape)}:{f.bits}b{'+' if f.share else ''}" for f in s.fields)
            sizes = " / ".join(f"{n:,}" for n in (stored[0].slot(s.gate_id).nbytes, stored[1].slot(s.gate_id).nbytes,
                                                 s.nbytes))
            to = f"P{seeded[s.gate_id]}" if s.gate_id in seeded else "-"
            click.echo(f"| {i} | {s.gate_id} | {s.kind} | {s.elements:,} | {s.offset:,} | {sizes} | {to} | {fields} |")
        click.echo("(+: an additive share; the gate's seeded party holds a 16-byte seed in place of its shares)")
    if show_program:
        for s in b.steps:
            click.echo(f"rounds [{s.start:3d},{s.end:3d})  {s.kind:16s} {s.id}  ({s.elements:,} elements, {s.scope})")
    if not (show_ir or show_layout or show_program):
        click.echo(report(b, all_ranges=all_ranges, top=top))


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), help="where p0.key and p1.key go")
@click.option("--serve", type=address_type, default=None,
              help="HOST:PORT: stream the key sets to the two servers (fusec run --keys tcp://HOST:PORT) instead of "
                   "writing files; without TLS only on loopback")
@click.option("--count", default=1, show_default=True, type=key_set_count,
              help="key sets, one per inference (internal batch)")
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]),
              help="where the dealer computes (same CSPRNG construction either way)")
@click.option("--timeout", type=seconds_type, default=3600.0, show_default=True,
              help="--serve: seconds to wait for a server to connect or ask for its next set")
@tls_options
def keygen(build_dir, out, serve, count, backend, timeout, tls_cert, tls_key, tls_ca, tls_server_name) -> None:
    """The dealer: one key file per server, or (--serve) key sets streamed to the servers; from a CSPRNG."""
    import time

    from fusec.build import load_build
    from fusec.runtime.backend import get_backend
    from fusec.runtime.dealer import write_keys

    if (out is None) == (serve is None):
        raise ParameterError("give exactly one of -o DIR (key files) and --serve HOST:PORT (stream to the servers)")
    listener = _dealer_listener(serve, tls_cert, tls_key, tls_ca, tls_server_name) if serve else None
    b = load_build(build_dir)
    if b.manifest.get("insecure"):
        click.echo("WARNING: this build is INSECURE (mask-dependent key shapes; ablation only): its keys reveal "
                   "information about the masks", err=True)
    be = get_backend(backend, b.kernels_source)
    t0 = time.perf_counter()
    sizes = _stored_set_sizes(b.gates.layout())
    if listener is not None:
        from fusec.runtime.dealer_service import serve_keys

        click.echo(f"serving {count} key set(s) of {sizes} on "
                   f"{serve[0] or '0.0.0.0'}:{listener.port}", err=True)
        with listener:
            done = serve_keys(b.gates, listener, count, backend=be, timeout=timeout,
                              log=lambda msg: click.echo(msg, err=True))
        click.echo(json.dumps({"served_sets": done.pop("sets"), "sessions": done.pop("sessions"),
                               "seconds": time.perf_counter() - t0, **done}))
        return
    with click.progressbar(length=count, label="key sets", file=sys.stderr) as bar:
        paths = write_keys(b.gates, out, count, progress=lambda i, k: bar.update(1), backend=be)
    click.echo(f"wrote {paths[0]} and {paths[1]}: {count} key set(s) of {sizes} in {time.perf_counter() - t0:.2f} s")


def _stored_set_sizes(layout) -> str:
    """What a key set takes in each party's file (seeded shares make the two differ)."""
    from fusec.runtime.seeded_shares import party_layout

    n0, n1 = (party_layout(layout, p).set_nbytes for p in (0, 1))
    return f"{n0:,} bytes per party" if n0 == n1 else f"{n0:,} (P0) and {n1:,} (P1) bytes"


def _dealer_listener(serve, tls_cert, tls_key, tls_ca, tls_server_name):
    """The dealer's listening socket, TLS when configured; plaintext only on loopback."""
    from fusec.runtime.channel import TcpListener
    from fusec.runtime.keystream import check_plaintext
    from fusec.runtime.tls import TlsFiles

    if tls_server_name:
        raise ParameterError("--tls-server-name is for the servers; the dealer is named by its certificate")
    tls = TlsFiles.from_options(tls_cert, tls_key, tls_ca)
    if tls is not None:
        tls.check()
    host, port = serve
    check_plaintext(host or "0.0.0.0", tls is not None, "--serve")
    return TcpListener(host, port, tls.server_context() if tls else None)


@cli.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@party_options
@click.option("--stats", "stats_path", type=click.Path(), help="write timing/bytes/rounds JSON here")
@click.option("--profile-sync", is_flag=True,
              help="synchronize the GPU after every gate step so per-scope compute times are exact (slower)")
@click.option("--stream-keys", is_flag=True,
              help="bring each gate's keys to the device when the gate first runs, inside the online clock "
                   "(as SIGMA counts its key copies); default: the whole key set before the clock")
@click.option("--inputs", "inputs_dir", type=click.Path(file_okay=False),
              help="run one inference per .npy/.npz file in this directory (name order), over one connection, "
                   "each on a key set of its own; the other server passes --count")
@click.option("--count", type=click.IntRange(min=1),
              help="the number of inferences, for the server without --inputs (default 1)")
@click.option("--outputs", "outputs_dir", type=click.Path(file_okay=False),
              help="with several inferences: write each one's outputs here as NAME.npz (NAME: its input file's)")
@click.option("--cuda-graphs", is_flag=True,
              help="GPU, several inferences: record the second as a launch plan (one CUDA graph per round) and "
                   "replay it for the rest")
def run(build_dir, server, stats_path, profile_sync, stream_keys, inputs_dir, count, outputs_dir,
        cuda_graphs) -> None:
    """One server's online phase (--input: .npy for one input, .npz named; --output: .npy/.npz),
    or several over one connection (--inputs DIR / --count N, --outputs DIR)."""
    from fusec.build import decode_outputs, encode_inputs, load_build, load_inputs
    from fusec.runtime.backend import get_backend
    from fusec.runtime.party import run_party
    from fusec.serving import NextSetReader, agree_count, output_file, plan_requests

    server.prepare((".npy", ".npz"), {"--stats": stats_path})    # before the build loads or a set is claimed
    party, output_path = server.party, server.output_path
    requests = plan_requests(server.input_path, inputs_dir, count, output_path, outputs_dir)
    if cuda_graphs and (server.backend != "gpu" or stream_keys):
        raise FusecError("--cuda-graphs replays graphs that read keys staged on the device: it needs --backend gpu "
                         "and no --stream-keys")
    if cuda_graphs and len(requests) < 3:
        click.echo(f"note: --cuda-graphs with {len(requests)} inference(s): the first is interpreted and the second "
                   "recorded; only a third and later ones are replayed", err=True)
    b = load_build(build_dir)
    if b.manifest.get("insecure"):
        click.echo("WARNING: this build is INSECURE (mask-dependent key shapes; ablation only)", err=True)
    if output_path and output_path.endswith(".npy") and len(b.low.outputs) > 1:
        raise FusecError(f"--output {output_path}: the build has {len(b.low.outputs)} outputs; name a .npz file")
    owners = {owner for _, owner in b.low.inputs.values()}
    if party in owners and requests[0].input_path is None:
        raise FusecError(f"party {party} owns the model input and needs --input", "pass --input x.npy (or .npz)")
    feeds = [encode_inputs(b, load_inputs(r.input_path, b.ir), party) if party in owners else {}
             for r in requests]                            # every request checked before a key set is claimed
    be = get_backend(server.backend, b.kernels_source)
    be.cuda_graphs = cuda_graphs
    # every key check before any socket; the set is verified into the backend's page-locked
    # buffer, so the claim after the hello does not read it again
    kf, idx = server.open_keys(b.gates, out=be.host_buffer, inflate=not be.seeded_shares_on_device)
    left = kf.unused_count()
    if left < len(requests):
        kf.close()
        raise FusecError(f"{len(requests)} inferences need as many key sets; {kf.path} has {left} unused",
                         "run the dealer again (fusec keygen --count N) for more")
    all_stats = []
    ahead = NextSetReader(kf, be.host_buffer) if NextSetReader.usable(kf, stream_keys) else None
    with kf, server.channel() as ch:
        agree_count(ch, len(requests))
        for i, (request, inputs) in enumerate(zip(requests, feeds)):
            more = ahead is not None and i + 1 < len(requests)
            if ahead is not None:
                ahead.wait()
            res = run_party(b.gates, party, kf, idx if i == 0 else kf.next_unused(), ch, inputs, be,
                            scopes=b.scopes, sync_scopes=profile_sync, stream_keys=stream_keys,
                            after_stage=ahead.start if more else None)
            outs = decode_outputs(b, res.outputs)
            if outs and (output_path or outputs_dir):
                dest = output_file(outputs_dir, request) if outputs_dir else Path(output_path)
                if dest.suffix == ".npz" or len(outs) > 1:
                    np.savez(dest, **outs)
                else:
                    np.save(dest, next(iter(outs.values())))
            stats = {"party": party, "backend": be.name, "key_set": res.key_set,
                     "online_seconds": res.online_seconds, "key_load_seconds": res.key_load_seconds,
                     "rounds": res.rounds, "bytes_sent": res.bytes_sent, "scopes": res.scopes,
                     "compute_seconds": res.compute_seconds, "wire_seconds": res.wire_seconds,
                     "net": server.net.as_dict() if server.net else None,   # --net: an emulated link, not the real one
                     "stream_keys": stream_keys, "claim_seconds": res.claim_seconds,
                     "round_phases": res.round_phases, "request": request.name, "cuda_graphs": cuda_graphs}
            all_stats.append(stats)
            click.echo(json.dumps(stats))
    if stats_path:
        Path(stats_path).write_text(json.dumps(all_stats[0] if len(all_stats) == 1 else all_stats, indent=1))


@cli.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--workdir", type=click.Path(file_okay=False), help="where build, keys and outputs go (default: temp)")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), help=".npy/.npz input (default: random)")
@click.option("--seed", default=0, show_default=True, help="seed of the random *input* (keys always use the CSPRNG)")
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]),
              help="where the dealer and both servers compute")
@compile_options
@tls_options
def verify_cmd(model, workdir, input_path, seed, backend, **kw) -> None:
    """compile -> keygen -> P0 and P1 as two processes -> compare with onnxruntime, on inputs the
    calibration did not see (fresh draws over each input's whole range, edges included).

    With --tls-*, both servers use these files over TLS on 127.0.0.1 (the certificate must
    name 127.0.0.1, or give --tls-server-name)."""
    from fusec.run3 import workdir as mkwd
    from fusec.verify import verify

    _role_arg(kw["input_role"])                 # bad syntax: refused here, before anything runs
    _range_arg(kw["input_range"])
    argv = compile_argv(kw)
    compile_names = {p.name for p in compile_cmd.params}
    party_argv = tls_argv(**{k: v for k, v in kw.items() if k not in compile_names})  # refused here, before anything runs
    verify(model, mkwd(workdir), argv, input_path, seed, echo=click.echo, backend=backend, party_argv=party_argv)


def compile_argv(kw: dict) -> list[str]:
    """The `fusec compile` arguments that reproduce ``kw`` (values of the compile options), built
    from the compile command's own options: a new compile flag reaches `verify` without code here."""
    argv: list[str] = []
    for p in compile_cmd.params:
        if not isinstance(p, click.Option) or p.name not in kw:
            continue
        flag = next(o for o in p.opts if o.startswith("--"))
        v = kw[p.name]
        if p.is_flag:
            argv += [flag] if v else []
        elif p.multiple:
            for x in v:
                argv += [flag, str(x)]
        elif v is not None and v != p.default:
            argv += [flag, repr(v) if isinstance(v, float) else str(v)]
    return argv


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False), help="where build, keys and outputs go (default: temp)")
@click.option("--gates", "gate_set", type=click.Choice(["fused", "sigma"]), default="fused", show_default=True)
def example(workdir, gate_set) -> None:
    """The bundled example: a digits classifier (8 test images, true batch 8) run securely
    (compile, keygen, P0 and P1 as processes over TCP) and checked against onnxruntime."""
    from importlib.resources import files

    from fusec.run3 import workdir as mkwd
    from fusec.verify import verify

    ex = files("fusec") / "examples"
    wd = mkwd(workdir)
    info = json.loads((ex / "digits_sample.json").read_text())
    verify(str(ex / "digits_mlp.onnx"), wd, ["--batch", "8", "--gates", gate_set], str(ex / "digits_sample.npy"),
           echo=click.echo)
    with np.load(wd / "out.npz") as z:
        pred = np.argmax(z[z.files[0]], axis=-1).tolist()
    click.echo(f"secure predictions: {pred}")
    click.echo(f"true labels:        {info['labels']}")


# ---------------------------------------------------------------------- benchmarks
from fusec.bench.cli import bench  # noqa: E402  (its options live with the bench: fusec/bench/cli.py)

cli.add_command(bench)
