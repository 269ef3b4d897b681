"""``rl-lib registry list | show | register | promote | rollback``: the model registry
(:mod:`rl_lib.feedback.registry`) from the command line; registered by :func:`add_registry_command`.

Every sub-command takes ``--registry DIR`` (default ``results/registry``). Bad input (an unknown or
corrupt version, a rollback with nothing to roll back to) is one line and exit code 2, with nothing
written.
"""

from __future__ import annotations

import argparse
import json

DEFAULT_REGISTRY = "results/registry"


def _registry(args: argparse.Namespace):
    from rl_lib.feedback.registry import ModelRegistry

    return ModelRegistry(args.registry)


def cmd_list(args: argparse.Namespace) -> int:
    rows = _registry(args).list()
    if not rows:
        print(f"{args.registry}: no version registered yet (rl-lib registry register RUN_DIR)")
        return 0
    for row in rows:
        state = "production" if row["production"] else "ok"
        if row["problem"] is not None:
            state = f"CORRUPT{' (production)' if row['production'] else ''}: {row['problem']}"
            print(f"{row['version']}  {state}")
            continue
        parent = row["parent"] or "-"
        print(f"{row['version']}  {state:<10}  {row['created']}  {row['model']}  parent {parent}  "
              f"from {row['source_run_dir']}")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(_registry(args).show(args.version), indent=2, default=str))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    version = _registry(args).register(args.run_dir, parent=args.parent)
    print(f"registered {version} from {args.run_dir}" + (f" (parent {args.parent})" if args.parent else ""))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    record = _registry(args).promote(args.version, args.reason)
    print(f"promoted {args.version} (was {record['from'] or 'none'})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    record = _registry(args).rollback(args.reason)
    print(f"rolled back to {record['version']} (was {record['from']})")
    return 0


def add_registry_command(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", default=DEFAULT_REGISTRY, metavar="DIR",
                        help=f"the registry folder (default {DEFAULT_REGISTRY})")  # fmt: skip
    p = sub.add_parser("registry", help="the model registry: versions, the production pointer, decisions")
    registry = p.add_subparsers(dest="registry_command", required=True)

    r = registry.add_parser("list", parents=[common], help="every version; which is in production")
    r.set_defaults(func=cmd_list)

    r = registry.add_parser("show", parents=[common], help="a version's lineage, metrics, files, decisions")
    r.add_argument("version")
    r.set_defaults(func=cmd_show)

    r = registry.add_parser("register", parents=[common], help="publish a DQN run dir's best model")
    r.add_argument("run_dir")
    r.add_argument("--parent", metavar="V", help="the version it was trained from")
    r.set_defaults(func=cmd_register)

    r = registry.add_parser("promote", parents=[common], help="make a version production")
    r.add_argument("version")
    r.add_argument("--reason", default="", metavar="TEXT", help="recorded with the decision")
    r.set_defaults(func=cmd_promote)

    r = registry.add_parser("rollback", parents=[common], help="put the previous production version back")
    r.add_argument("--reason", default="", metavar="TEXT", help="recorded with the decision")
    r.set_defaults(func=cmd_rollback)
