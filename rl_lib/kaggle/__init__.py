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
