"""The `distil` command: parses flags and calls one library function per subcommand.

    distil inspect FOLDER                 config, parameters per module and dtypes of a checkpoint
    distil export SRC DST                 write a model as a Hugging Face folder (dtype, tokenizer)
    distil extract TEACHER DST            initialise a DistilBERT student from teacher layers
    distil prepare SOURCE OUT             binarise a text corpus into token shards + token counts
    distil demo                           the end-to-end demo on the embedded default data

Every command reports bad input as one line naming the file, field or flag and what was expected, and exits 2;
Ctrl-C exits 130 with one line (what was finished is kept: `prepare` and `demo` resume, an export leaves DST as it
was). Warnings and notes from the library (logger `distil`) are printed as `distil COMMAND: warning: ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Sequence

_log = logging.getLogger("distil.cli")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `distil prepare: error: argument --seed: ... (see distil prepare --help)`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _finite_at_least_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _layer_list(text: str) -> list[int]:
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        layers = []
    if not layers:
        raise argparse.ArgumentTypeError(f"expected comma-separated teacher layer numbers (e.g. 0,2,4), got {text!r}")
    return layers


def _join_negative_lists(argv: list[str]) -> list[str]:
    """`--layers -1,2` -> `--layers=-1,2`: argparse takes a lone `-1` as a number but `-1,2` as an unknown option."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and re.fullmatch(r"-\d[\d,\s-]*", arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


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
    if report["stored_architecture"] != report["architecture"]:
        print(f"stored as {report['stored_architecture']}; distil reads it as {report['architecture']}")
    for name, reason in report["dropped_tensors"].items():
        print(f"  not read: {name} ({reason})")
    for name in report["unused_tensors"]:
        print(f"  not read: {name} (unused, accepted with --allow-unused)")


def cmd_inspect(args) -> int:
    from distil.hf import describe_pretrained

    report = describe_pretrained(args.folder, allow_unused=args.allow_unused)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_inspection(report)
    return 0


# ---------------------------------------------------------------------------------------- export / extract


def _read_source(folder: str, destination: str, allow_unused: bool):
    """The checkpoint an export or extract reads, validated, and never the folder it writes, checked before any
    long work."""
    from distil import hf
    from distil.atomic import check_replaceable_folder, refuse_overlap

    refuse_overlap(folder, destination)
    checkpoint = hf.read_checkpoint(folder, allow_unused=allow_unused)
    check_replaceable_folder(destination, "model folder")
    return checkpoint


def _tokenizer_for(checkpoint, tokenizer_path: str | None):
    from distil import hf
    from distil.tokenization import load_tokenizer

    if not tokenizer_path:
        return None
    tokenizer = load_tokenizer(tokenizer_path)
    hf.check_tokenizer(checkpoint.config, tokenizer, model=f"{checkpoint.folder} ({hf.CONFIG_FILE})",
                       tokenizer_name=f"--tokenizer {tokenizer_path}")
    return tokenizer


def _report_written(folder: Path, checkpoint, config) -> None:
    """What the new folder holds, and what the conversion changed or left out of the source."""
    from distil import hf
    from distil.atomic import MANIFEST

    files = ", ".join(sorted(p.name for p in folder.iterdir() if p.name != MANIFEST))
    print(f"wrote {folder} ({hf.architecture_name(config)}, {config.param_dtype}): {files}")
    source_dtype, architecture = checkpoint.config.param_dtype, checkpoint.architecture
    if (architecture, source_dtype) != (hf.architecture_name(config), config.param_dtype):
        print(f"  converted from {checkpoint.folder} ({architecture}, {source_dtype})")
    dropped = {**checkpoint.dropped, **{name: "unused, --allow-unused" for name in checkpoint.unused}}
    if dropped:
        reasons = "; ".join(sorted(set(dropped.values())))
        _log.warning("left out %d tensor(s) of %s: %s (%s)", len(dropped), checkpoint.folder,
                     ", ".join(dropped), reasons)


def cmd_export(args) -> int:
    from distil import hf

    checkpoint = _read_source(args.source, args.destination, args.allow_unused)
    tokenizer = _tokenizer_for(checkpoint, args.tokenizer)
    model = hf.load_pretrained(args.source, param_dtype=args.dtype, dtype=args.dtype, allow_unused=args.allow_unused)
    folder = hf.save_pretrained(model, args.destination, tokenizer=tokenizer)
    _report_written(folder, checkpoint, model.config)
    return 0


def _check_layer_map(layers: list[int], num_teacher_layers: int, teacher: str) -> None:
    bad = [layer for layer in layers if not 0 <= layer < num_teacher_layers]
    if bad:
        raise ValueError(f"--layers: teacher layer(s) {bad} out of range; {teacher} has {num_teacher_layers} layers "
                         f"(0..{num_teacher_layers - 1})")
    if len(set(layers)) < len(layers):
        _log.warning("--layers %s repeats teacher layer(s) %s: the student gets copies of the same layer",
                     ",".join(map(str, layers)), sorted({layer for layer in layers if layers.count(layer) > 1}))
    elif layers != sorted(layers):
        _log.warning("--layers %s is not increasing: student layer j takes teacher layer layers[j], in this order",
                     ",".join(map(str, layers)))


def cmd_extract(args) -> int:
    from distil import hf
    from distil.models.extract import init_student_from_teacher

    checkpoint = _read_source(args.teacher, args.destination, args.allow_unused)
    if checkpoint.config.family != "bert":
        raise ValueError(f"{args.teacher}: holds a {checkpoint.architecture}; distil extract needs a BERT teacher "
                         "(BertForMaskedLM, BertForPreTraining or BertModel)")
    _check_layer_map(args.layers, checkpoint.config.num_hidden_layers, args.teacher)
    tokenizer = _tokenizer_for(checkpoint, args.tokenizer)
    teacher = hf.load_pretrained(args.teacher, allow_unused=args.allow_unused)
    student = init_student_from_teacher(
        teacher, teacher_layers=args.layers, copy_mlm_transform=not args.no_mlm_transform
    )
    folder = hf.save_pretrained(student, args.destination, tokenizer=tokenizer)
    _report_written(folder, checkpoint, student.config)
    print(f"  {len(args.layers)}-layer student from teacher layers {','.join(map(str, args.layers))}")
    return 0


# ---------------------------------------------------------------------------------------------------- prepare


def _print_prepare_summary(summary) -> None:
    from distil.data.binarize import MIN_KEPT_LENGTH

    print(f"wrote {summary.out_dir}: {summary.sequences:,} sequences, {summary.tokens:,} tokens in {summary.shards} "
          f"shard(s), from {summary.lines:,} lines in {len(summary.languages)} language(s)")
    print("  sequences per language: " + ", ".join(f"{lang} {count:,}" for lang, count in summary.languages.items()))
    print(f"  left out {summary.dropped_short:,} too short (< {MIN_KEPT_LENGTH} tokens) and {summary.dropped_unk:,} "
          f"mostly [UNK]; split {summary.lines_split:,} long line(s)")
    reused = f"reused {summary.skipped_shards} shard(s) of an earlier run" if summary.skipped_shards else ""
    if summary.encoded_lines:
        print(f"  tokenised {summary.encoded_lines:,} lines in {summary.seconds:.1f}s "
              f"({summary.tokens_per_second:,.0f} tokens/s){'; ' + reused if reused else ''}")
    else:
        print(f"  {reused}, nothing left to tokenise ({summary.seconds:.1f}s)")


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
        shard_size=args.shard_size,
        progress=sys.stderr.isatty(),
    )
    _print_prepare_summary(summary)
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


def _experiments_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "experiments"


def cmd_bench(args) -> int:
    """Runs `experiments/bench_NAME.py` of this checkout with the remaining arguments (they are not installed
    with the wheel: benchmarks compare against transformers and write results next to the code)."""
    import runpy

    experiments = _experiments_dir()
    known = sorted(path.stem[len("bench_"):] for path in experiments.glob("bench_*.py"))
    script = experiments / f"bench_{args.name}.py"
    if not script.is_file():
        raise ValueError(f"no benchmark {args.name!r} in {experiments}" + (f"; known: {', '.join(known)}" if known
                         else " (benchmarks run from a distil checkout; experiments/ is not installed)"))
    argv, path = sys.argv, list(sys.path)
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(experiments))
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    return 0


# ------------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distil", description="Distil multilingual BERT with JAX/Flax.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    allow_unused = dict(action="store_true",
                        help="drop stored tensors the model does not have instead of refusing the checkpoint")

    inspect = commands.add_parser("inspect", help="print a checkpoint's config, parameters per module, dtypes")
    inspect.add_argument("folder", help="a Hugging Face folder (config.json + model.safetensors)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument("--allow-unused", **allow_unused)
    inspect.set_defaults(run=cmd_inspect, interrupted="")

    export = commands.add_parser("export", help="write a model as a Hugging Face folder")
    export.add_argument("source", help="a Hugging Face folder")
    export.add_argument("destination", help="folder to write: new, empty, or written by distil (replaced as a whole)")
    export.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="convert the parameters")
    export.add_argument("--tokenizer", help="vocab.txt / tokenizer.json / folder to save beside the model")
    export.add_argument("--allow-unused", **allow_unused)
    export.set_defaults(run=cmd_export, interrupted="; the destination is unchanged")

    extract = commands.add_parser("extract", help="initialise a DistilBERT student from BERT teacher layers")
    extract.add_argument("teacher", help="a Hugging Face BERT folder")
    extract.add_argument("destination", help="folder to write the student to (new, empty, or written by distil)")
    extract.add_argument("--layers", type=_layer_list, default=[0, 2, 4, 7, 9, 11],
                         help="teacher layers, comma-separated (default 0,2,4,7,9,11)")
    extract.add_argument("--no-mlm-transform", action="store_true",
                         help="keep the student's MLM transform random instead of copying the teacher's")
    extract.add_argument("--tokenizer", help="vocab.txt / tokenizer.json / folder to save beside the student")
    extract.add_argument("--allow-unused", **allow_unused)
    extract.set_defaults(run=cmd_extract, interrupted="; the destination is unchanged")

    prepare = commands.add_parser("prepare", help="binarise a text corpus into token shards and token counts")
    prepare.add_argument("source", help="a <lang>.txt file, a folder of them, or 'wikipedia' (tfds)")
    prepare.add_argument("out_dir", help="output folder (a rerun resumes)")
    prepare.add_argument("--tokenizer", help="vocab.txt / tokenizer.json / folder (default: the mBERT vocab)")
    prepare.add_argument("--languages", help="comma-separated languages to keep")
    prepare.add_argument("--data-dir", help="tensorflow-datasets data_dir (source 'wikipedia')")
    prepare.add_argument("--sampling-alpha", type=_finite_at_least_zero,
                         help="mix languages with p ∝ lines^alpha (mBERT: 0.7)")
    prepare.add_argument("--num-lines", type=_int_at_least(1), help="lines to draw / read")
    prepare.add_argument("--seed", type=_int_at_least(0), default=0)
    prepare.add_argument("--max-length", type=_int_at_least(12), default=512,  # 12: binarize.MIN_KEPT_LENGTH
                         help="longer sequences are split (default 512)")
    prepare.add_argument("--num-workers", type=_int_at_least(0), default=2)
    prepare.add_argument("--shard-size", type=_int_at_least(1), default=100_000,
                         help="input lines per shard, the unit a rerun resumes from (default 100000)")
    prepare.set_defaults(run=cmd_prepare, interrupted="; finished shards are kept, rerun the same command to resume")

    demo = commands.add_parser("demo", help="run the demo on the embedded default data",
                               epilog="Any --config.KEY=VALUE overrides a field of the config.")
    demo.add_argument("--config", default=DEFAULT_DEMO_CONFIG,
                      help="config file[:arg], or a shipped config's name[:arg] (default: %(default)s)")
    demo.add_argument("--workdir", default="runs/demo", help="where the demo writes its outputs")
    demo.set_defaults(run=cmd_demo, takes_config=True,
                      interrupted="; rerun the same command to resume (the binarised corpus is kept)")
    distill = commands.add_parser("distill", help="distil a student from a teacher (or MLM pre-training)",
                                  epilog="Any --config.KEY=VALUE overrides a field of the config. Rerunning on a "
                                         "workdir with a checkpoint resumes it.")
    distill.add_argument("--config", default="distilmbert",
                         help="config file[:variant], or a shipped config's name[:variant] (default: %(default)s; "
                              "e.g. distilmbert:runlocal)")
    distill.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, student/ go here")
    distill.set_defaults(run=cmd_distill, takes_config=True,
                         interrupted="; rerun the same command to resume from the last checkpoint")

    bench = commands.add_parser("bench", help="run a benchmark of experiments/ (a checkout's bench_NAME.py)",
                                epilog="e.g. distil bench step --sizes full --out step.json; "
                                       "distil bench step --help for its options")
    bench.add_argument("name", help="step, inference, input_vs_step, scaling, ... (experiments/bench_NAME.py)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(run=cmd_bench, interrupted="")
    return parser


class _CommandFormatter(logging.Formatter):
    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"distil {self.command}: {level}{record.getMessage()}"


@contextlib.contextmanager
def _console_log(command: str):
    """The library's warnings and notes (logger `distil`) on stderr, one line each, while a command runs."""
    logger = logging.getLogger("distil")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_CommandFormatter(command))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split("\n"))


def main(argv: Sequence[str] | None = None) -> int:
    from distil.config import split_overrides

    command, interrupted = "", ""
    try:
        overrides, rest = split_overrides(sys.argv[1:] if argv is None else list(argv))
        try:
            args = build_parser().parse_args(_join_negative_lists(rest))
        except SystemExit as exit:  # --help, or a usage error already printed
            return exit.code if isinstance(exit.code, int) else 2
        command, interrupted = args.command, args.interrupted
        if overrides and not getattr(args, "takes_config", False):
            raise ValueError(f"{overrides[0]}: distil {command} takes no config; only distil demo reads "
                             "--config.KEY=VALUE overrides")
        args.overrides = overrides
        with _console_log(command):
            return args.run(args)
    except KeyboardInterrupt:
        print(f"{f'distil {command}' if command else 'distil'}: interrupted{interrupted}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # our errors name the file/field/flag; no traceback needed
        print(f"distil {command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
