"""``python -m fusec.models KIND OUT.onnx [options]``: write one model, print its inputs,
outputs and op counts.

Kinds are a table (:data:`BUILDERS`: name -> function of the parsed options), so a new
family is one entry here; options a kind does not use are ignored by it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import click

from fusec.errors import FusecError
from fusec.models.bert import export_bert
from fusec.models.digits import train_digits_cnn, train_digits_mlp
from fusec.models.gpt2 import export_gpt2
from fusec.models.info import DigitsModel, ExportedModel, op_counts
from fusec.models.minilm import export_minilm
from fusec.models.torch_export import EXPORTERS


@dataclass(frozen=True)
class ModelArgs:
    """The command line's options, as every builder in :data:`BUILDERS` sees them."""

    out: str
    exporter: str
    layers: int
    hidden: int
    heads: int
    intermediate: int | None
    vocab: int
    positions: int | None
    seq: int
    batch: int
    seed: int


def _bert(a: ModelArgs) -> ExportedModel:
    return export_bert(a.out, a.layers, a.hidden, a.heads, a.intermediate or 4 * a.hidden, a.vocab, a.seq,
                       a.batch, a.exporter, a.seed, positions=a.positions or 512)


def _gpt2(a: ModelArgs) -> ExportedModel:
    return export_gpt2(a.out, a.layers, a.hidden, a.heads, a.vocab, a.positions or 64, a.seq, a.exporter,
                       a.seed, batch=a.batch)


def _minilm(a: ModelArgs) -> ExportedModel:
    return export_minilm(a.out, a.seq, a.batch, a.exporter)


def _digits_mlp(a: ModelArgs) -> DigitsModel:
    return train_digits_mlp(a.out, seed=a.seed)


def _digits_cnn(a: ModelArgs) -> DigitsModel:
    return train_digits_cnn(a.out, seed=a.seed)


#: kind -> builder; a builder returns an ExportedModel, or a DigitsModel (trained, with accuracy)
BUILDERS: dict[str, Callable[[ModelArgs], ExportedModel | DigitsModel]] = {
    "bert": _bert,
    "gpt2": _gpt2,
    "minilm": _minilm,
    "digits-mlp": _digits_mlp,
    "digits-cnn": _digits_cnn,
}


@click.command(name="python -m fusec.models", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("kind", type=click.Choice(list(BUILDERS)), metavar="KIND")
@click.argument("out", type=click.Path(dir_okay=False), metavar="OUT.onnx")
@click.option("--exporter", default="legacy", show_default=True, type=click.Choice(EXPORTERS))
@click.option("--layers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--hidden", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--heads", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--intermediate", type=click.IntRange(min=1), help="feed-forward width [default: 4*hidden]")
@click.option("--vocab", default=1000, show_default=True, type=click.IntRange(min=2))
@click.option("--positions", type=click.IntRange(min=1), help="position embeddings [default: bert 512, gpt2 64]")
@click.option("--seq", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
def command(kind: str, out: str, **opts) -> None:
    """Write one model (KIND: bert, gpt2, minilm, digits-mlp, digits-cnn) to OUT.onnx and
    print its inputs, outputs and op counts."""
    r = BUILDERS[kind](ModelArgs(out=out, **opts))
    if isinstance(r, DigitsModel):
        click.echo(f"float test accuracy {r.accuracy:.4f}")
        r = r.info
    click.echo(f"{r.path}  ({r.path.stat().st_size} bytes, opset {r.opset}, {r.exporter})")
    click.echo(f"inputs  {r.inputs}")
    click.echo(f"outputs {r.outputs}")
    click.echo(f"ops     {op_counts(r.path)}")


def main(argv: list[str] | None = None) -> int:
    """Run the command; a user error prints one line and returns 2 (never a traceback)."""
    try:
        command.main(args=argv, prog_name="python -m fusec.models", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except FusecError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
