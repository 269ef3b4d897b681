"""``rl-lib kaggle build | push | status | pull | run NAME``.

``build`` needs no credentials and no network beyond downloading the pinned dependency wheels
once (``--wheelhouse DIR`` takes them from a local folder instead). The other four authenticate
first (:func:`rl_lib.kaggle.remote.connect`): missing credentials are one line and exit code 2,
with nothing pushed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _build_options(args: argparse.Namespace) -> dict[str, Any]:
    from rl_lib.kaggle.code_dataset import wheelhouse_downloader

    options: dict[str, Any] = {"kernels_dir": args.kernels_dir}
    if args.owner:
        options["owner"] = args.owner
    if args.wheelhouse:
        options["downloader"] = wheelhouse_downloader(Path(args.wheelhouse))
    return options


def cmd_build(args: argparse.Namespace) -> int:
    from rl_lib.kaggle.kernel import build_kernel

    build_kernel(args.name, args.params, **_build_options(args))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from rl_lib.kaggle import remote

    remote.push(remote.connect(), args.name, args.params, **_build_options(args))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rl_lib.kaggle import remote
    from rl_lib.kaggle.kernel import read_record

    kernel_id = read_record(Path(args.kernels_dir) / args.name)["kernel"]
    state, _ = remote.wait(remote.connect(), kernel_id, args.timeout, args.interval)
    return {remote.COMPLETE: 0, remote.ERROR: 1}.get(state, 3)


def cmd_pull(args: argparse.Namespace) -> int:
    from rl_lib.kaggle import remote
    from rl_lib.kaggle.kernel import read_record

    folder = Path(args.kernels_dir) / args.name
    record = read_record(folder)
    target = remote.pull(remote.connect(), args.name, kernels_dir=args.kernels_dir, results_root=args.results)
    print(remote.progress(target, record).line())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rl_lib.kaggle import remote

    options = _build_options(args)
    return remote.run(remote.connect(), args.name, args.params, max_versions=args.max_versions,
                      interval_s=args.interval, results_root=args.results, **options)  # fmt: skip


def add_kaggle_commands(subparsers: Any) -> None:
    """Add ``kaggle`` and its sub-commands to the ``rl-lib`` parser."""
    from rl_lib.argtypes import positive_int

    kaggle = subparsers.add_parser("kaggle", help="Kaggle GPU kernels: build, push, status, pull, run")
    sub = kaggle.add_subparsers(dest="kaggle", required=True)

    def kernel_parser(name: str, help: str, params: str | None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("name", metavar="NAME", help="kernel name: kaggle_kernels/NAME, results/NAME")
        if params is not None:
            default = "" if params == "required" else " (default: the one of the last build)"
            p.add_argument("-f", "--params", required=params == "required",
                           help=f"parameter file, e.g. params/kaggle_train.yaml{default}")  # fmt: skip
        p.add_argument("--kernels-dir", default="kaggle_kernels", help="where kernel folders are built")
        return p

    def build_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--owner", help="Kaggle user name (default: kaggle.owner, else the credentials')")
        p.add_argument("--wheelhouse", help="folder holding the pinned dependency wheels (no download)")

    p = kernel_parser("build", "write kaggle_kernels/NAME and the code data set (no credentials needed)",
                      "required")  # fmt: skip
    build_flags(p)
    p.set_defaults(func=cmd_build)

    p = kernel_parser(
        "push", "build, upload the code data set if it changed, push a kernel version", "optional"
    )
    build_flags(p)
    p.set_defaults(func=cmd_push)

    p = kernel_parser("status", "queued / running / complete / error (polls up to --timeout)", None)
    p.add_argument(
        "--timeout", type=float, default=0.0, help="seconds to wait for complete or error (0: ask once)"
    )
    p.add_argument("--interval", type=positive_int, default=60, help="seconds between polls (default 60)")
    p.set_defaults(func=cmd_status)

    p = kernel_parser("pull", "the latest version's output into results/NAME", None)
    p.add_argument("--results", default="results", help="parent of the results folder (default results)")
    p.set_defaults(func=cmd_pull)

    p = kernel_parser("run", "push, wait, pull; again while runs are interrupted", "optional")
    build_flags(p)
    p.add_argument(
        "--max-versions", type=positive_int, help="at most this many versions (default kaggle.max_versions)"
    )
    p.add_argument(
        "--interval", type=positive_int, default=60, help="seconds between status polls (default 60)"
    )
    p.add_argument("--results", default="results", help="parent of the results folder (default results)")
    p.set_defaults(func=cmd_run)
