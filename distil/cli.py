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
from collections import Counter
from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

DEMO_NOTE = "The demo runs what exists today; it grows into distil -> XNLI as the trainers land."


def _layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--layers must be comma-separated integers, got {text!r}") from err


# --------------------------------------------------------------------------------------------------- inspect


def inspect_checkpoint(folder: Path) -> dict:
    """What `distil inspect` prints, as data: config, parameter counts per module, stored dtypes."""
    from safetensors import safe_open

    from distil import hf
    from distil.models import parameter_count, parameter_counts_by_module

    config_path = folder / hf.CONFIG_FILE
    config = hf.config_from_hf(hf._read_json(config_path), config_path)
    stored_dtypes: Counter = Counter()
    stored_tensors = 0
    for file in hf._weight_files(folder):
        with safe_open(str(file), framework="np") as reader:
            for name in reader.keys():
                tensor = reader.get_slice(name)
                shape = tensor.get_shape()
                size = 1
                for dim in shape:
                    size *= dim
                stored_dtypes[tensor.get_dtype()] += size
                stored_tensors += 1
    return {
        "folder": str(folder),
        "architecture": hf.ARCHITECTURES[(config.family, config.head)],
        "config": {k: v for k, v in vars(config).items()},
        "parameters": parameter_count(config),
        "parameters_by_module": parameter_counts_by_module(config),
        "stored_tensors": stored_tensors,
        "stored_values_by_dtype": dict(stored_dtypes),
    }


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
    report = inspect_checkpoint(Path(args.folder))
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
    from distil.models.init import init_student_from_teacher
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


def run_demo(workdir: Path, *, hidden_size: int = 64, layers: int = 4, student_layers: Sequence[int] = (0, 3)) -> dict:
    """Builds a small mBERT-vocabulary teacher, extracts a student, exports both, and checks the exported student
    against distil's own logits on the embedded multilingual sentences. Returns the summary it writes."""
    import numpy as np

    from distil import hf
    from distil.data.embedded import EMBEDDED_LANGUAGES, embedded_corpus_file
    from distil.models import ModelConfig, create_model, parameter_count
    from distil.models.init import init_student_from_teacher
    from distil.tokenization import default_vocab_path, load_tokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(default_vocab_path())
    teacher_config = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=128,
        head="mlm",
        add_pooler=False,
    )
    teacher = create_model(teacher_config, seed=0)
    hf.save_pretrained(teacher, workdir / "teacher", tokenizer=tokenizer)
    student = init_student_from_teacher(teacher, teacher_layers=student_layers)
    hf.save_pretrained(student, workdir / "student", tokenizer=tokenizer)
    reloaded = hf.load_pretrained(workdir / "student")

    rows = []
    mask_id = tokenizer.token_to_id("[MASK]")
    for language in EMBEDDED_LANGUAGES:
        with open(embedded_corpus_file(language), encoding="utf-8") as lines:
            sentence = next(line.strip() for line in lines if line.strip())
        ids = tokenizer.encode(sentence).ids[:64]
        position = len(ids) // 2
        ids[position] = mask_id
        input_ids = jnp.asarray([ids], jnp.int32)
        student_logits = np.asarray(student(input_ids).logits[0, position])
        reloaded_logits = np.asarray(reloaded(input_ids).logits[0, position])
        teacher_top = int(np.argmax(np.asarray(teacher(input_ids).logits[0, position])))
        rows.append({
            "language": language,
            "tokens": len(ids),
            "teacher_top1": tokenizer.id_to_token(teacher_top),
            "student_top1": tokenizer.id_to_token(int(np.argmax(student_logits))),
            "export_max_abs_diff": float(np.max(np.abs(student_logits - reloaded_logits))),
        })
    summary = {
        "note": DEMO_NOTE,
        "teacher": {"folder": str(workdir / "teacher"), "parameters": parameter_count(teacher_config)},
        "student": {"folder": str(workdir / "student"), "parameters": parameter_count(student.config),
                    "teacher_layers": list(student_layers)},
        "sentences": rows,
    }
    (workdir / "demo.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def cmd_demo(args) -> int:
    summary = run_demo(Path(args.workdir))
    print(DEMO_NOTE)
    print(f"teacher: {summary['teacher']['parameters']:,} parameters -> {summary['teacher']['folder']}")
    print(f"student: {summary['student']['parameters']:,} parameters (teacher layers "
          f"{summary['student']['teacher_layers']}) -> {summary['student']['folder']}")
    print(f"{'lang':<5} {'tokens':>6}  {'teacher top-1':<16} {'student top-1':<16} {'export diff':>11}")
    for row in summary["sentences"]:
        print(f"{row['language']:<5} {row['tokens']:>6}  {row['teacher_top1']:<16} {row['student_top1']:<16} "
              f"{row['export_max_abs_diff']:>11.2e}")
    print(f"summary: {Path(args.workdir) / 'demo.json'}")
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

    demo = commands.add_parser("demo", help="run the demo on the embedded default data")
    demo.add_argument("--workdir", default="runs/demo", help="where the demo writes its outputs")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:  # our errors name the file/field; no traceback needed
        print(f"distil {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
