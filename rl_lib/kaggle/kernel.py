"""``rl-lib kaggle build NAME -f PARAMS``: the kernel folder ``kaggle_kernels/NAME/``.

::

    kaggle_kernels/_rl_lib_code/     the code data set (rl_lib.kaggle.code_dataset), shared by kernels
    kaggle_kernels/NAME/
        NAME.ipynb                   notebooks/01_train.ipynb prepared by papermill (parameters
                                     injected, not executed; kernelspec python3), the offline
                                     install cell first
        kernel-metadata.json         what `kaggle kernels push` reads
        rl_lib_kernel.json           local record: kernel id, parameter file, results_dir, the runs
                                     and their targets, code_hash and dataset (the code data set),
                                     max_versions and version_timeout_h (for ``rl-lib kaggle run``)

The parameter file holds the notebook's parameters (configs, seeds, results_dir, overrides, workers,
max_wall_time, device, disk_budget; keys the notebook does not take are reported and ignored) and an
optional ``kaggle:`` mapping (:class:`KernelSettings`). Each config file is loaded, validated with the
overrides, and inlined into the notebook as a mapping, so that the kernel needs no checkout.

``kernel-metadata.json``: id ``OWNER/SLUG`` with SLUG the slug of the title (as Kaggle derives it),
a private python notebook on a GPU (``NvidiaTeslaT4``: P100s no longer run current PyTorch wheels),
``enable_internet`` explicit (false by default: the install is offline), the code data set among
``dataset_sources``, and the kernel itself among ``kernel_sources``, so that each version finds the
previous version's output under its input. :func:`validate_kernel_folder` repeats the checks of
``kaggle kernels push`` (and refuses a title whose slug is not the id, where the CLI only warns)
before anything leaves the machine.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rl_lib.errors import UserError
from rl_lib.io import FILE_MODE, atomic_write_json, atomic_write_text
from rl_lib.kaggle.code_dataset import DEFAULT_DATASET_SLUG
from rl_lib.kaggle.names import check_owner, check_slug

KERNEL_METADATA = "kernel-metadata.json"
RECORD = "rl_lib_kernel.json"
CODE_DATASET_DIR = "_rl_lib_code"
NOTEBOOK = Path("notebooks") / "01_train.ipynb"
INSTALL_TAG = "rl-lib-install"
LANGUAGES, KERNEL_TYPES, PINNING_TYPES = (
    ("python", "r", "rmarkdown"),
    ("script", "notebook"),
    ("original", "latest"),
)


@dataclass(frozen=True)
class KernelSettings:
    """The ``kaggle:`` mapping of a parameter file.

    :param title: kernel title (default ``rl_lib NAME``); its slug is the kernel's id.
    :param owner: Kaggle user name (default: ``--owner``, else the credentials' user name).
    :param dataset: slug of the code data set (``OWNER/rl-lib-code``).
    :param enable_internet: the kernel's internet access (off: the install is offline).
    :param machine_shape: the accelerator (``NvidiaTeslaT4``).
    :param max_versions: versions ``rl-lib kaggle run`` pushes at most.
    :param version_timeout_h: hours ``run`` waits for one version (queue + the 12 h session).
    """

    title: str | None = None
    owner: str | None = None
    dataset: str = DEFAULT_DATASET_SLUG
    enable_internet: bool = False
    machine_shape: str = "NvidiaTeslaT4"
    max_versions: int = 8
    version_timeout_h: float = 14.0


def slugify(title: str) -> str:
    """The slug Kaggle derives from a title: python-slugify's defaults, which the kaggle CLI uses
    (installed with it); without it, the same for titles whose letters decompose to ASCII."""
    try:
        from slugify import slugify as python_slugify
    except ImportError:
        pass
    else:
        return python_slugify(title)
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", name or ""):
        raise UserError(f"kernel name {name!r}: use 1 to 40 lowercase letters, digits and hyphens")


def load_params(path: str | Path) -> tuple[dict[str, Any], KernelSettings]:
    """The notebook parameters and the kernel settings of a parameter file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError:
        raise UserError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of parameter names to values")
    raw = data.pop("kaggle", None) or {}
    fields = {f.name for f in dataclasses.fields(KernelSettings)}
    if not isinstance(raw, dict) or set(raw) - fields:
        unknown = sorted(set(raw) - fields) if isinstance(raw, dict) else raw
        raise UserError(f"{path}: kaggle: unknown key(s) {unknown}; known: {sorted(fields)}")
    settings = KernelSettings(**raw)
    checks = {
        "enable_internet": isinstance(settings.enable_internet, bool),
        "max_versions": isinstance(settings.max_versions, int) and settings.max_versions >= 1,
        "version_timeout_h": isinstance(settings.version_timeout_h, (int, float))
        and settings.version_timeout_h > 0,
        "machine_shape": isinstance(settings.machine_shape, str) and settings.machine_shape != "",
    }  # fmt: skip
    for key, ok in checks.items():
        if not ok:
            raise UserError(f"{path}: kaggle.{key}: bad value {getattr(settings, key)!r}")
    return data, settings


def notebook_parameters(notebook: Path) -> list[str]:
    """Names assigned in the notebook's ``parameters`` cell, in order."""
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    source = "".join(cell["source"])
    return [m.group(1) for m in re.finditer(r"^([A-Za-z_]\w*)\s*=", source, re.MULTILINE)]


def kernel_parameters(
    params: dict[str, Any], notebook: Path, log: Callable[[str], None]
) -> tuple[dict, list]:
    """Check the training parameters as the notebook would, before the kernel runs them.

    :return: the parameters to inject (configs inlined as mappings) and the runs
        ``[{"run", "name", "seed", "target"}]``.
    """
    from rl_lib.config import to_dict
    from rl_lib.experiment import load_experiment
    from rl_lib.pipeline import check_train_parameters, load_configs
    from rl_lib.training.run_record import run_dir_name

    names = notebook_parameters(notebook)
    unused = sorted(set(params) - set(names))
    if unused:
        log(f"not parameters of {notebook.name} (ignored): {', '.join(unused)}")
    params = {k: v for k, v in params.items() if k in names}
    for required in ("configs", "seeds", "results_dir"):
        if required not in params:
            raise UserError(f"parameter {required}: missing from the parameter file")
    configs, seeds, results_dir = params["configs"], params["seeds"], params["results_dir"]
    check_train_parameters(seeds, results_dir, params.get("workers"), params.get("max_wall_time"),
                           params.get("disk_budget"))  # fmt: skip
    if not isinstance(results_dir, str) or not results_dir or Path(results_dir).is_absolute() or (
        ".." in Path(results_dir).parts
    ):  # fmt: skip
        raise UserError(f"parameter results_dir: expected a relative folder (it lands under "
                        f"/kaggle/working), got {results_dir!r}")  # fmt: skip
    if params.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise UserError(f"parameter device: expected auto, cpu or cuda, got {params['device']!r}")
    experiments = load_configs(configs, params.get("overrides"))
    params["configs"] = [to_dict(load_experiment(c)) if isinstance(c, str) else c for c in configs]
    runs = [
        {"run": run_dir_name(e.training.name, s), "name": e.training.name, "seed": s,
         "target": e.training.total_timesteps}
        for e in experiments
        for s in seeds
    ]  # fmt: skip
    return params, runs


def kernel_metadata(
    owner: str, title: str, code_file: str, dataset_ref: str, settings: KernelSettings
) -> dict:
    """``kernel-metadata.json`` of a kernel; see the module docstring."""
    kernel_id = f"{owner}/{slugify(title)}"
    return {
        "id": kernel_id,
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": settings.enable_internet,
        "machine_shape": settings.machine_shape,
        "dataset_sources": [dataset_ref],
        "competition_sources": [],
        "kernel_sources": [kernel_id],
        "model_sources": [],
    }


def _check_source(source: Any, kind: str, min_slug: int) -> None:
    """``owner/slug`` (or ``owner/slug/version``), as the kaggle CLI's validate_*_string."""
    parts = source.split("/") if isinstance(source, str) else []
    if len(parts) not in (2, 3) or not parts[0] or not parts[1] or (len(parts) == 3 and not parts[2]):
        raise UserError(f"{kind} source {source!r}: expected 'owner/slug'")
    if len(parts[1]) < min_slug:
        raise UserError(f"{kind} source {source!r}: the slug must be at least {min_slug} characters")


def validate_kernel_folder(folder: Path) -> dict:
    """The checks of ``kaggle kernels push`` on a kernel folder; returns its metadata.

    Title at least 5 characters, a code file that exists, an id ``owner/slug`` without version whose
    slug is the title's, a known language and kernel type, well-formed data set and kernel sources;
    and a notebook that parses. Any failure is a :class:`UserError` naming the field.
    """
    path = Path(folder) / KERNEL_METADATA
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise UserError(f"{path}: missing; run `rl-lib kaggle build` first") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    title = meta.get("title")
    if not isinstance(title, str) or len(title) < 5:
        raise UserError(f"{path}: title {title!r} must be at least five characters")
    code_file = meta.get("code_file")
    if not code_file or not (Path(folder) / code_file).is_file():
        raise UserError(f"{path}: code_file {code_file!r} not found in {folder}")
    kernel_id = meta.get("id")
    _check_source(kernel_id, "kernel id", 5)
    owner, slug, *version = kernel_id.split("/")
    if version:
        raise UserError(f"{path}: id {kernel_id!r} cannot contain a version")
    check_owner(owner)
    check_slug(slug, "kernel slug")
    if slug != slugify(title):
        raise UserError(f"{path}: the title {title!r} resolves to the slug {slugify(title)!r}, not {slug!r}; "
                        "make the title match the id")  # fmt: skip
    if meta.get("language") not in LANGUAGES:
        raise UserError(f"{path}: language must be one of {LANGUAGES}, got {meta.get('language')!r}")
    if meta.get("kernel_type") not in KERNEL_TYPES:
        raise UserError(f"{path}: kernel_type must be one of {KERNEL_TYPES}, got {meta.get('kernel_type')!r}")
    pinning = meta.get("docker_image_pinning_type")
    if pinning is not None and pinning not in PINNING_TYPES:
        raise UserError(f"{path}: docker_image_pinning_type must be one of {PINNING_TYPES}")
    for key, kind, min_slug in (("dataset_sources", "dataset", 1), ("kernel_sources", "kernel", 5)):
        sources = meta.get(key, [])
        if not isinstance(sources, list):
            raise UserError(f"{path}: {key} must be a list")
        for source in sources:
            _check_source(source, kind, min_slug)
    for key in ("is_private", "enable_gpu", "enable_internet"):
        if not isinstance(meta.get(key), bool):
            raise UserError(f"{path}: {key} must be set explicitly to true or false")
    if meta["kernel_type"] == "notebook":
        try:
            cells = json.loads((Path(folder) / code_file).read_text(encoding="utf-8"))["cells"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{Path(folder) / code_file}: not a notebook") from None
        if not isinstance(cells, list) or not cells:
            raise UserError(f"{Path(folder) / code_file}: the notebook has no cells")
    return meta


def prepare_notebook(notebook: Path, target: Path, parameters: dict, install_source: str) -> None:
    """Papermill ``--prepare-only`` (parameters injected, not executed), then the install cell first."""
    import nbformat
    import papermill

    papermill.execute_notebook(str(notebook), str(target), parameters=parameters, prepare_only=True,
                               progress_bar=False, log_output=False)  # fmt: skip
    nb = nbformat.read(str(target), as_version=4)
    cell = nbformat.v4.new_code_cell(install_source, metadata={"tags": [INSTALL_TAG]})
    cell["id"] = INSTALL_TAG
    nb.cells.insert(0, cell)
    papermill_meta = nb.metadata.get("papermill", {})
    papermill_meta.update(input_path=NOTEBOOK.as_posix(), output_path=target.name)  # no local paths
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        raise UserError(f"{notebook}: the kernelspec must be python3 (Kaggle runs python3 notebooks)")
    atomic_write_text(target, nbformat.writes(nb))


@dataclass(frozen=True)
class BuiltKernel:
    folder: Path
    kernel_id: str
    dataset: Any  # rl_lib.kaggle.code_dataset.CodeDataset
    record: dict


def read_record(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / RECORD).read_text())
    except OSError:
        raise UserError(f"{folder}: not a built kernel folder; run `rl-lib kaggle build {Path(folder).name} "
                        "-f PARAMS` first") from None  # fmt: skip


def build_kernel(
    name: str,
    params_file: str | Path,
    *,
    owner: str | None = None,
    kernels_dir: str | Path = "kaggle_kernels",
    downloader: Callable[[list[str], Path], None] | None = None,
    log: Callable[[str], None] = print,
) -> BuiltKernel:
    """Build (or rebuild) ``kernels_dir/NAME`` and the code data set; see the module docstring.

    The owner is ``owner``, else ``kaggle.owner`` of the parameter file, else the user name of the
    legacy credentials (read locally, never over the network). Nothing is written when a check fails;
    the kernel folder is assembled aside and renamed into place.
    """
    from rl_lib.kaggle import code_dataset, swap_into_place
    from rl_lib.kaggle.credentials import configured_username, scan_for_secrets

    check_name(name)
    params, settings = load_params(params_file)
    owner = owner or settings.owner or configured_username()
    check_owner(owner)
    title = settings.title or f"rl_lib {name}"
    if len(title) < 5:
        raise UserError(f"kaggle.title {title!r} must be at least five characters")
    slug = slugify(title)
    check_slug(slug, f"the slug of the title {title!r}")
    if len(slug) < 5:
        raise UserError(
            f"kaggle.title {title!r} resolves to the slug {slug!r}; Kaggle wants at least 5 characters"
        )
    repo_root = code_dataset.source_package_dir().parent
    notebook = repo_root / NOTEBOOK
    parameters, runs = kernel_parameters(params, notebook, log)
    kernels_dir = Path(kernels_dir)
    dataset = code_dataset.build_code_dataset(
        kernels_dir / CODE_DATASET_DIR,
        owner,
        settings.dataset,
        repo_root=repo_root,
        downloader=downloader or code_dataset.pip_download,
    )
    log(f"code data set {dataset.ref}: {'rebuilt' if dataset.rebuilt else 'unchanged'} "
        f"(code hash {dataset.code_hash[:12]}) in {dataset.folder}")  # fmt: skip
    folder = kernels_dir / name
    kernels_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=kernels_dir))
    staging.chmod(FILE_MODE | 0o111)  # mkdtemp gives 0700; a folder as mkdir would make it
    try:
        code_file = f"{name}.ipynb"
        install = code_dataset.install_cell_source(dataset.package_hash, dataset.code_hash)
        prepare_notebook(notebook, staging / code_file, parameters, install)
        metadata = kernel_metadata(owner, title, code_file, dataset.ref, settings)
        atomic_write_json(staging / KERNEL_METADATA, metadata)
        record = {
            "name": name,
            "kernel": metadata["id"],
            "params_file": str(params_file),
            "results_dir": parameters["results_dir"],
            "runs": runs,
            "code_hash": dataset.code_hash,
            "dataset": dataset.ref,
            "max_versions": settings.max_versions,
            "version_timeout_h": settings.version_timeout_h,
        }
        atomic_write_json(staging / RECORD, record)
        validate_kernel_folder(staging)
        scan_for_secrets(staging)
        swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"built {folder}: kernel {metadata['id']}, {len(runs)} run(s) into {parameters['results_dir']}")
    return BuiltKernel(folder, metadata["id"], dataset, record)
