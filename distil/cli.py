"""The `distil` command: parses flags and calls one library function per subcommand.

    distil inspect FOLDER                 config, parameters per module and dtypes of a checkpoint
    distil export SRC DST                 write a model as a Hugging Face folder (dtype, tokenizer)
    distil extract TEACHER DST            initialise a DistilBERT student from teacher layers
    distil prepare SOURCE OUT             binarise a text corpus into token shards + token counts
    distil trim SRC DST --corpus CORPUS   keep only the vocabulary a corpus of the target languages uses
    distil demo                           the end-to-end demo on the embedded default data
    distil distill --workdir DIR          distil a student from a teacher (or MLM pre-training)
    distil xnli --workdir DIR             fine-tune on English NLI, evaluate zero-shot on the 15 XNLI languages
    distil report RUN_DIR... --out DIR    merge XNLI results of several runs into one table and plot

    distil sweep SWEEP.py --launcher L    run or launch every point of a sweep (local, print, tpu, slurm, xpk)
    distil bench NAME                     run experiments/bench_NAME.py of the checkout in the current directory

Exit codes: 0 done (also: a run that had finished earlier, left untouched); 2 bad input, named in one line (a
file, field or flag and what was expected; a workdir in use, of another config, or holding another's files); 3 a
training failure, in one line (the step, the loss term, the last good checkpoint); 130 Ctrl-C, in one line (what
was finished is kept: `prepare`, `distill`, `xnli` and `demo` resume, an export leaves DST as it was). Warnings
and notes from the library (logger `distil`) are printed as `distil COMMAND: warning: ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import subprocess
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


def _location(text: str) -> str:
    """A path argument with `~` and `$VAR` expanded (also in `--workdir=~/runs`, which no shell expands), or an
    object-store URL (gs://, s3://) distil can use."""
    from distil.config import ConfigError, expand_path

    try:
        return expand_path(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _path(text: str) -> str:
    """A local path argument (`_location`'s expansion; a URL refused with the commands that take one)."""
    from distil.storage import is_remote

    if is_remote(text):
        raise argparse.ArgumentTypeError(
            f"{text}: this argument takes a local path (a bucket mounted with gcsfuse is one); object-store URLs are "
            "read and written by distill, xnli and sweep (--workdir and their config paths), prepare and report")
    return _location(text)


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
    hf.check_tokenizer(checkpoint.config, tokenizer, model=f"{checkpoint.folder} ({hf.MODEL_CONFIG_FILE})",
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
    from distil import storage
    from distil.data.binarize import INDEX_FILE, prepare

    # On an object store: prepared in a local folder (resumed from what the bucket holds), uploaded, index last.
    with storage.staged(args.out_dir, last=(INDEX_FILE,)) as out_dir:
        summary = prepare(
            args.source if args.source == "wikipedia" else storage.local_copy(args.source, "source"),
            out_dir,
            tokenizer_path=args.tokenizer and storage.local_copy(args.tokenizer, "--tokenizer"),
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


# ------------------------------------------------------------------------------------------------------- trim


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def _print_trim_summary(summary) -> None:
    from distil.atomic import MANIFEST

    vocabulary = summary.vocabulary
    folder = summary.folder
    files = ", ".join(sorted(p.name for p in folder.iterdir() if p.name != MANIFEST))
    print(f"wrote {folder} ({summary.architecture}): {files}")
    reasons = vocabulary.kept_by_reason
    scripts = ", ".join(vocabulary.scripts) or "none"
    print(f"  vocabulary {vocabulary.source_vocab_size:,} -> {vocabulary.vocab_size:,} tokens: {reasons['special']} "
          f"special, {reasons['corpus']:,} used >= {vocabulary.min_count} time(s) by {summary.corpus}, "
          f"{reasons['single_chars']:,} more single characters (scripts {scripts}, and no-script characters), "
          f"{reasons['keep_vocab']:,} more from --keep-vocab")
    before, after = summary.parameters_before, summary.parameters_after
    print(f"  parameters {before:,} -> {after:,} ({100 * (after - before) / before:+.1f}%); model.safetensors "
          f"{_megabytes(summary.weight_bytes_before)} -> {_megabytes(summary.weight_bytes_after)}")
    rows = []
    for language, row in summary.languages.items():
        tokens = max(row["tokens"], 1)
        rows.append(f"{language} {100 * row['became_unk'] / tokens:.2f}%"
                    + (f" (+{100 * row['resegmented'] / tokens:.2f}% re-split)" if row["resegmented"] else ""))
    print("  corpus tokens that became [UNK]: " + ", ".join(rows))
    before_unk = {lang: row["unk_before"] / max(row["tokens"], 1) for lang, row in summary.languages.items()}
    if any(before_unk.values()):
        print("  (already [UNK] with the full vocabulary: "
              + ", ".join(f"{lang} {100 * share:.2f}%" for lang, share in before_unk.items()) + ")")
    print(f"  new id -> old id: {folder / 'kept_ids.json'}")


def cmd_trim(args) -> int:
    from distil.trim import trim_folder

    summary = trim_folder(
        args.source, args.destination, args.corpus,
        languages=args.languages.split(",") if args.languages else None,
        min_count=args.min_count, keep_vocab=args.keep_vocab, single_chars=not args.no_single_chars,
        data_dir=args.data_dir, allow_unused=args.allow_unused,
    )
    _print_trim_summary(summary)
    return 0


# ------------------------------------------------------------------------------------------------------- demo

DEFAULT_DEMO_CONFIG = "demo"  # configs/demo.py, found by name installed or not (distil.config)


def cmd_demo(args) -> int:
    from distil.config import load_config
    from distil.demo import run_demo

    config = load_config(args.config, args.overrides)
    summary = run_demo(config, args.workdir)
    workdir = Path(summary["workdir"])
    print(f"{workdir / 'report.md'} (+ loss_curves.png, xnli_results.{{json,md,png}}, demo.json); the student "
          f"is {workdir / 'student' / 'student'} (a Hugging Face folder); ran in {summary['total_seconds']:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------------- distill


def cmd_distill(args) -> int:
    from distil.config import load_config
    from distil.train.distill import train_and_evaluate

    config = load_config(args.config, args.overrides)
    if args.dry_run:
        return _dry_run(config)
    if args.distributed or args.coordinator:
        from distil import cluster

        # On a TPU slice, under SLURM or on GKE the processes are found from the platform's variables
        # (distil.cluster); --coordinator names the first host's address where nothing does.
        cluster.initialize(args.coordinator)
    if not args.workdir:
        raise ValueError("--workdir is required (where checkpoints, metrics.jsonl and student/ go)")
    train_and_evaluate(config, args.workdir)
    return 0


def _dry_run(config) -> int:
    """Compiles the step for the configured mesh on as many fake CPU devices, without data or weights."""
    import os

    from distil.train.distill import dry_run, dry_run_devices
    from distil.train.trainer import describe_analysis

    devices = dry_run_devices(config)
    # XLA reads these when its CPU client starts, which nothing has asked for yet in this process.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    result = dry_run(config)
    print(f"dry run: mesh {result['mesh']}, {result['micro_batches']} micro-batches of {result['rows_per_device']} "
          f"rows per device x {result['max_length']} tokens; teacher {result['teacher_parameters']:,} and student "
          f"{result['student_parameters']:,} parameters")
    print(describe_analysis(result))
    return 0


# ------------------------------------------------------------------------------------------------------ sweep


def cmd_sweep(args) -> int:
    from distil import launch, storage

    sweep = launch.load_sweep(args.sweep, args.sweep_config, args.xnli, args.overrides)
    root = args.workdir or f"runs/{Path(args.sweep).stem}"
    if args.launcher == "local":
        record = launch.run_local(sweep, storage.location(root))
        failed = [name for name, entry in record.items() if entry["status"] != "finished"]
        print(f"{len(sweep.points) - len(failed)} of {len(sweep.points)} point(s) finished in {root}"
              + (f"; failed: {', '.join(failed)} (see {root}/{launch.SWEEP_RECORD})" if failed else "")
              + f"; table: distil report {root} --out {root}/report")
        return 1 if failed else 0
    if args.launcher == "print":
        print(launch.print_points(sweep, root))
        return 0
    # The hosts would resolve a relative path elsewhere (home, submit dir, container).
    if not storage.is_remote(root) and not Path(root).is_absolute():
        raise ValueError(f"--workdir {root}: the {args.launcher} launcher needs a bucket URL (gs://BUCKET/PATH) or an "
                         "absolute path that every host sees (a shared file system or a mounted bucket)")
    if args.launcher == "tpu":
        print(launch.tpu_commands(sweep, root, tpu=args.tpu, zone=args.zone))
    elif args.launcher == "xpk":
        print(launch.xpk_commands(sweep, root, cluster=args.cluster, device_type=args.device_type,
                                  num_slices=args.num_slices, num_nodes=args.num_nodes, docker_image=args.docker_image,
                                  storage=args.storage or ()))
    else:
        from distil.atomic import make_output_folder, write_text_atomically

        out = Path(args.out or root)
        scripts = launch.slurm_scripts(sweep, root, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                                       partition=args.partition, logs=str(out.absolute() / "logs"), venv=args.venv,
                                       container=args.container)
        make_output_folder(out / "logs", "log folder")  # sbatch opens --output there when the job starts
        for name, script in scripts.items():
            write_text_atomically(out / name, script)
            print(f"sbatch {out / name}")
    return 0


# ------------------------------------------------------------------------------------------------ xnli / report


def cmd_xnli(args) -> int:
    from distil import storage
    from distil.config import load_config
    from distil.train.run import RESULTS_FILE
    from distil.train.xnli import train_and_evaluate

    config = load_config(args.config, args.overrides)
    if args.distributed or args.coordinator:
        from distil import cluster

        cluster.initialize(args.coordinator)
    results = train_and_evaluate(config, args.workdir)
    import jax

    if "stopped_at" not in results and jax.process_index() == 0:  # process 0 wrote it
        print((storage.location(args.workdir) / RESULTS_FILE.replace(".json", ".md")).read_text(encoding="utf-8"))
    return 0


def cmd_report(args) -> int:
    from distil.sweep_report import write_report

    paths = write_report(args.runs, args.out)
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(path) for path in dict.fromkeys(paths.values())))
    return 0


def cmd_bench(args) -> int:
    """Runs `experiments/bench_NAME.py ARGS` of the checkout in the current directory, in a fresh Python process.
    Benchmarks are not installed with the wheel (they compare against transformers and write results next to the
    code), and the installed package never reaches into a checkout: run `distil bench` from a checkout's root."""
    experiments = Path.cwd() / "experiments"
    if not experiments.is_dir():
        raise ValueError(f"{Path.cwd()}: no experiments/ here; `distil bench` runs a distil checkout's benchmarks "
                         "from the checkout's root (they are not installed with the package)")
    known = sorted(path.stem[len("bench_"):] for path in experiments.glob("bench_*.py"))
    script = experiments / f"bench_{args.name}.py"
    if not script.is_file():
        raise ValueError(f"no benchmark {args.name!r} in {experiments}; known: {', '.join(known) or 'none'}")
    return subprocess.run([sys.executable, str(script), *args.args]).returncode


# ------------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distil", description="Distil multilingual BERT with JAX/Flax.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    allow_unused = dict(action="store_true",
                        help="drop stored tensors the model does not have instead of refusing the checkpoint")

    inspect = commands.add_parser("inspect", help="print a checkpoint's config, parameters per module, dtypes")
    inspect.add_argument("folder", type=_path, help="a Hugging Face folder (config.json + model.safetensors)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument("--allow-unused", **allow_unused)
    inspect.set_defaults(run=cmd_inspect, interrupted="")

    export = commands.add_parser("export", help="write a model as a Hugging Face folder")
    export.add_argument("source", type=_path, help="a Hugging Face folder")
    export.add_argument("destination", type=_path,
                        help="folder to write: new, empty, or written by distil (replaced as a whole)")
    export.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="convert the parameters")
    export.add_argument("--tokenizer", type=_path, help="vocab.txt / tokenizer.json / folder to save beside the model")
    export.add_argument("--allow-unused", **allow_unused)
    export.set_defaults(run=cmd_export, interrupted="; the destination is unchanged")

    extract = commands.add_parser("extract", help="initialise a DistilBERT student from BERT teacher layers")
    extract.add_argument("teacher", type=_path, help="a Hugging Face BERT folder")
    extract.add_argument("destination", type=_path,
                         help="folder to write the student to (new, empty, or written by distil)")
    extract.add_argument("--layers", type=_layer_list, default=[0, 2, 4, 7, 9, 11],
                         help="teacher layers, comma-separated (default 0,2,4,7,9,11)")
    extract.add_argument("--no-mlm-transform", action="store_true",
                         help="keep the student's MLM transform random instead of copying the teacher's")
    extract.add_argument("--tokenizer", type=_path,
                         help="vocab.txt / tokenizer.json / folder to save beside the student")
    extract.add_argument("--allow-unused", **allow_unused)
    extract.set_defaults(run=cmd_extract, interrupted="; the destination is unchanged")

    prepare = commands.add_parser("prepare", help="binarise a text corpus into token shards and token counts")
    prepare.add_argument("source", type=_location, help="a <lang>.txt file, a folder of them, or 'wikipedia' (tfds)")
    prepare.add_argument("out_dir", type=_location, help="output folder (a rerun resumes)")
    prepare.add_argument("--tokenizer", type=_location,
                         help="vocab.txt / tokenizer.json / folder (default: the mBERT vocab)")
    prepare.add_argument("--languages", help="comma-separated languages to keep")
    prepare.add_argument("--data-dir", type=_path, help="tensorflow-datasets data_dir (source 'wikipedia')")
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

    trim = commands.add_parser("trim", help="keep only the vocabulary a corpus of the target languages uses")
    trim.add_argument("source", type=_path, help="a Hugging Face folder with its tokenizer (teacher or student)")
    trim.add_argument("destination", type=_path,
                      help="folder to write (new, empty, or written by distil; replaced as a whole)")
    trim.add_argument("--corpus", type=_path, required=True,
                      help="a folder of <lang>.txt files, 'wikipedia' (tfds, with --data-dir), or a folder written "
                           "by distil prepare with the model's tokenizer")
    trim.add_argument("--languages", help="comma-separated languages of the corpus to keep (default: all)")
    trim.add_argument("--min-count", type=_int_at_least(1), default=1,
                      help="keep tokens used at least this often (default 1)")
    trim.add_argument("--keep-vocab", type=_path, help="a file of tokens to keep as well, one per line")
    trim.add_argument("--no-single-chars", action="store_true",
                      help="do not keep the single-character pieces of the corpus' scripts")
    trim.add_argument("--data-dir", type=_path, help="tensorflow-datasets data_dir (corpus 'wikipedia')")
    trim.add_argument("--allow-unused", **allow_unused)
    trim.set_defaults(run=cmd_trim, interrupted="; the destination is unchanged")

    demo = commands.add_parser("demo", help="run the demo on the embedded default data",
                               epilog="Any --config.KEY=VALUE overrides a field of the config.")
    demo.add_argument("--config", default=DEFAULT_DEMO_CONFIG,
                      help="config file[:arg], or a shipped config's name[:arg] (default: %(default)s)")
    demo.add_argument("--workdir", type=_path, default="runs/demo", help="where the demo writes its outputs")
    demo.set_defaults(run=cmd_demo, takes_config=True,
                      interrupted="; rerun the same command to resume (the binarised corpus is kept)")
    distill = commands.add_parser("distill", help="distil a student from a teacher (or MLM pre-training)",
                                  epilog="Any --config.KEY=VALUE overrides a field of the config. Rerunning on a "
                                         "workdir with a checkpoint resumes it.")
    distill.add_argument("--config", default="distilmbert",
                         help="config file[:variant], or a shipped config's name[:variant] (default: %(default)s; "
                              "e.g. distilmbert:runlocal)")
    distill.add_argument("--workdir", type=_location,
                         help="checkpoints, metrics.jsonl, student/ go here (required unless --dry_run)")
    distill.add_argument("--distributed", action="store_true",
                         help="one process per host: jax.distributed.initialize() before anything else")
    distill.add_argument("--coordinator", help="HOST:PORT of process 0, where the cluster does not say it")
    distill.add_argument("--dry_run", action="store_true",
                         help="compile the step for the configured mesh (fake CPU devices) and print its per-device "
                              "memory and FLOPs; reads no data and no weights")
    distill.set_defaults(run=cmd_distill, takes_config=True,
                         interrupted="; rerun the same command to resume from the last checkpoint")
    sweep = commands.add_parser("sweep", help="run or launch every point of a sweep file",
                                epilog="Any --config.KEY=VALUE applies to every point (e.g. the teacher checkpoint "
                                       "or the data dir on the cluster); every point is resolved and checked before "
                                       "anything runs or is printed.")
    sweep.add_argument("sweep", type=_path,
                       help="a sweep file (CONFIG = 'name[:variant]', get_sweep() -> override dicts)")
    sweep.add_argument("--launcher", choices=("local", "print", "tpu", "slurm", "xpk"), default="print")
    sweep.add_argument("--config", dest="sweep_config",
                       help="start every point from this config[:variant] instead of the sweep file's CONFIG "
                            "(e.g. distilmbert:runlocal here, distilmbert:tpu=v4-32 on a pod)")
    sweep.add_argument("--xnli", help="fine-tune each point's student with this XNLI config[:variant] instead of the "
                                      "sweep file's XNLI (e.g. distilmbert_xnli:runlocal)")
    sweep.add_argument("--workdir", type=_location, help="root of the points' workdirs (default runs/<sweep name>)")
    sweep.add_argument("--tpu", default="my-tpu", help="TPU VM name (tpu)")
    sweep.add_argument("--zone", default="us-central2-b", help="its zone (tpu)")
    sweep.add_argument("--nodes", type=int, default=2, help="nodes per run (slurm)")
    sweep.add_argument("--gpus-per-node", type=int, default=8, help="(slurm)")
    sweep.add_argument("--partition", help="(slurm)")
    sweep.add_argument("--out", type=_path, help="where the sbatch scripts and their logs/ go (slurm; default the "
                                                 "workdir root)")
    sweep.add_argument("--venv", help="a virtual environment with distil installed on the nodes (slurm)")
    sweep.add_argument("--container", help="an image with distil installed, run with pyxis (slurm)")
    sweep.add_argument("--cluster", default="my-cluster", help="GKE cluster (xpk)")
    sweep.add_argument("--device-type", default="v4-32", help="TPU type (v4-32) or GPU type (h100-80gb-8) (xpk)")
    sweep.add_argument("--num-slices", type=int, default=1, help="TPU slices per run (xpk, TPU types)")
    sweep.add_argument("--num-nodes", type=int, default=1, help="GPU nodes per run (xpk, GPU types)")
    sweep.add_argument("--docker-image", help="an image with distil installed: the repository's Dockerfile (xpk)")
    sweep.add_argument("--storage", action="append",
                       help="an `xpk storage attach` volume to mount (a gcsfuse bucket holding the workdirs); "
                            "repeatable (xpk)")
    sweep.set_defaults(run=cmd_sweep, takes_config=True,
                       interrupted="; rerun the same command: finished points are skipped, an interrupted "
                                   "one resumes")
    xnli = commands.add_parser("xnli", help="fine-tune on English NLI, evaluate zero-shot on the 15 XNLI languages",
                               epilog="Any --config.KEY=VALUE overrides a field of the config (e.g. "
                                      "--config.init=DIR). Rerunning on a workdir resumes an interrupted seed and "
                                      "reuses finished ones.")
    xnli.add_argument("--config", default="distilmbert_xnli",
                      help="config file[:variant], or a shipped config's name[:variant] (default: %(default)s; "
                           "e.g. mbert_xnli, distilmbert_xnli:runlocal)")
    xnli.add_argument("--workdir", type=_location, required=True,
                      help="xnli_results.{json,md,png} and one folder per seed go here")
    xnli.add_argument("--distributed", action="store_true",
                      help="one process per host: jax.distributed.initialize() before anything else")
    xnli.add_argument("--coordinator", help="HOST:PORT of process 0, where the cluster does not say it")
    xnli.set_defaults(run=cmd_xnli, takes_config=True,
                      interrupted="; rerun the same command to resume (finished seeds are kept)")
    report = commands.add_parser("report", help="gather runs (a sweep's points) into one table with plots",
                                 epilog="Reads result files only: config.json, metrics.jsonl, summary.json of "
                                        "distil distill, xnli_results.json of distil xnli.")
    report.add_argument("runs", type=_location, nargs="+", metavar="RUN_DIR",
                        help="a sweep root (distil sweep --workdir), a distil distill workdir, or a distil xnli "
                             "workdir (or its xnli_results.json)")
    report.add_argument("--out", type=_location, required=True,
                        help="folder for sweep_report.{json,md}, loss_curves.png and xnli_report.{json,md,png}")
    report.set_defaults(run=cmd_report, interrupted="")

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
    from distil.train.run import EXIT_BAD_INPUT, EXIT_TRAINING_FAILED, TrainingError

    command, interrupted = "", ""
    try:
        overrides, rest = split_overrides(sys.argv[1:] if argv is None else list(argv))
        try:
            args = build_parser().parse_args(_join_negative_lists(rest))
        except SystemExit as exit:  # --help, or a usage error already printed
            return exit.code if isinstance(exit.code, int) else 2
        command, interrupted = args.command, args.interrupted
        if overrides and not getattr(args, "takes_config", False):
            raise ValueError(f"{overrides[0]}: distil {command} takes no config; only distil demo, distill, "
                             "xnli and sweep read --config.KEY=VALUE overrides")
        args.overrides = overrides
        with _console_log(command):
            return args.run(args)
    except KeyboardInterrupt:
        print(f"{f'distil {command}' if command else 'distil'}: interrupted{interrupted}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # our errors name the file/field/flag; no traceback needed
        print(f"distil {command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingError as err:
        print(f"distil {command}: training failed: {_one_line(err)}", file=sys.stderr)
        return EXIT_TRAINING_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
