"""Does starting from a pretrained backbone help MPL? A transfer experiment on the digits, offline.

For each seed:

1. pretrain: the small CNN trained supervised on every training image of the digits 0-4
   (``method=supervised``), exported with ``mplfast.train.export.export_run`` and written again
   without its classifier head (the digits 5-9 are new classes; the file keeps the export's
   header, so the run reads the normalization the backbone was trained with);
2. scratch: MPL (the digits recipe ``mplfast train`` runs) on the digits 5-9 with
   ``--labels-per-class`` labels each, from a random initialisation;
3. pretrained: the same run, same seed (same labeled split, batches, augmentation, head
   initialisation), with teacher and student starting from the backbone (``pretrained=FILE``,
   backbone lr x0.1 by default).

Both runs use the training driver ``mplfast train`` calls (``mplfast.train.runner.run``), fed the
5-class subsets as data sets. The script prints and writes (``--out``/results.json, results.md)
the test accuracy of each, mean ± std over the seeds and the paired difference with its 95 %
t-interval. Run it with one torch thread (the default of the digits recipe)::

    nice -n 10 python examples/pretrained_digits.py --seeds 5 --out /tmp/pretrained-digits
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import torch

OLD, NEW = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def subset(ds: Any, classes: tuple[int, ...], name: str) -> Any:
    """The images of ``classes`` relabeled 0..len-1, normalized with their own statistics."""
    from mplfast.data.datasets import ImageDataset, _stats

    def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.isin(y, torch.tensor(classes))
        remap = torch.full((10,), -1, dtype=torch.int64)
        remap[list(classes)] = torch.arange(len(classes))
        return x[keep].contiguous(), remap[y[keep]]

    xt, yt = pick(ds.train_images, ds.train_labels)
    xe, ye = pick(ds.test_images, ds.test_labels)
    mean, std = _stats(xt)
    return ImageDataset(name, xt, yt, xe, ye, len(classes), mean, std, hflip=False,
                        class_names=tuple(str(c) for c in classes))


def config(out: str, seed: int, **changes: Any) -> Any:
    """The digits recipe (``--preset digits``) with ``changes``; nothing shown, no plots."""
    from mplfast.train.config import apply_overrides, resolve

    cfg = resolve(preset="digits")
    return apply_overrides(cfg, {"seed": seed, "out": out, "progress": "none",
                                 "tensorboard": False, "plot": False, **changes})


def pretrain(ds_old: Any, seed: int, out: str, steps: int) -> str:
    """Supervised on every training image of the old classes; the exported EMA weights
    without their head, as ``out``/backbone.safetensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mplfast.train.export import export_run
    from mplfast.train.runner import run

    per_class = int(torch.bincount(ds_old.train_labels).min())
    cfg = config(os.path.join(out, "run"), seed, method="supervised", steps=steps,
                 labels=per_class * ds_old.num_classes, batch_size=64)
    run(cfg, dataset=ds_old)
    export = os.path.join(out, "export.safetensors")
    export_run(cfg.out, export)
    with safe_open(export, framework="pt") as f:
        header = f.metadata()
    sd = {k: v for k, v in load_file(export).items() if not k.startswith("fc.")}
    path = os.path.join(out, "backbone.safetensors")
    save_file(sd, path, metadata=header)
    return path


def main(argv: list[str] | None = None) -> int:
    from mplfast.data.datasets import load_digits
    from mplfast.train.runner import run
    from mplfast.train.stats import mean_std, paired

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default="runs/pretrained-digits")
    p.add_argument("--labels-per-class", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000, help="MPL steps (the digits recipe's)")
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--backbone-lr-scale", type=float, default=None,
                   help="default: mplfast's (0.1 with pretrained weights)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    digits = load_digits()
    ds_old, ds_new = subset(digits, OLD, "digits0-4"), subset(digits, NEW, "digits5-9")
    labels = args.labels_per_class * len(NEW)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for seed in range(args.seeds):
        d = os.path.join(args.out, f"seed{seed}")
        backbone = pretrain(ds_old, seed, os.path.join(d, "pretrain"), args.pretrain_steps)
        common = dict(labels=labels, steps=args.steps)
        scratch = run(config(os.path.join(d, "scratch"), seed, **common), dataset=ds_new).summary
        extra = ({} if args.backbone_lr_scale is None
                 else {"backbone_lr_scale": args.backbone_lr_scale})
        pre = run(config(os.path.join(d, "pretrained"), seed, pretrained=backbone, **common,
                         **extra), dataset=ds_new).summary
        rows.append({"seed": seed, "scratch": scratch["test_acc"], "pretrained": pre["test_acc"],
                     "scratch_teacher": scratch["teacher_acc"],
                     "pretrained_teacher": pre["teacher_acc"], "backbone": backbone,
                     "backbone_sha256": pre["pretrained"]["sha256"]})
        print(f"seed {seed}: scratch {scratch['test_acc']:.2f}  pretrained {pre['test_acc']:.2f}"
              f"  ({time.time() - t0:.0f} s)", flush=True)

    s, q = [r["scratch"] for r in rows], [r["pretrained"] for r in rows]
    st, qt = [r["scratch_teacher"] for r in rows], [r["pretrained_teacher"] for r in rows]
    diff, diff_t = paired(q, s), paired(qt, st)
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name'"], capture_output=True,
                         text=True).stdout.split(":", 1)[-1].strip()
    record = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu,
        "torch": torch.__version__, "python": platform.python_version(), "threads": 1,
        "labels": labels, "steps": args.steps, "pretrain_steps": args.pretrain_steps,
        "rows": rows,
        "scratch": mean_std(s), "pretrained": mean_std(q), "paired": diff.to_dict(),
        "scratch_teacher": mean_std(st), "pretrained_teacher": mean_std(qt),
        "paired_teacher": diff_t.to_dict(), "wall_s": time.time() - t0,
    }
    table = "\n".join([
        f"MPL on the digits 5-9, {labels} labels ({args.labels_per_class} per class), "
        f"{args.steps} steps, {len(rows)} seeds; backbone: the small CNN trained supervised "
        f"on the digits 0-4 ({args.pretrain_steps} steps)",
        "",
        "| start | EMA student test acc. | teacher test acc. |",
        "|---|---|---|",
        f"| from scratch | {mean_std(s)[0]:.2f} ± {mean_std(s)[1]:.2f} | "
        f"{mean_std(st)[0]:.2f} ± {mean_std(st)[1]:.2f} |",
        f"| pretrained backbone | {mean_std(q)[0]:.2f} ± {mean_std(q)[1]:.2f} | "
        f"{mean_std(qt)[0]:.2f} ± {mean_std(qt)[1]:.2f} |",
        f"| paired difference (95 % t-interval; wins/ties/losses) | {diff.ci_text()} "
        f"({diff.wins}/{diff.ties}/{diff.losses}) | {diff_t.ci_text()} "
        f"({diff_t.wins}/{diff_t.ties}/{diff_t.losses}) |",
    ])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    print(f"{record['date']}, {cpu}, torch {torch.__version__}, 1 thread per run; "
          f"{record['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
