"""Training on Kaggle GPU kernels: one long run spread over several kernel versions.

The pieces, one concept per module:

- :mod:`rl_lib.kaggle.session`: inside a kernel. Where ``/kaggle/input`` and ``/kaggle/working``
  are, the wall-time and disk budgets of a session, and bringing the newest verified checkpoint of
  each run from the previous version's output (mounted under the input) into the working dir.
- :mod:`rl_lib.kaggle.code_dataset`: rl_lib as a Kaggle data set (its wheel + pinned wheels of the
  packages Kaggle's image lacks), its content hash, and the notebook's offline install cell.
- :mod:`rl_lib.kaggle.kernel`: ``kaggle_kernels/NAME/`` (papermill-prepared notebook +
  ``kernel-metadata.json``), validated the way the kaggle CLI validates it.
- :mod:`rl_lib.kaggle.credentials`: where the kaggle CLI finds credentials, and the check that none
  ever lands in a folder that leaves the machine.
- :mod:`rl_lib.kaggle.remote`: the API boundary: upload the code data set, push, status, pull, run.
- :mod:`rl_lib.kaggle.cli`: the ``rl-lib kaggle`` sub-commands.

The ``kaggle`` package is imported only in :func:`rl_lib.kaggle.remote.connect`: it tries to
authenticate as soon as it is imported.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def swap_into_place(staging: Path, target: Path) -> None:
    """Replace the folder ``target`` by the complete folder ``staging`` (renames only).

    The previous ``target`` is parked as ``.NAME.old`` until the new one is in place; when an earlier
    swap was cut off between its two renames (no ``target``, a parked ``.NAME.old``), the parked one
    is put back first, so that it is never deleted before a replacement is in place.
    """
    old = target.with_name(f".{target.name}.old")
    if old.exists() and not target.exists():
        old.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
