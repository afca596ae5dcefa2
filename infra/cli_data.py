"""The data commands: ``eto import-eto`` (ETO's published trajectories into validated Parquet)
and ``eto data`` (a benchmark's official data files)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``import-eto`` and ``data`` subcommands, in that order (as ``eto --help`` lists them)."""
    imp = sub.add_parser("import-eto", help="convert ETO's published trajectory JSON into validated Parquet")
    imp.add_argument("file", help="ETO JSON/JSONL file ({id, conversations: [{from, value}]})")
    imp.add_argument("--env", required=True, help="environment name to record on each trajectory")
    imp.add_argument("--out", required=True, help="output .parquet or .jsonl path")
    imp.add_argument("--prompt-messages", type=int, default=3,
                     help="leading messages forming the prompt (instruction, OK, [example turns], task); default 3")
    data = sub.add_parser(
        "data",
        help="download a benchmark's official data files",
        description="Download a benchmark's official data files into a folder (atomic: a file appears only "
        "once complete and parsed). Without internet access it prints where the files go and their links.",
    )
    data.add_argument("benchmark", choices=["webshop"], help="which benchmark's data")
    data.add_argument("--dest", default="data/webshop", help="target folder (default: %(default)s)")
    data.add_argument("--size", choices=["small", "all"], default="small",
                      help="small: the 1,000-product catalogue; all: the full 1.18M products (default: %(default)s)")


def run_import(args: argparse.Namespace) -> int:
    """``eto import-eto``: its exit code (2: the file is not valid ETO trajectories)."""
    from eto_core.eto_format import import_eto_file
    from eto_core.records import RecordError, to_frame, write_records

    try:
        trajs = import_eto_file(args.file, env=args.env, num_prompt_messages=args.prompt_messages)
        write_records(to_frame(trajs, "trajectories"), args.out, "trajectories")
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(trajs)} trajectories to {args.out}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    """``eto data``: its exit code (2: a download failed)."""
    from environments.webshop.download import DownloadError, download

    try:
        paths = download(Path(args.dest), args.size)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    print(f"WebShop data ready: set env.kwargs.data_dir: {args.dest}")
    return 0
