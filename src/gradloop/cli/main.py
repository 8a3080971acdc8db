"""`gradloop`: train, resume, evaluate and compare PyTorch runs from the shell.

Exit codes: 0 success; 1 a check or training failed (e.g. `doctor` found a problem); 2 bad input
(config, data, paths, arguments), reported as one line `gradloop: error: ...` on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from ..persistence.runlock import RunDirLocked
from ..util import first_line
from .errors import UsageError

EXAMPLES = {
    "demo": """examples:
  gradloop demo                              # CNN on the bundled digits, writes runs/demo-<time>/
  gradloop demo --set train.max_epochs=5     # shorter
  gradloop demo --run-dir runs/my-demo""",
    "fit": """examples:
  gradloop fit wine.toml
  gradloop fit wine.toml --set train.lr=0.01 --set model.hidden=[64,32]
  gradloop fit mnist.toml --run-dir runs/mnist-cnn

a minimal config:
  [data]
  name = "wine"            # or: path = "data.csv" (target = "label"), an .npz (X, y), an IDX folder
  [model]
  name = "mlp"             # mlp | cnn | "package.module:factory"
  [train]
  max_epochs = 30""",
    "resume": """examples:
  gradloop resume runs/wine-20250101-120000
  gradloop resume runs/wine-20250101-120000 --max-epochs 100   # train longer""",
    "eval": """examples:
  gradloop eval runs/wine-20250101-120000                 # the run's validation (and test) data
  gradloop eval runs/wine-20250101-120000 --data new.csv  # labelled file: CSV, .npz or IDX folder
  gradloop eval runs/wine-20250101-120000 --data other.toml""",
    "predict": """examples:
  gradloop predict runs/wine-20250101-120000 new.csv                  # CSV to stdout
  gradloop predict runs/wine-20250101-120000 new.csv --out preds.csv
  gradloop predict runs/mnist-cnn mnist/ --out preds.csv              # IDX folder (test images)

output columns: prediction, prob_<label>... (classifiers); prediction (regressors)""",
    "doctor": """examples:
  gradloop doctor wine.toml
  gradloop doctor wine.toml --set train.lr=0.1
  gradloop doctor wine.toml --resume --steps 40""",
    "plot": """examples:
  gradloop plot runs/wine-20250101-120000     # writes runs/wine-20250101-120000/curves.png""",
    "verify": """examples:
  gradloop verify runs/wine-20250101-120000                  # its checkpoints and model.safetensors
  gradloop verify runs/wine-20250101-120000/checkpoints/last.ckpt other.ckpt

one line per file: `ok` with the epoch and step it holds, or `FAIL` and what is wrong;
exit 1 when a file fails""",
    "report": """examples:
  gradloop report runs/wine-20250101-120000                  # writes ./report.html
  gradloop report runs/wine-lr-0.01 runs/wine-lr-0.001 --out compare.html

one self-contained HTML file (opens offline): the runs' curves overlaid, their settings side by
side with the differences marked, best and final metrics, doctor findings, checkpoints""",
    "runs": """examples:
  gradloop runs             # runs under ./runs
  gradloop runs experiments/""",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `gradloop: error: ...` and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"gradloop: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradloop",
        description="Train, resume, evaluate and compare PyTorch runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `gradloop COMMAND --help` for a command's options and examples",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"gradloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help: str, overrides: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter)
        if overrides:
            p.add_argument(
                "--set",
                dest="overrides",
                action="append",
                default=[],
                metavar="SECTION.KEY=VALUE",
                help="override a config value (a TOML value, e.g. train.lr=0.01); repeatable",
            )
        return p

    def run_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `gradloop fit`")

    p = command("demo", "train the embedded default: a small CNN on the bundled 8x8 digits", overrides=True)
    p.add_argument("--run-dir", metavar="DIR", help="the run directory to create (default: runs/demo-<time>)")

    p = command("fit", "train the run described by a TOML config", overrides=True)
    p.add_argument("config", metavar="CONFIG.toml", help="the run's settings ([data], [model], [train], [callbacks.*])")
    p.add_argument("--run-dir", metavar="DIR", help="the run directory to create (default: runs/<config name>-<time>)")

    p = command("resume", "continue a run from its newest checkpoint")
    run_dir(p)
    p.add_argument("--max-epochs", type=int, metavar="N", help="raise the run's max_epochs (counted from its start)")

    p = command("eval", "evaluate a run's final model")
    run_dir(p)
    p.add_argument(
        "--data", metavar="CONFIG_OR_FILE", help="a config (its [data]) or a labelled CSV / .npz / IDX folder; default: the run's own data"
    )

    p = command("predict", "predict with a run's final model")
    run_dir(p)
    p.add_argument("input", metavar="INPUT", help="a CSV (feature columns), .npz (X), .npy, or IDX folder/file")
    p.add_argument("--out", metavar="FILE", help="write the CSV here (default: stdout)")

    p = command("doctor", "sanity-check a config's data and model before a long run", overrides=True)
    p.add_argument("config", metavar="CONFIG.toml", help="the run's settings")
    p.add_argument(
        "--resume",
        action="store_true",
        help="instead of the checks: train, and again interrupted mid-epoch and resumed; exit 1 unless both end bit-identical",
    )
    p.add_argument("--steps", type=int, metavar="N", help="with --resume: steps per run (default: the config's, at most 3 epochs)")

    p = command("plot", "(re)write RUN_DIR/curves.png from metrics.csv")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")

    p = command("verify", "check every checkpoint's checksum and structure")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR|FILE", help="run directories (their checkpoints/ and model.safetensors) or files")

    p = command("report", "write one HTML page comparing runs: curves, settings, metrics, checkpoints")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each with a metrics.csv)")
    p.add_argument("--out", metavar="FILE", default="report.html", help="the HTML file to write (default: ./report.html)")

    p = command("runs", "list runs with their best and final metrics")
    p.add_argument("dir", nargs="?", metavar="DIR", help="where the runs are (default: runs)")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Runs one command; each imports what it needs (torch, scikit-learn) only when it runs."""
    command = args.command
    if command in ("demo", "fit", "resume"):
        from .commands import fit

        if command == "demo":
            return fit.demo(args.overrides, args.run_dir)
        if command == "fit":
            return fit.fit(args.config, args.overrides, args.run_dir)
        if args.max_epochs is not None and args.max_epochs < 1:
            raise UsageError(f"--max-epochs must be a positive integer; got {args.max_epochs}")
        return fit.resume(args.run_dir, args.max_epochs)
    if command in ("eval", "predict"):
        from .commands import evaluate

        if command == "eval":
            return evaluate.evaluate(args.run_dir, args.data)
        return evaluate.predict(args.run_dir, args.input, args.out)
    if command == "doctor":
        from .commands.doctor import doctor, doctor_resume

        if args.steps is not None and not args.resume:
            raise UsageError("--steps goes with --resume")
        if args.steps is not None and args.steps < 2:
            raise UsageError(f"--steps must be at least 2 (a run is interrupted between two steps); got {args.steps}")
        if args.resume:
            return doctor_resume(args.config, args.overrides, args.steps)
        return doctor(args.config, args.overrides)
    if command == "plot":
        from .commands.plot import plot

        return plot(args.run_dir)
    if command == "verify":
        from .commands.verify import verify

        return verify(args.paths)
    if command == "report":
        from .commands.report import report

        return report(args.run_dirs, args.out)
    from .commands.runs import runs

    return runs(args.dir)


def main(argv: Sequence[str] | None = None) -> int:
    """The `gradloop` console script. Returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UsageError as err:
        print(f"gradloop: error: {err}", file=sys.stderr)
        return 2
    except RunDirLocked as err:  # another process trains in this run directory
        print(f"gradloop: error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngradloop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gradloop predict ... | head`: stop quietly (as the Python docs advise)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # a bug, not bad input: one line, the traceback on request
        if os.environ.get("GRADLOOP_DEBUG"):
            traceback.print_exc()
        else:
            print(f"gradloop: error: {type(err).__name__}: {first_line(err)} (set GRADLOOP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
