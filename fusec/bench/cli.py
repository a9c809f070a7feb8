"""The bench's command line: ``fusec bench`` (the user's command, registered by
:mod:`fusec.cli`) and the worker processes it starts, ``python -m fusec.bench serve|keygen``.

Both are click commands; a user error prints one line and exits with status 2.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from fusec.errors import FusecError
from fusec.party_cli import net_type, tls_argv, tls_options


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FusecError(f"{flag} {text!r} is not a comma-separated list of integers", f"for example {flag} 1,2,4,8") \
            from None


@click.command()
@click.option("--model", "models", default="bert-base,gpt2", show_default=True,
              help="comma-separated presets (bert-base, gpt2, bert-tiny, gpt2-tiny) and/or .onnx files")
@click.option("--seq", "seqs", default="128", show_default=True, help="sequence lengths (comma-separated)")
@click.option("--batch", "batches", default="1", show_default=True, help="true batch sizes (compile-time shape)")
@click.option("--seq-sweep", default="", help="extra sequence lengths, run at the smallest --batch only")
@click.option("--internal-batch", default=4, show_default=True, help="key sets evaluated back to back per timed step")
@click.option("--gates", "gate_sets", default="fused,sigma", show_default=True, help="gate sets to compare")
@click.option("--gpus", default="1", show_default=True,
              help="1: both parties on GPU 0; 2: party p on GPU p (comma-separated to run both); gpu backend only")
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]))
@click.option("--warmup", default=1, show_default=True, help="untimed steps first")
@click.option("--repeat", default=5, show_default=True, help="timed steps (the median is reported)")
@click.option("--layers", type=int, help="override the presets' number of layers (quick runs; recorded)")
@click.option("--bits", type=int, help="ring width n (default: 50, 37 for the tiny presets)")
@click.option("--workdir", type=click.Path(file_okay=False), help="models, builds, logs (default: a temp dir)")
@click.option("--keys-dir", type=click.Path(file_okay=False),
              help="where key files go (default WORKDIR/keys); tens of GB per configuration; prefer a disk "
                   "to tmpfs, whose files take the RAM the parties need")
@click.option("--keys", "keys_mode", default="auto", show_default=True,
              type=click.Choice(["auto", "upfront", "per-step", "stream"]),
              help="generate all key sets first, or each step's right before it, or stream them from a dealer "
                   "process over loopback TCP, no files (fusec keygen --serve); auto: up front if they fit, else "
                   "per step, else streamed")
@click.option("--dealers", default=1, show_default=True,
              help="dealer processes in parallel (up-front keys then go in one file pair per step); "
                   "each needs about 4.5x a key set (per party) of memory")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="results (default WORKDIR/bench.json)")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), help="also write the markdown tables")
@click.option("--padding-ablation", is_flag=True, help="add fused gates without mask-independent padding (INSECURE)")
@click.option("--net", "nets", type=net_type, multiple=True,
              help="emulated network between the parties, repeatable (each runs the whole grid): none, lan "
                   "(1 Gbit/s, 0.5 ms RTT), wan (400 Mbit/s, 4 ms RTT) or BANDWIDTH,RTT such as 10gbit,0.2ms "
                   "[default: none]")
@click.option("--gate-speedups", type=click.Path(dir_okay=False),
              help="JSON of per-gate speed-ups measured alone on this machine ({\"source\": ..., \"speedups\": "
                   "{scope: sigma time / fused time}}), recorded for the Amdahl table")
@click.option("--stream-keys", is_flag=True,
              help="each gate's keys reach the device when it first runs, inside the online clock (as SIGMA "
                   "counts key copies); default: the whole set staged before the clock")
@click.option("--cuda-graphs", is_flag=True,
              help="GPU: each worker records its second inference as a launch plan (one CUDA graph per round) "
                   "and replays it for the rest; use --warmup 2 so the timed steps are replays")
@click.option("--lanes", default=1, show_default=True, type=click.IntRange(min=1),
              help="run each batch as this many worker pairs in flight at once, each on batch / lanes with its own "
                   "connection and key sets, so one lane's kernels run while another's bytes are on the wire "
                   "(batches smaller than --lanes run as one lane per inference)")
@click.option("--compile-arg", "compile_args", multiple=True,
              help="one more `fusec compile` argument for every build (repeat; e.g. --compile-arg=--max-tree "
                   "--compile-arg=packed); it names the results and the builds")
@click.option("--mps", is_flag=True,
              help="GPU: run under CUDA's Multi-Process Service (started and stopped by the bench), so both parties' "
                   "kernels share one card at once instead of taking turns each round (recorded as machine.cuda_mps)")
@click.option("--stripes", default=None, show_default="4; 1 with TLS", type=click.IntRange(1, 16),
              help="TCP connections between the workers: frames of 1 MiB or more go as one slice per connection, "
                   "each moved by its own thread (runtime/striped_channel.py; TLS runs on one)")
@click.option("--timeout", default=1800.0, show_default=True, help="seconds any one stage or step may take")
@click.option("--keep-going", is_flag=True, help="record a failed configuration and go on instead of stopping")
@tls_options
def bench(models, seqs, batches, seq_sweep, internal_batch, gate_sets, gpus, backend, warmup, repeat, layers, bits,
          workdir, keys_dir, keys_mode, dealers, json_path, markdown_path, padding_ablation, nets, gate_speedups,
          stream_keys, cuda_graphs, lanes, compile_args, mps, stripes, timeout, keep_going, tls_cert, tls_key, tls_ca,
          tls_server_name) -> None:
    """End-to-end benchmark: export, compile, keygen, P0 and P1 as processes; JSON (+ markdown).

    With --tls-*, the two workers talk mutual TLS on 127.0.0.1 (the certificate must name
    127.0.0.1, or give --tls-server-name)."""
    from fusec.bench.amdahl import load_gate_speedups
    from fusec.bench.plan import BenchOptions
    from fusec.bench.presets import resolve_model
    from fusec.bench.run import run_bench
    from fusec.run3 import workdir as mkwd

    party_argv = tls_argv(tls_cert, tls_key, tls_ca, tls_server_name)     # refused before anything runs
    party_argv += ["--stream-keys"] if stream_keys else []
    from fusec.runtime.striped_channel import check_stripes
    stripes = check_stripes(stripes, bool(tls_cert or tls_key or tls_ca))    # one line, exit 2: plain TCP only
    party_argv += ["--stripes", str(stripes)]                               # recorded in every result's argv
    if cuda_graphs:
        if stream_keys or backend != "gpu":
            raise click.UsageError("--cuda-graphs replays graphs that read keys staged on the device: it needs "
                                   "--backend gpu and no --stream-keys")
        party_argv += ["--cuda-graphs"]
        if warmup < 2:      # the first inference is interpreted, the second recorded: time replays only
            click.echo(f"--cuda-graphs: --warmup {warmup} -> 2 (interpreted, then recorded)", err=True)
            warmup = 2
    wd = mkwd(workdir)
    opts = BenchOptions(
        models=[resolve_model(m.strip(), layers, bits) for m in models.split(",") if m.strip()],
        seqs=_int_list(seqs, "--seq"), batches=_int_list(batches, "--batch"),
        seq_sweep=_int_list(seq_sweep, "--seq-sweep"), internal_batch=internal_batch,
        gates=[g.strip() for g in gate_sets.split(",") if g.strip()], gpus=_int_list(gpus, "--gpus"),
        backend=backend, warmup=warmup, repeat=repeat, workdir=wd, keys_dir=Path(keys_dir) if keys_dir else None,
        keys_mode=keys_mode, dealers=dealers, padding_ablation=padding_ablation, nets=list(nets) or [None],
        timeout=timeout, keep_going=keep_going, lanes=lanes, compile_args=list(compile_args), mps=mps,
        json_path=Path(json_path) if json_path else wd / "bench.json",
        markdown_path=Path(markdown_path) if markdown_path else None,
        command="fusec " + shlex.join(sys.argv[1:]), party_argv=party_argv,
        gate_microbench=load_gate_speedups(gate_speedups) if gate_speedups else None)
    click.echo(f"workdir {wd}; results -> {opts.json_path}", err=True)
    run_bench(opts, echo=lambda s: click.echo(s, err=True))
    click.echo(str(opts.json_path))


# ---------------------------------------------------------------------- the processes the bench starts
@click.group(name="python -m fusec.bench", context_settings={"help_option_names": ["-h", "--help"]})
def workers() -> None:
    """The processes ``fusec bench`` starts (not meant to be run by hand)."""


@workers.command()
@click.argument("build", type=click.Path(file_okay=False))
@click.option("--party", type=click.IntRange(0, 1), required=True)
@click.option("--listen", help="host:port to accept the peer on (port 0: any free port)")
@click.option("--peer", help="host:port of the listening peer")
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]))
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="seconds without progress before giving up")
@click.option("--connect-retry", default=120.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--seed", default=0, show_default=True, help="seed of the random *inputs* (keys use the CSPRNG)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="write every step's record here at the end (JSON)")
@click.option("--net", type=net_type, default=None, help="emulated network (both workers the same)")
@click.option("--stream-keys", is_flag=True, help="keys reach the device gate by gate inside the online clock")
@click.option("--cuda-graphs", is_flag=True, help="record the second inference as a launch plan, replay it after")
@click.option("--stripes", default=None, type=click.IntRange(1, 16),
              help="TCP connections to the peer (when connecting; default 4, 1 with TLS)")
@tls_options
def serve(build, party, listen, peer, backend, timeout, connect_retry, seed, out_path, net, stream_keys, cuda_graphs,
          stripes, tls_cert, tls_key, tls_ca, tls_server_name) -> None:
    """One party's long-lived worker of a benchmark configuration (JSON lines on stdin/stdout)."""
    from fusec.bench.worker import serve as run

    sys.exit(run(build, party, listen, peer, backend, timeout, connect_retry, seed, out_path,
                 tls=(tls_cert, tls_key, tls_ca, tls_server_name), net=net, stream_keys=stream_keys,
                 cuda_graphs=cuda_graphs, stripes=stripes))


@workers.command()
@click.argument("build", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
@click.option("--count", required=True, type=click.IntRange(min=1))
@click.option("--backend", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]),
              help="where the dealer computes")
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
@click.option("--no-fsync", "durable", flag_value=False, default=True,
              help="do not flush the files to disk (the bench deletes its keys after each step)")
def keygen(build, out, count, backend, json_path, durable) -> None:
    """The dealer, timed from inside."""
    from fusec.bench.keygen import keygen as run

    sys.exit(run(build, out, count, backend, json_path, durable))


@workers.command("keygen-in-memory")
@click.argument("build", type=click.Path(file_okay=False))
@click.option("--count", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--backend", default="gpu", show_default=True, type=click.Choice(["cpu", "gpu"]))
def keygen_in_memory(build, count, backend) -> None:
    """The dealer's sets made and packed where it computes, no copy to the host, no file (timing)."""
    from fusec.bench.keygen import keygen_in_memory as run

    sys.exit(run(build, count, backend))


def main(argv: list[str] | None = None) -> None:
    """``python -m fusec.bench``: the workers' entry point (exits with the worker's status;
    a usage error exits 2 with click's one-line message)."""
    from fusec.allocator import tune_host_allocator  # noqa: PLC0415

    tune_host_allocator()
    workers.main(args=argv, prog_name="python -m fusec.bench")
