"""Command line: ``mplfast train | eval | ablate`` (also ``python -m mplfast``, and under torchrun).

User mistakes end as one line on stderr and exit status 2 (never a traceback); anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn, Sequence

from mplfast.errors import UserError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as ONE line (no usage dump) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"mplfast: error: {message} (see `{self.prog} --help`)\n")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of config fields (applied after the preset)")
    p.add_argument("--preset", metavar="NAME",
                   help="digits (default), cifar10-4k, cifar100-10k, svhn-1k, imagenet-10pct")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field (repeatable; applied last); see --help-config")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    from mplfast.train.config import DATASETS

    p.add_argument("--dataset", choices=DATASETS, help="data set (default: digits)")
    p.add_argument("--data", metavar="PATH", help="data set root (cifar/svhn/imagefolder)")
    p.add_argument("--unlabeled", metavar="PATH", help="extra unlabeled image folder (imagefolder)")
    p.add_argument("--labels", type=int, metavar="N", help="number of labeled images (class-balanced)")
    p.add_argument("--steps", type=int, metavar="N", help="training steps")
    p.add_argument("--strict", dest="strict_data", action="store_const", const=True,
                   help="fail on unreadable or corrupt image files (default: warn, naming them, and skip them)")


def build_parser() -> argparse.ArgumentParser:
    """The full ``mplfast`` parser (exposed for docs and tests)."""
    from mplfast.train.config import METHODS

    parser = _Parser(prog="mplfast", description="Fast, trustworthy Meta Pseudo Labels.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="{train,eval,ablate}")

    t = sub.add_parser("train", help="train teacher and student (MPL), UDA or supervised")
    _add_data_options(t)
    t.add_argument("--method", choices=METHODS, help="mpl (default), uda or supervised")
    t.add_argument("--seed", type=int, metavar="S")
    t.add_argument("--out", metavar="DIR", help="write config, metrics, checkpoint, curves here "
                   "(default: a new runs/<dataset>-<method>-seed<seed>[-N])")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    _add_config_options(t)
    t.add_argument("--help-config", action="store_true", help="list every config field and exit")

    e = sub.add_parser("eval", help="evaluate a checkpoint's models on the test split")
    e.add_argument("--checkpoint", required=True, metavar="PATH")
    e.add_argument("--data", metavar="PATH", help="data root, if it moved since training")
    e.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")

    from mplfast.train.ablate import add_ablate_arguments

    a = sub.add_parser("ablate", help="does the MPL term help? every row over the same seeds, "
                       "paired against the h = 0 control")
    _add_data_options(a)
    add_ablate_arguments(a)
    _add_config_options(a)
    return parser


def _flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n, None) for n in names if getattr(args, n, None) is not None}


def _print_help_config() -> None:
    import dataclasses

    from mplfast.train.config import TrainConfig, _type_name, _field_type

    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        print(f"{f.name:24s} {_type_name(_field_type(f.name)):16s} {default!r}")


def _fmt_acc(summary: dict[str, Any]) -> str:
    keys = ("teacher_acc", "student_acc", "ema_acc", "finetune_acc")
    return "  ".join(f"{k} {summary[k]:.2f}" for k in keys if k in summary)


def cmd_train(args: argparse.Namespace) -> int:
    """``mplfast train``."""
    from mplfast.train import config as C
    from mplfast.train.runner import default_out_dir, prepare_out_dir, run

    if args.help_config:
        _print_help_config()
        return 0
    flags = _flags(args, ("dataset", "data", "unlabeled", "labels", "strict_data", "method", "steps", "seed",
                          "out", "device"))
    ckpt = None
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out DIR (the directory holding checkpoint.pt)")
        if args.preset:
            raise UserError("--preset cannot be combined with --resume: the checkpoint's config "
                            "is used (change single fields with --set)")
        base = C.apply_overrides(C.TrainConfig(), {"out": args.out})
        ckpt = prepare_out_dir(base, resume=True)
        assert ckpt is not None
        saved = C.apply_overrides(C.TrainConfig(), ckpt["config"], "checkpoint config")
        cfg = C.resolve(config_file=args.config, flags=flags, sets=args.sets, base=saved)
    else:
        cfg = C.resolve(preset=args.preset, config_file=args.config, flags=flags, sets=args.sets)
        if not cfg.out:  # a run always keeps its checkpoint, metrics and curves
            cfg = C.apply_overrides(cfg, {"out": default_out_dir(cfg)})
        prepare_out_dir(cfg, resume=False)
    result = run(cfg, resume_state=ckpt)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result.interrupted:
        where = (f"checkpoint written to {os.path.join(cfg.out, 'checkpoint.pt')}; continue with "
                 f"`mplfast train --out {cfg.out} --resume`") if cfg.out else "no --out, nothing saved"
        print(f"stopped by {result.signame or 'signal'} after {result.where}; {where}",
              file=sys.stderr, flush=True)
        return 0
    s = result.summary
    print(f"done: {s['method']} on {s['dataset']} ({s['labels']} labels, seed {s['seed']}, "
          f"{s['steps']} steps, world size {s['world_size']}) in {s['wall_s']:.1f} s, "
          f"{s['images_per_s']:.0f} images/s")
    print(f"test_acc {s['test_acc']:.2f}  ({_fmt_acc(s)})", flush=True)
    if cfg.out:
        print(f"outputs in {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``mplfast eval --checkpoint PATH``."""
    from mplfast.train.evaluate_checkpoint import evaluate_checkpoint

    step, accs = evaluate_checkpoint(args.checkpoint, data=args.data, device=args.device)
    print(f"checkpoint {args.checkpoint} at step {step}")
    for k, v in accs.items():
        print(f"{k} {v:.2f}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """``mplfast ablate`` (its options and logic live in mplfast.train.ablate)."""
    from mplfast.train import ablate

    flags = _flags(args, ("dataset", "data", "unlabeled", "labels", "strict_data", "steps", "device"))
    table = ablate.cmd_ablate(args, flags)
    print(table.markdown)
    print(f"table written to {table.md_path} and {table.json_path}"
          + (f", plot {table.plot_path}" if table.plot_path else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mplfast`` console script; returns the exit status."""
    parser = build_parser()
    raw = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(raw)
    args.argv = raw  # the ablation table records the exact command
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_ablate(args)
    except UserError as e:
        print(f"mplfast: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # a second Ctrl-C while stopping, or an ablation whose run was stopped
        print("mplfast: interrupted (rerun the same command with --resume / again to continue)",
              file=sys.stderr, flush=True)
        return 130
    except FileNotFoundError as e:
        # a path the user gave that vanished between validation and use
        name = f": {e.filename}" if e.filename else ""
        print(f"mplfast: error: {e.strerror or e}{name}", file=sys.stderr, flush=True)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
