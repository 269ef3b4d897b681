"""rl_lib as a Kaggle data set, and the kernel notebook's offline install cell.

A kernel runs Kaggle's own image (Python, CUDA torch, numpy, pandas, scipy, matplotlib, papermill,
...). What that image lacks, or holds at other versions than the thesis stack, travels in one
private data set, ``OWNER/rl-lib-code`` by default::

    dataset-metadata.json        title, id, license (what the kaggle CLI needs)
    rl_lib_code.json             marker: code hash, package hash, wheel files, pinned packages
    rl_lib-0.1.0-py3-none-any.whl                    built from this checkout
    stable_baselines3-2.9.2-py3-none-any.whl, ...    :data:`KAGGLE_PACKAGES`, pinned

:data:`KAGGLE_PACKAGES` are the pure-Python packages rl_lib needs beyond Kaggle's image:
stable-baselines3 and sb3-contrib (absent from the image), gymnasium (absent, or older than the
1.x API the env uses) and its dependency farama-notifications, and optuna (the image's is older than
the pinned one the tuner uses). Each is pinned to the version of the local environment, which is the
``pyproject.toml`` pin; each must be a platform-independent wheel (``none-any``), so that it installs on
whatever Python version the image has. Kaggle's torch, numpy, pandas, ... are used as they are:
the install cell passes ``--no-deps``, so pip never touches them.

The *code hash* covers the rl_lib sources (every ``.py`` file of the package) and the pins; the
local folder is rebuilt only when it changed, and ``rl-lib kaggle push`` uploads a new data set
version only when it differs from the last upload.

The install cell (:func:`install_cell_source`) is the first cell of every kernel notebook. When an
``rl_lib`` whose sources hash to the built package hash is already importable, it installs nothing
(this is what happens when the kernel notebook is emulated locally in the test suite, whose
environment must not change); otherwise it finds the data set under the input by its marker and
``pip install --no-index --no-deps --force-reinstall`` its wheels: offline, and leaving torch alone.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rl_lib.errors import UserError
from rl_lib.io import FILE_MODE, atomic_write_json

#: Packages the kernel installs from the code data set (pinned to the local environment's versions).
KAGGLE_PACKAGES = ("stable-baselines3", "sb3-contrib", "gymnasium", "farama-notifications", "optuna")
MARKER = "rl_lib_code.json"
DATASET_METADATA = "dataset-metadata.json"
DEFAULT_DATASET_SLUG = "rl-lib-code"
DEFAULT_DATASET_TITLE = "rl_lib code and wheels"

#: ``(requirements, dest)``: put one wheel per ``name==version`` requirement into ``dest``.
Downloader = Callable[[list[str], Path], None]
#: ``(source tree, dest)``: build the rl_lib wheel of ``source tree`` into ``dest``.
WheelBuilder = Callable[[Path, Path], None]


def package_hash(package_dir: str | Path) -> str:
    """sha256 over the relative path and bytes of every ``.py`` file under ``package_dir``.

    Self-contained (standard library only, imports inside): the install cell embeds this very source,
    so that it can check an installed rl_lib without importing it.
    """
    import hashlib
    from pathlib import Path

    root = Path(package_dir)
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")):
        digest.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return digest.hexdigest()


def source_package_dir() -> Path:
    """The ``rl_lib`` package folder this process imports."""
    import rl_lib

    return Path(rl_lib.__file__).resolve().parent


def pinned_packages() -> dict[str, str]:
    """:data:`KAGGLE_PACKAGES` -> version installed here (the ``pyproject.toml`` pins)."""
    pins = {}
    for name in KAGGLE_PACKAGES:
        try:
            pins[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"{name} is not installed here, so its Kaggle pin is unknown; "
                            "run `make` set-up (pip install -e '.[dev]') first") from None  # fmt: skip
    return pins


def code_hash(package: str, pins: dict[str, str]) -> str:
    """The data set's content hash: the package hash and the pinned packages."""
    from rl_lib.io import sha256_bytes

    return sha256_bytes(json.dumps({"package": package, "pins": pins}, sort_keys=True).encode())


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_name_version(filename: str) -> tuple[str, str, str]:
    """``(normalised name, version, platform tags)`` of a wheel file name (PEP 427)."""
    parts = filename[: -len(".whl")].split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6):
        raise UserError(f"{filename}: not a wheel file name (name-version-python-abi-platform.whl)")
    return normalise(parts[0]), parts[1], "-".join(parts[-2:])


def pip_download(requirements: list[str], dest: Path) -> None:
    """The default :data:`Downloader`: ``pip download`` of platform-independent wheels (network)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest",
               str(dest), *requirements]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"pip download {' '.join(requirements)} failed ({tail}); check the network, or "
                        "pass --wheelhouse DIR holding those wheels")  # fmt: skip


def wheelhouse_downloader(wheelhouse: Path) -> Downloader:
    """A :data:`Downloader` that copies the wheels from a local folder (offline builds, tests)."""

    def copy(requirements: list[str], dest: Path) -> None:
        available = {}
        for path in Path(wheelhouse).glob("*.whl"):
            name, version, _ = wheel_name_version(path.name)
            available[(name, version)] = path
        for requirement in requirements:
            name, version = requirement.split("==")
            path = available.get((normalise(name), version))
            if path is None:
                raise UserError(f"{wheelhouse}: no wheel for {requirement}; add it (pip download --no-deps "
                                f"{requirement} -d {wheelhouse})")  # fmt: skip
            shutil.copyfile(path, dest / path.name)

    return copy


def pip_wheel(source: Path, dest: Path) -> None:
    """The default :data:`WheelBuilder`: ``pip wheel --no-deps --no-build-isolation`` (offline)."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "-q", "-w", str(dest), str(source)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"building the rl_lib wheel failed ({tail}); is setuptools installed?")


def source_tree(repo_root: Path, dest: Path) -> Path:
    """Copy what the rl_lib wheel is built from (pyproject.toml, README.md, rl_lib/) into ``dest``.

    Building from a copy leaves no ``build/`` folder in the checkout and puts nothing else in the wheel.
    """
    for name in ("pyproject.toml", "README.md"):
        if not (repo_root / name).is_file():
            raise UserError(
                f"{repo_root / name}: missing; `rl-lib kaggle build` runs from an rl_lib checkout"
            )
        shutil.copyfile(repo_root / name, dest / name)
    shutil.copytree(
        repo_root / "rl_lib", dest / "rl_lib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dest


@dataclass(frozen=True)
class CodeDataset:
    """A built code data set folder."""

    folder: Path
    ref: str  # owner/slug
    code_hash: str
    package_hash: str
    rebuilt: bool  # False: the folder already held this code hash


def dataset_metadata(owner: str, slug: str, title: str) -> dict:
    """``dataset-metadata.json``, checked as ``kaggle datasets create`` checks it."""
    from rl_lib.kaggle.names import check_owner, check_slug

    check_owner(owner)
    check_slug(slug, "code data set slug")
    if not 6 <= len(slug) <= 50:
        raise UserError(f"code data set slug {slug!r}: Kaggle wants 6 to 50 characters")
    if not 6 <= len(title) <= 50:
        raise UserError(f"code data set title {title!r}: Kaggle wants 6 to 50 characters")
    return {"title": title, "id": f"{owner}/{slug}", "licenses": [{"name": "CC0-1.0"}]}


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def build_code_dataset(
    folder: Path,
    owner: str,
    slug: str = DEFAULT_DATASET_SLUG,
    *,
    repo_root: Path | None = None,
    downloader: Downloader = pip_download,
    wheel_builder: WheelBuilder = pip_wheel,
) -> CodeDataset:
    """Write the code data set into ``folder`` unless it already holds this code hash.

    The new folder is assembled next to ``folder`` and renamed into place, so that a failure
    leaves the previous one intact. Dependency wheels already in the old folder are reused.
    """
    from rl_lib.kaggle import swap_into_place
    from rl_lib.kaggle.credentials import scan_for_secrets

    folder = Path(folder)
    repo_root = Path(repo_root) if repo_root is not None else source_package_dir().parent
    metadata = dataset_metadata(owner, slug, DEFAULT_DATASET_TITLE)
    package = package_hash(repo_root / "rl_lib")
    pins = pinned_packages()
    digest = code_hash(package, pins)
    marker = read_marker(folder)
    if (
        marker is not None
        and marker.get("code_hash") == digest
        and marker.get("id") == metadata["id"]
        and all((folder / w).is_file() for w in marker.get("wheels", []))
    ):
        return CodeDataset(folder, metadata["id"], digest, package, rebuilt=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(FILE_MODE | 0o111)  # mkdtemp gives 0700; a folder as mkdir would make it
    try:
        with tempfile.TemporaryDirectory() as tmp:
            built = Path(tmp) / "wheel"
            wheel_builder(source_tree(repo_root, Path(tmp)), built)
            rl_lib_wheels = list(built.glob("rl_lib-*.whl"))
            if len(rl_lib_wheels) != 1:
                raise UserError(f"building the rl_lib wheel gave {len(rl_lib_wheels)} wheels, expected one")
            shutil.copyfile(rl_lib_wheels[0], staging / rl_lib_wheels[0].name)
        requirements = [f"{name}=={version}" for name, version in pins.items()]
        cached = {p.name: p for p in folder.glob("*.whl")} if folder.is_dir() else {}
        missing = []
        for requirement in requirements:
            name, version = requirement.split("==")
            wanted = (normalise(name), version)
            hit = next((p for n, p in cached.items() if wheel_name_version(n)[:2] == wanted), None)
            if hit is not None:
                shutil.copyfile(hit, staging / hit.name)
            else:
                missing.append(requirement)
        if missing:
            downloader(missing, staging)
        wheels = sorted(p.name for p in staging.glob("*.whl"))
        _check_wheels(wheels, pins)
        atomic_write_json(staging / DATASET_METADATA, metadata)
        marker = {"id": metadata["id"], "code_hash": digest, "package_hash": package,
                  "rl_lib_wheel": rl_lib_wheels[0].name, "wheels": wheels, "packages": pins}  # fmt: skip
        atomic_write_json(staging / MARKER, marker)
        scan_for_secrets(staging)
        swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CodeDataset(folder, metadata["id"], digest, package, rebuilt=True)


def _check_wheels(wheels: list[str], pins: dict[str, str]) -> None:
    """One platform-independent wheel per pinned package, at its pinned version."""
    found = {}
    for filename in wheels:
        name, version, tags = wheel_name_version(filename)
        if name == "rl_lib":
            continue
        if not tags.endswith("none-any"):
            raise UserError(f"{filename}: not a platform-independent wheel (none-any); Kaggle's "
                            "Python may differ from this one, so only pure-Python wheels travel")  # fmt: skip
        found.setdefault(name, []).append(version)
    for package, version in pins.items():
        if found.get(normalise(package)) != [version]:
            raise UserError(f"the code data set needs exactly one {package}=={version} wheel, found "
                            f"{found.get(normalise(package), [])}")  # fmt: skip


INSTALL_CELL = """\
# Offline install of rl_lib and its pinned packages from the code data set (written by
# `rl-lib kaggle build`; --no-deps: Kaggle's torch, numpy, pandas ... stay as they are).
import importlib, importlib.util, os, subprocess, sys
from pathlib import Path

PACKAGE_HASH, CODE_HASH = "{package}", "{code}"
{function}

spec = importlib.util.find_spec("rl_lib")
if spec is not None and package_hash(list(spec.submodule_search_locations)[0]) == PACKAGE_HASH:
    print(f"rl_lib {{PACKAGE_HASH[:12]}} is already importable: nothing to install")
else:
    inputs = Path(os.environ.get("RL_LIB_KAGGLE_INPUT") or "/kaggle/input")
    found = [m.parent for m in sorted(inputs.rglob("{marker}")) if CODE_HASH in m.read_text()]
    if not found:
        raise RuntimeError(f"no rl_lib code data set {{CODE_HASH[:12]}} under {{inputs}}: add it as an input")
    wheels = sorted(str(w) for w in found[0].glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--force-reinstall",
                    "--find-links", str(found[0]), *wheels], check=True)
    importlib.invalidate_caches()
    print(f"installed {{len(wheels)}} wheels from {{found[0]}}")
"""


def install_cell_source(package: str, code: str) -> str:
    """The source of the kernel notebook's first cell; see the module docstring."""
    function = inspect.getsource(package_hash)
    return INSTALL_CELL.format(package=package, code=code, function=function, marker=MARKER)
