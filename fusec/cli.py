"""The ``fusec`` command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from fusec.errors import FusecError


def main() -> None:
    """Entry point: user errors print a message and exit 2, never a traceback."""
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


@click.group()
@click.version_option(package_name="fusec")
def cli() -> None:
    """fusec: compile models to two-party FSS secure inference."""


@cli.command()
@click.option("--n", "bits", default=50, show_default=True, help="ring bits")
@click.option("--f", "frac", default=12, show_default=True, help="shift / fractional bits")
def gates(bits, frac) -> None:
    """Per-element cost of every gate in the library (per party)."""
    from fusec.runtime.gates.catalog import table

    click.echo(f"n={bits}, f={frac}; key bytes, AES blocks, rounds and bits opened per element, per party")
    click.echo(table(bits, frac))


# ---------------------------------------------------------------------- demo
@cli.group(invoke_without_command=True)
@click.option("--elements", default=8, show_default=True, help="vector length")
@click.option("--n", "bits", default=50, show_default=True, help="ring bits")
@click.option("--f", "frac", default=12, show_default=True, help="fractional bits")
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
    common = ["--elements", str(elements), "--n", str(bits), "--f", str(frac)]
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
@click.option("--n", "bits", default=50)
@click.option("--f", "frac", default=12)
@click.option("--count", default=1, show_default=True, help="key sets (one per inference)")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False))
def demo_keygen(elements, bits, frac, count, out) -> None:
    """The dealer: write p0.key and p1.key for the demo graph."""
    from fusec import demo as d
    from fusec.runtime.dealer import write_keys

    paths = write_keys(d.build_graph(elements, bits, frac), out, count)
    click.echo(f"wrote {paths[0]} and {paths[1]} ({count} key set(s))")


@demo.command("run")
@click.option("--elements", default=8)
@click.option("--n", "bits", default=50)
@click.option("--f", "frac", default=12)
@click.option("--party", type=click.IntRange(0, 1), required=True)
@click.option("--keys", "key_path", required=True, type=click.Path())
@click.option("--listen", help="host:port to accept the peer on")
@click.option("--peer", help="host:port of the listening peer")
@click.option("--input", "input_path", type=click.Path(), help=".npy with this party's private vector")
@click.option("--output", "output_path", type=click.Path(), help="write received outputs as JSON")
@click.option("--timeout", default=60.0, show_default=True, help="seconds without progress before giving up")
@click.option("--connect-retry", default=30.0, show_default=True, help="seconds to keep retrying --peer while it starts")
@click.option("--backend", default="cpu", show_default=True)
def demo_run(elements, bits, frac, party, key_path, listen, peer, input_path, output_path, timeout, connect_retry,
             backend) -> None:
    """One server of the demo graph."""
    from fusec import demo as d
    from fusec.runtime import ring
    from fusec.runtime.backend import get_backend
    from fusec.runtime.channel import TcpChannel, parse_address
    from fusec.runtime.party import open_keys, run_party

    if (listen is None) == (peer is None):
        raise FusecError("give exactly one of --listen and --peer", "P0 usually listens, P1 connects with --peer")
    graph = d.build_graph(elements, bits, frac)
    kf, idx = open_keys(graph, party, key_path)       # every key check before any socket
    inputs = {}
    if input_path:
        vec = np.load(input_path)
        if vec.shape != (elements,):
            raise FusecError(f"input {input_path} has shape {vec.shape}, the program expects ({elements},)")
        inputs["w" if party == 0 else "x"] = ring.encode_fixed(vec, frac, bits)
    be = get_backend(backend)
    ch = TcpChannel.listen(*parse_address(listen), timeout=timeout) if listen else \
        TcpChannel.connect(*parse_address(peer), timeout=timeout, retry_for=connect_retry)
    with ch:
        res = run_party(graph, party, kf, idx, ch, inputs, be)
    outs = {k: ring.decode_fixed(v, frac, bits).tolist() for k, v in res.outputs.items()}
    summary = {"party": party, "key_set": res.key_set, "online_seconds": res.online_seconds,
               "rounds": res.rounds, "bytes_sent": res.bytes_sent, "outputs": outs}
    if output_path:
        Path(output_path).write_text(json.dumps(summary))
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "outputs"}))
