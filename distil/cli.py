"""The `distil` command: parses flags and calls one library function per subcommand.

    distil inspect FOLDER                 config, parameters per module and dtypes of a checkpoint
    distil export SRC DST                 write a model as a Hugging Face folder (dtype, tokenizer)
    distil extract TEACHER DST            initialise a DistilBERT student from teacher layers
    distil prepare SOURCE OUT             binarise a text corpus into token shards + token counts
    distil demo                           the end-to-end demo on the embedded default data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

def _layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--layers must be comma-separated integers, got {text!r}") from err


# --------------------------------------------------------------------------------------------------- inspect


def _print_inspection(report: dict) -> None:
    print(f"{report['folder']}: {report['architecture']}")
    print("config:")
    for key, value in report["config"].items():
        print(f"  {key:<26} {value}")
    total = report["parameters"]
    print(f"parameters: {total:,}")
    width = max(len(name) for name in report["parameters_by_module"])
    for name, count in report["parameters_by_module"].items():
        print(f"  {name:<{width}}  {count:>13,}  {100 * count / total:5.1f}%")
    dtypes = ", ".join(f"{dtype}: {count:,} values" for dtype, count in report["stored_values_by_dtype"].items())
    print(f"stored: {report['stored_tensors']} tensors ({dtypes})")


def cmd_inspect(args) -> int:
    from distil.hf import describe_pretrained

    report = describe_pretrained(args.folder)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_inspection(report)
    return 0


# ---------------------------------------------------------------------------------------- export / extract


def cmd_export(args) -> int:
    from distil import hf
    from distil.tokenization import load_tokenizer

    model = hf.load_pretrained(args.source, param_dtype=args.dtype, dtype=args.dtype)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    folder = hf.save_pretrained(model, args.destination, tokenizer=tokenizer)
    print(f"wrote {folder} ({hf.ARCHITECTURES[(model.config.family, model.config.head)]}, {model.config.param_dtype})")
    return 0


def cmd_extract(args) -> int:
    from distil import hf
    from distil.models.extract import init_student_from_teacher
    from distil.tokenization import load_tokenizer

    teacher = hf.load_pretrained(args.teacher)
    if teacher.config.family != "bert":
        raise SystemExit(f"distil extract: {args.teacher} holds a {teacher.config.family} model; expected BERT")
    student = init_student_from_teacher(
        teacher, teacher_layers=args.layers, copy_mlm_transform=not args.no_mlm_transform
    )
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    folder = hf.save_pretrained(student, args.destination, tokenizer=tokenizer)
    print(f"wrote {folder}: {len(args.layers)}-layer student from teacher layers {args.layers}")
    return 0


# ---------------------------------------------------------------------------------------------------- prepare


def cmd_prepare(args) -> int:
    from distil.data.binarize import prepare

    summary = prepare(
        args.source,
        args.out_dir,
        tokenizer_path=args.tokenizer,
        languages=args.languages.split(",") if args.languages else None,
        data_dir=args.data_dir,
        sampling_alpha=args.sampling_alpha,
        num_lines=args.num_lines,
        seed=args.seed,
        max_length=args.max_length,
        num_workers=args.num_workers,
    )
    print(summary)
    return 0


# ------------------------------------------------------------------------------------------------------- demo

DEFAULT_DEMO_CONFIG = "demo"  # distil/configs/demo.py, found by name installed or not (distil.config)


def cmd_demo(args) -> int:
    from distil.config import load_config
    from distil.demo import run_demo

    config = load_config(args.config, args.overrides)
    summary = run_demo(config, args.workdir)
    print((Path(args.workdir) / "demo.md").read_text(encoding="utf-8"))
    print(f"wrote {Path(args.workdir) / 'demo.json'}, {Path(args.workdir) / 'demo.md'}, "
          f"{summary['workdir']}/{{teacher,student}}/ (Hugging Face folders)")
    return 0


# ---------------------------------------------------------------------------------------------------- distill


def cmd_distill(args) -> int:
    from distil.config import load_config
    from distil.train.distill import train_and_evaluate

    config = load_config(args.config, args.overrides)
    train_and_evaluate(config, args.workdir)
    return 0


# ------------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distil", description="Distil multilingual BERT with JAX/Flax.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="print a checkpoint's config, parameters per module, dtypes")
    inspect.add_argument("folder", help="a Hugging Face folder (config.json + model.safetensors)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(run=cmd_inspect)

    export = commands.add_parser("export", help="write a model as a Hugging Face folder")
    export.add_argument("source", help="a Hugging Face folder")
    export.add_argument("destination", help="folder to write (existing files are replaced only on success)")
    export.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="convert the parameters")
    export.add_argument("--tokenizer", help="vocab.txt / tokenizer.json / folder to save beside the model")
    export.set_defaults(run=cmd_export)

    extract = commands.add_parser("extract", help="initialise a DistilBERT student from BERT teacher layers")
    extract.add_argument("teacher", help="a Hugging Face BERT folder")
    extract.add_argument("destination", help="folder to write the student to")
    extract.add_argument("--layers", type=_layer_list, default=[0, 2, 4, 7, 9, 11],
                         help="teacher layers, comma-separated (default 0,2,4,7,9,11)")
    extract.add_argument("--no-mlm-transform", action="store_true",
                         help="keep the student's MLM transform random instead of copying the teacher's")
    extract.add_argument("--tokenizer", help="vocab.txt / tokenizer.json / folder to save beside the student")
    extract.set_defaults(run=cmd_extract)

    prepare = commands.add_parser("prepare", help="binarise a text corpus into token shards and token counts")
    prepare.add_argument("source", help="a <lang>.txt file, a folder of them, or 'wikipedia' (tfds)")
    prepare.add_argument("out_dir", help="output folder (a rerun resumes)")
    prepare.add_argument("--tokenizer", help="vocab.txt / tokenizer.json / folder (default: the mBERT vocab)")
    prepare.add_argument("--languages", help="comma-separated languages to keep")
    prepare.add_argument("--data-dir", help="tensorflow-datasets data_dir (source 'wikipedia')")
    prepare.add_argument("--sampling-alpha", type=float, help="mix languages with p ∝ lines^alpha (mBERT: 0.7)")
    prepare.add_argument("--num-lines", type=int, help="lines to draw / read")
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--max-length", type=int, default=512)
    prepare.add_argument("--num-workers", type=int, default=2)
    prepare.set_defaults(run=cmd_prepare)

    demo = commands.add_parser("demo", help="run the demo on the embedded default data",
                               epilog="Any --config.KEY=VALUE overrides a field of the config.")
    demo.add_argument("--config", default=DEFAULT_DEMO_CONFIG,
                      help="config file[:arg], or a shipped config's name[:arg] (default: %(default)s)")
    demo.add_argument("--workdir", default="runs/demo", help="where the demo writes its outputs")
    demo.set_defaults(run=cmd_demo)
    distill = commands.add_parser("distill", help="distil a student from a teacher (or MLM pre-training)",
                                  epilog="Any --config.KEY=VALUE overrides a field of the config. Rerunning on a "
                                         "workdir with a checkpoint resumes it.")
    distill.add_argument("--config", default="distilmbert",
                         help="config file[:variant], or a shipped config's name[:variant] (default: %(default)s; "
                              "e.g. distilmbert:runlocal)")
    distill.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, student/ go here")
    distill.set_defaults(run=cmd_distill)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from distil.config import split_overrides

    overrides, rest = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(rest)
    args.overrides = overrides
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:  # our errors name the file/field; no traceback needed
        print(f"distil {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
