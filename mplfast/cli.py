"""Command line: ``mplfast train | eval | ablate | models`` (also ``python -m mplfast``, and
under torchrun).

User mistakes end as one line on stderr and exit status 2 (never a traceback); anything else
is a bug and keeps its traceback. A run stopped by Ctrl-C exits 130 and by SIGTERM 143 (128 +
the signal number, what shells and schedulers expect), after writing its checkpoint.
"""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import warnings
from typing import Any, NoReturn, Sequence

from mplfast.errors import UserError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as ONE line (no usage dump) with exit status 2,
    never accepts an abbreviated flag (``--step`` is a typo, not ``--steps``), and suggests
    the closest flag for an unknown one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"mplfast: error: {message} (see `{self.prog} --help`)\n")


def _option_strings(p: argparse.ArgumentParser) -> list[str]:
    return [o for a in p._actions for o in a.option_strings if o.startswith("--")]


def _unknown_args_message(parser: argparse.ArgumentParser, command: str | None,
                          unknown: list[str]) -> str:
    """``unrecognized arguments: --stpes (did you mean --steps?)``."""
    sub = None
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction) and command in a.choices:
            sub = a.choices[command]
    known = _option_strings(sub if sub is not None else parser)
    parts = []
    for arg in unknown:
        flag = arg.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag.startswith("-") else []
        parts.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    return "unrecognized arguments: " + " ".join(parts)


def _format_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    # mplfast's own warnings (a corrupt image skipped, ...) are messages to the user: one
    # clean line, not the source location plus the warnings.warn() call. Only the format is
    # changed, so warning filters and capture (pytest.warns, logging) still see them.
    if category.__module__.startswith("mplfast"):
        return "mplfast: warning: " + " ".join(str(message).split()) + "\n"
    return _default_formatwarning(message, category, filename, lineno, line)


_default_formatwarning = warnings.formatwarning


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of config fields (applied after the preset)")
    p.add_argument("--preset", metavar="NAME",
                   help="a named recipe: digits, auto, cifar10-4k, cifar100-10k, svhn-1k, "
                   "imagenet-10pct (default: digits for the built-in data, else auto: sized to "
                   "the data; a paper recipe applies only when named)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field (repeatable; applied last); see --help-config")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    from mplfast.train.config import DATASETS

    p.add_argument("--dataset", choices=DATASETS, help="data set (default: digits; imagefolder "
                   "when --data is an image folder)")
    p.add_argument("--data", metavar="PATH",
                   help="data set root (cifar/svhn/imagefolder; default: $MPLFAST_DATA; without "
                        "--dataset it must be an image folder, DIR/<class> or DIR/train/<class>)")
    p.add_argument("--unlabeled", metavar="PATH", help="extra unlabeled image folder (imagefolder)")
    p.add_argument("--labels", type=int, metavar="N", help="number of labeled images, class-balanced "
                   "(default: 50 on digits; else derived from the data: 10%% of the train "
                   "images, >= 4 per class, or all of them with --unlabeled)")
    p.add_argument("--steps", type=int, metavar="N", help="training steps (default: 1000, or "
                   "the preset's)")
    p.add_argument("--strict", dest="strict_data", action="store_const", const=True,
                   help="fail on unreadable or corrupt image files (default: warn, naming them, and skip them)")
    _add_split_options(p)


def _add_split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--test-fraction", dest="test_fraction", type=float, metavar="F",
                   help="image folder without val/ or test/: part of each class held out as the "
                        "test split (default 0.2; the same split for every seed)")
    p.add_argument("--val-fraction", dest="val_fraction", type=float, metavar="F",
                   help="part of each class of the training pool held out, never trained on, to "
                        "choose best.pt (default 0.1; 0: no validation split and no best.pt)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--stream", dest="stream", action="store_const", const=True,
                   help="image folder: stream batches from disk with DALI instead of holding the "
                        "decoded images in memory (default: only when they would not fit)")
    g.add_argument("--no-stream", dest="stream", action="store_const", const=False,
                   help="image folder: always hold the decoded images in memory")


# the options of _add_pretrained_options, as config field names
PRETRAINED_FLAGS = ("model", "pretrained", "pretrained_student", "backbone_lr_scale", "image_size",
                    "mean", "std")


def _add_pretrained_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and pretrained weights (see docs/pretrained.md)")
    g.add_argument("--model", metavar="NAME", help="model of teacher and student (see `mplfast "
                   "models`; timm/<name> with timm installed; default: the preset's)")
    g.add_argument("--pretrained", metavar="SOURCE",
                   help="start teacher and student from these weights: a .safetensors or "
                   ".pt/.pth state dict (read without running code), or `timm` for timm's own "
                   "weights of a timm/<name> model; the classifier head is new where its shape differs")
    g.add_argument("--pretrained-student", dest="pretrained_student", choices=("same", "none"),
                   help="none: only the teacher starts from --pretrained, the student from "
                   "scratch (default: same)")
    g.add_argument("--backbone-lr-scale", dest="backbone_lr_scale", type=float, metavar="F",
                   help="learning rate of all but the classifier head, as a multiple of the lr "
                   "(default 0.1 with --pretrained, else 1)")
    g.add_argument("--image-size", dest="image_size", type=int, metavar="N",
                   help="side image folders are resized to (default: the pretrained weights' "
                   "size where they record one, else 32)")
    g.add_argument("--mean", metavar="M1,M2,M3", help="per-channel normalization mean in [0, 1] "
                   "units (default: the pretrained weights' where they record one, else the "
                   "training images')")
    g.add_argument("--std", metavar="S1,S2,S3", help="per-channel normalization std (with --mean)")


def _pretrained_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields of _add_pretrained_options that were given. ``--model NAME`` other than
    the preset's starts from NAME's own defaults: the preset's model_kwargs (the digits small
    CNN's width) belong to its model, unless --config or --set gives model_kwargs."""
    from mplfast.train import config as C
    from mplfast.train.presets import default_preset, get_preset

    flags = _flags(args, PRETRAINED_FLAGS)
    if "model" not in flags or any(s.split("=", 1)[0].strip() == "model_kwargs" for s in args.sets):
        return flags
    file = C.load_yaml(args.config) if args.config else {}
    if "model_kwargs" in file:
        return flags
    preset = args.preset or file.get("preset") or default_preset(
        getattr(args, "dataset", None) or file.get("dataset"))
    if flags["model"] != get_preset(str(preset)).get("model", C.TrainConfig.model):
        flags["model_kwargs"] = {}
    return flags


def _add_eval_parsers(sub: Any) -> None:
    from mplfast.train.evaluate_checkpoint import SPLITS
    from mplfast.train.predict import FORMATS

    e = sub.add_parser("eval", help="top-1/top-5/per-class/balanced accuracy and the confusion "
                                    "matrix of a run's models on one split")
    e.add_argument("run", nargs="?", metavar="RUN|FILE",
                   help="run folder (its best.pt, else last.pt, else checkpoint.pt) or a .pt file")
    e.add_argument("--checkpoint", metavar="PATH", help="same as RUN|FILE")
    e.add_argument("--split", choices=SPLITS, default="test",
                   help="test (default), val (the held-out validation split) or train")
    e.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    e.add_argument("--model", choices=("teacher", "student", "ema", "finetuned"),
                   help="model whose per-class table and confusion matrix are shown "
                        "(default: the headline one)")
    e.add_argument("--data", metavar="PATH", help="data root, if it moved since training")
    e.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")

    x = sub.add_parser("export", help="write a run's model as safetensors + a JSON description")
    x.add_argument("run", metavar="RUN|FILE", help="run folder (best.pt, else last.pt) or model file")
    x.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="weights file; the description goes beside it as FILE.json")
    x.add_argument("--model", choices=("teacher", "student", "ema", "finetuned"),
                   help="which model (default: the run's headline model)")

    p = sub.add_parser("predict", help="top-k classes of image files")
    p.add_argument("source", metavar="RUN_OR_EXPORT",
                   help="export (.safetensors or .json), model file (.pt) or run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    p.add_argument("--top-k", dest="top_k", type=int, default=5, metavar="K",
                   help="classes per image (default 5, at most the number of classes)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="text (default on screen), csv or json (default: from --output's suffix)")
    p.add_argument("--output", metavar="FILE", help="write the predictions here instead of stdout")
    p.add_argument("--model", choices=("teacher", "student", "ema", "finetuned"),
                   help="which model of a run or model file (default: the headline one)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64, metavar="N")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--strict", action="store_true",
                   help="fail on an unreadable or corrupt image (default: warn, naming it, skip "
                        "it, and fail only if no image can be read)")


def build_parser() -> argparse.ArgumentParser:
    """The full ``mplfast`` parser (exposed for docs and tests)."""
    from mplfast.train.config import METHODS

    import mplfast

    parser = _Parser(prog="mplfast", description="Fast, trustworthy Meta Pseudo Labels.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser,
                                metavar="{train,eval,export,predict,ablate,models,convert-checkpoint}")

    sub.add_parser("models", help="list the model names (for --set model=NAME)")
    t = sub.add_parser("train", help="train teacher and student (MPL), UDA or supervised")
    _add_data_options(t)
    t.add_argument("--method", choices=METHODS, help="mpl (default), uda or supervised")
    t.add_argument("--seed", type=int, metavar="S", help="random seed (default: 0)")
    t.add_argument("--out", metavar="DIR", help="write config, metrics, checkpoint, curves here "
                   "(default: a new runs/<dataset>-<method>-seed<seed>[-N])")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    t.add_argument("--keep", type=int, metavar="N",
                   help="keep the N previous last.pt model files as step-<N>.pt (default 0)")
    _add_pretrained_options(t)
    _add_config_options(t)
    t.add_argument("--help-config", action="store_true",
                   help="list every config field (type, default, allowed values, meaning, and "
                   "the value this command's --preset/--config/--set would use) and exit")
    t.add_argument("--print-config", action="store_true",
                   help="print the final merged config (YAML, usable with --config) and exit")
    parser.add_argument("--version", action="version", version=f"mplfast {mplfast.__version__}")

    _add_eval_parsers(sub)

    from mplfast.train.ablate import add_ablate_arguments

    a = sub.add_parser("ablate", help="does the MPL term help? every row over the same seeds, "
                       "paired against the h = 0 control")
    _add_data_options(a)
    add_ablate_arguments(a)
    _add_pretrained_options(a)
    _add_config_options(a)
    _add_convert_parser(sub)
    return parser


def _flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n, None) for n in names if getattr(args, n, None) is not None}


def _config_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Every given flag that names a config field (for --help-config's "this run" column)."""
    from mplfast.train.config import FIELD_NAMES

    return {k: v for k, v in vars(args).items() if k in FIELD_NAMES and v is not None}


def _print_help_config(cfg: Any) -> None:
    """Every field: key, type, default, the value ``cfg`` has (``*`` if not the default),
    allowed values and meaning."""
    from mplfast.train.config import field_rows

    print(f"config fields (preset {cfg.preset}); set with --config FILE.yaml or --set KEY=VALUE; "
          "mpl.* fields also by their flat name (--set threshold=0.9)")
    print(f"{'key':26s} {'type':14s} {'default':14s} {'this run':14s} allowed: meaning")
    for key, tp, default, value, allowed, meaning in field_rows(cfg):
        mark = "*" if value != default else " "
        print(f"{key:26s} {tp:14s} {default:14s} {mark}{value:13s} {allowed}: {meaning}")


def _print_config(cfg: Any) -> None:
    import yaml

    print("# the final merged config (labels: null means derived from the data at start-up)")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


def cmd_models(args: argparse.Namespace) -> int:
    """``mplfast models``: one registered model name a line."""
    from mplfast.models import list_models

    for name in list_models():
        print(name)
    return 0


def _fmt_acc(summary: dict[str, Any]) -> str:
    keys = ("teacher_acc", "student_acc", "ema_acc", "finetune_acc")
    return "  ".join(f"{k} {summary[k]:.2f}" for k in keys if k in summary)


def _resume_config(args: argparse.Namespace, flags: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(config, checkpoint) of ``--resume``: the checkpoint's config with the user's changes,
    refusing changes that would silently alter the finished schedule."""
    from mplfast.train import config as C
    from mplfast.train.runner import prepare_out_dir

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
    if cfg.steps != saved.steps:
        # the warmup + cosine schedule is a function of the total: a new total would jump the
        # learning rate (back up from 0 for a finished run)
        raise UserError(f"--resume: {args.out} was trained on a {saved.steps}-step learning-rate "
                        f"schedule; resuming with --steps {cfg.steps} would change it mid-run. "
                        f"Start a new run instead: mplfast train --config "
                        f"{os.path.join(args.out, 'config.yaml')} --steps {cfg.steps}")
    changed = C.resume_changes(saved, cfg)
    if changed:
        key, old, new = changed[0]
        raise UserError(f"--resume: {args.out} was trained with {key} {_show(old)}; this command "
                        f"gives {key} {_show(new)}, which would change the run mid-way (a resumed "
                        f"run keeps every setting that defines it; to change {key}, start a new "
                        f"run with another --out)")
    return cfg, ckpt


def _show(value: Any) -> str:
    """A config value as the user would type it (YAML flow style: null, true, {a: 1})."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


def _finished_message(cfg: Any, ckpt: dict[str, Any]) -> str:
    summary = os.path.join(cfg.out, "summary.json")
    return (f"{cfg.out} holds a finished run ({ckpt['step']} of {cfg.steps} steps); nothing to "
            f"resume, nothing changed (results in {summary})")


def _exit_status(signame: str | None) -> int:
    """128 + signal number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    try:
        return 128 + int(signal.Signals[signame or "SIGINT"])
    except KeyError:
        return 130


def cmd_train(args: argparse.Namespace) -> int:
    """``mplfast train``."""
    from mplfast.train import config as C
    from mplfast.train.runner import default_out_dir, prepare_out_dir, run

    if args.help_config:
        _print_help_config(C.resolve(preset=args.preset, config_file=args.config,
                                     flags=_config_flags(args), sets=args.sets, check=False))
        return 0
    flags = _flags(args, ("dataset", "data", "unlabeled", "labels", "strict_data", "method", "steps", "seed",
                          "out", "device", "test_fraction", "val_fraction", "stream", "keep"))
    flags.update(_pretrained_flags(args))
    ckpt = None
    if args.resume:
        cfg, ckpt = _resume_config(args, flags)
        if ckpt.get("phase") == "done":
            # nothing to train: touching the folder would only add a second TensorBoard file
            if int(os.environ.get("RANK", "0")) == 0:
                print(_finished_message(cfg, ckpt), flush=True)
            return 0
    else:
        cfg = C.resolve(preset=args.preset, config_file=args.config, flags=flags, sets=args.sets)
        if args.print_config:
            _print_config(cfg)
            return 0
        if not cfg.out:  # a run always keeps its checkpoint, metrics and curves
            cfg = C.apply_overrides(cfg, {"out": default_out_dir(cfg)})
        prepare_out_dir(cfg, resume=False)
    if args.print_config:
        _print_config(cfg)
        return 0
    result = run(cfg, resume_state=ckpt, argv=["mplfast", *args.argv])
    if int(os.environ.get("RANK", "0")) != 0:
        return _exit_status(result.signame) if result.interrupted else 0
    if result.interrupted:
        where = (f"checkpoint written to {os.path.join(cfg.out, 'checkpoint.pt')}; continue with "
                 f"`mplfast train --out {cfg.out} --resume`") if cfg.out else "no --out, nothing saved"
        print(f"stopped by {result.signame or 'signal'} after {result.where}; {where}",
              file=sys.stderr, flush=True)
        return _exit_status(result.signame)
    s = result.summary
    print(f"done: {s['method']} on {s['dataset']} ({s['labels']} labels, seed {s['seed']}, "
          f"{s['steps']} steps, world size {s['world_size']}) in {s['wall_s']:.1f} s, "
          f"{s['images_per_s']:.0f} images/s")
    print(f"test_acc {s['test_acc']:.2f}  ({_fmt_acc(s)})", flush=True)
    if s.get("best_step") is not None:
        print(f"best.pt (chosen on the validation split): step {s['best_step']}, val_acc "
              f"{s['best_val_acc']:.2f}, test_acc {s['best_test_acc']:.2f}", flush=True)
    if cfg.out:
        print(f"outputs in {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``mplfast eval RUN|FILE``."""
    from mplfast.train.evaluate_checkpoint import evaluate_run, print_report, write_json

    if (args.run is None) == (args.checkpoint is None):
        raise UserError("eval needs one run folder or file (RUN|FILE or --checkpoint PATH)")
    r = evaluate_run(args.run or args.checkpoint, split=args.split, data=args.data,
                     device=args.device)
    if args.model is not None and args.model not in r.models:
        raise UserError(f"--model {args.model}: {r.source} has {', '.join(r.models)}")
    print_report(r, model=args.model)
    if args.json:
        write_json(r, args.json)
        print(f"report written to {args.json}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``mplfast export RUN --out model.safetensors``."""
    from mplfast.train.export import export_run

    weights, meta_path, meta = export_run(args.run, args.out, model=args.model)
    print(f"exported {meta['source']['weights']} model {meta['model']} (step "
          f"{meta['source']['step']}, {meta['num_classes']} classes, "
          f"{meta['image_size'][0]}x{meta['image_size'][1]}) to {weights} and {meta_path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``mplfast predict RUN_OR_EXPORT IMAGES...``."""
    from mplfast.train.distributed import _pick_device
    from mplfast.train.export import load_any
    from mplfast.train.predict import collect_images, predict_files, render

    fmt = args.format
    if fmt is None:
        suffix = os.path.splitext(args.output or "")[1].lower()
        fmt = {".csv": "csv", ".json": "json"}.get(suffix, "text")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        device = _pick_device(args.device or "auto", 0)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"--device: {str(e).splitlines()[0]}") from None
    files = collect_images(args.images)
    model, meta = load_any(args.source, device, model=args.model)
    preds = predict_files(model, meta, files, top_k=args.top_k, batch_size=args.batch_size,
                          device=device, strict=args.strict)
    text = render(preds, fmt)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise UserError(f"cannot write --output {args.output}: {e.strerror or e}") from None
        skipped = len(files) - len(preds)
        print(f"{len(preds)} predictions written to {args.output}"
              + (f" ({skipped} unreadable file(s) skipped)" if skipped else ""))
    else:
        sys.stdout.write(text)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """``mplfast ablate`` (its options and logic live in mplfast.train.ablate)."""
    from mplfast.train import ablate

    flags = _flags(args, ("dataset", "data", "unlabeled", "labels", "strict_data", "steps", "device",
                          "test_fraction", "val_fraction", "stream"))
    flags.update(_pretrained_flags(args))
    table = ablate.cmd_ablate(args, flags)
    print(table.markdown)
    print(f"table written to {table.md_path} and {table.json_path}"
          + (f", plot {table.plot_path}" if table.plot_path else ""))
    return 0


def _add_convert_parser(sub: Any) -> None:
    c = sub.add_parser("convert-checkpoint",
                       help="rewrite a checkpoint of an older mplfast, that you trust, in the format "
                            "that loads without running code")
    c.add_argument("file", metavar="FILE", help="the checkpoint to convert")
    c.add_argument("--trust", action="store_true",
                   help="required: converting reads FILE with the full unpickler, which runs "
                        "any code FILE holds")
    c.add_argument("--out", metavar="PATH", help="write the converted checkpoint here "
                   "(default: replace FILE, atomically)")


def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    """``mplfast convert-checkpoint --trust FILE [--out PATH]``."""
    from mplfast.train.checkpoint import convert_trusted

    if not args.trust:
        raise UserError(f"convert-checkpoint reads {args.file} with the full unpickler, which runs "
                        "any code the file holds; pass --trust only if you trust its source")
    target, converted = convert_trusted(args.file, args.out)
    print(f"{target}: converted; it now loads without running code" if converted
          else f"{target}: already in the safe format" + ("" if target == args.file else "; copied"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mplfast`` console script; returns the exit status."""
    parser = build_parser()
    raw = list(argv) if argv is not None else sys.argv[1:]
    args, unknown = parser.parse_known_args(raw)
    if unknown:
        parser.error(_unknown_args_message(parser, args.command, unknown))
    args.argv = raw  # the ablation table records the exact command
    if args.command is None:
        # no command is a usage error (as for `git`): the help goes to stderr, status 2, so a
        # script that lost its arguments fails instead of silently doing nothing
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    previous_formatwarning = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        if args.command == "models":
            return cmd_models(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "convert-checkpoint":
            return cmd_convert_checkpoint(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "predict":
            return cmd_predict(args)
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
    except Exception as e:
        # a full, read-only or unwritable destination (export, ablate, ...; a training run says
        # more itself) is no bug of mplfast: one line, not a traceback
        from mplfast.train.fileio import storage_error

        err = storage_error(e)
        if err is None:
            raise
        name = f" {err.filename}" if err.filename else ""
        print(f"mplfast: error: cannot write{name}: {err.strerror or err}", file=sys.stderr,
              flush=True)
        return EXIT_USAGE
    finally:
        warnings.formatwarning = previous_formatwarning


if __name__ == "__main__":
    sys.exit(main())
