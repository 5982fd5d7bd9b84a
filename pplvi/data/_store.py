"""Where the data lives and how its files are read: directory resolution, sha256 checks, IDX / CSV / npz
readers.

Nothing here downloads. The data directory is ``$PPLVI_DATA`` when set; otherwise the first ``shared/data``
folder found by walking up from the current directory, then from this package's location.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from pathlib import Path

import numpy as np

from pplvi.core.errors import DataError

ENV_VAR = "PPLVI_DATA"

# sha256 of every file a loader reads, from shared/data/README.md.
SHA256 = {
    "mnist/t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "mnist/train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "mnist/train-images-idx3-ubyte.part0.gz":
        "669c97111946d7e9d37bbe0b65cdffcaa508c72bd3f60fd9928dd8913512853d",
    "mnist/train-images-idx3-ubyte.part1.gz":
        "a96b9281197974deedb0e8dc914415da5954064ff73e6237215d72c604a65eaf",
    "mnist/train-images-idx3-ubyte.part2.gz":
        "02b0a61f804d3b6379311df51c179ebb0571ec84edf9055c9611e401aecb88cc",
    "fashion-mnist/t10k-labels-idx1-ubyte.gz":
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    "fashion-mnist/train-labels-idx1-ubyte.gz":
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "fashion-mnist/t10k-images-idx3-ubyte.part0.gz":
        "05a49dcfdfcd51ba4d308154d444b2185775d8f2a423af887629709b4a4645b1",
    "fashion-mnist/t10k-images-idx3-ubyte.part1.gz":
        "66343a39179d7435d3135fe07492b0d78212265ca4249cfc36c2ed49e506ea81",
    "fashion-mnist/train-images-idx3-ubyte.part0.gz":
        "151f327e0d508f4f9a6e6b2ac66241be55bc3b74c5f17033e0c582502ded7252",
    "fashion-mnist/train-images-idx3-ubyte.part1.gz":
        "b64f1f10c2ab7da3e7950727a8c0a662cff598e153372f75cbd2170623a256b4",
    "timegan/stock_data.csv":
        "134b8a00eb4eefa3242dd7ae85144082da80dedf75a1a656d5d08f97cd95277a",
    "timegan/energy_data.csv.gz":
        "f9d64a69c5db42b19ba81e53e7266ba6022ed823083455ebef6d7d3825371ed1",
    "omniglot/images_background_small1.zip":
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "omniglot/images_background_small2.zip":
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    "omniglot/all_runs.zip":
        "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",
    "omniglot/strokes_background_small1.zip":
        "8cb3960fb6cf4ccf5f064ad83169f828c36c36782a0f6e7faacb7ecfae4468a2",
    "omniglot/omniglot_background_small1.npz":
        "65b8972a82b3f9a077bd3431f053b14e25c05bc9ca22a862c3a5060aa0cecf3c",
    "omniglot/omniglot_background_small2.npz":
        "9acdd0963d310bca82db9379ca466735eb6a135e312719643c39746455b263c3",
    "omniglot/omniglot_oneshot_runs.npz":
        "c19a6fbcae237bf16e48988cbd8d1348d1ac5bf9a91476d7c44b6b859b7d1a07",
    "omniglot/omniglot_strokes_background_small1.npz":
        "d8480e4274f2b6c5a76cb1bdd8c80eeea2b2d81ac19fb98b6a5cbeb31b59a7a0",
    "sklearn-digits/digits.csv.gz":
        "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
}

_verified: set[tuple[str, int, int]] = set()  # (absolute path, size, mtime_ns) checked in this process
_lock = threading.Lock()


def _search_roots() -> list[Path]:
    roots = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            if d not in roots:
                roots.append(d)
    return roots


def _default_dir() -> Path | None:
    for d in _search_roots():
        if (d / "shared" / "data").is_dir():
            return d / "shared" / "data"
    return None


def data_dir() -> Path:
    """The data directory: ``$PPLVI_DATA`` if set, else the nearest ``shared/data`` above the current
    directory or above the pplvi package. Raises :class:`~pplvi.DataError` when neither exists."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    found = _default_dir()
    if found is None:
        raise DataError(
            f"no data directory: ${ENV_VAR} is not set and no 'shared/data' folder was found above "
            f"{Path.cwd()} or {Path(__file__).resolve().parent}. Set {ENV_VAR}=/path/to/data (the folder "
            "that holds mnist/, fashion-mnist/, timegan/, omniglot/, sklearn-digits/)."
        )
    return found.resolve()


def path(rel: str) -> Path:
    """The absolute path of data file ``rel`` (e.g. ``"mnist/t10k-labels-idx1-ubyte.gz"``), checked to exist
    and, the first time in this process, to match its published sha256."""
    root = data_dir()
    p = root / rel
    if not p.is_file():
        env = os.environ.get(ENV_VAR)
        how = f"${ENV_VAR} is set to {env!r}" if env else f"${ENV_VAR} is not set"
        raise DataError(
            f"data file '{rel}' not found: looked for {p} in the data directory {root} ({how}). Provide it "
            f"by setting {ENV_VAR} to a folder laid out like shared/data (see its README.md) that contains "
            f"'{rel}'. pplvi never downloads data."
        )
    _verify(rel, p)
    return p


def _verify(rel: str, p: Path) -> None:
    expected = SHA256.get(rel)
    if expected is None:
        return
    st = p.stat()
    stamp = (str(p), st.st_size, st.st_mtime_ns)
    with _lock:
        if stamp in _verified:
            return
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise DataError(
            f"data file {p} is corrupt: its sha256 is {h.hexdigest()}, expected {expected} ('{rel}' in "
            f"shared/data/README.md). Replace it with the original file (or point {ENV_VAR} at a good copy)."
        )
    with _lock:
        _verified.add(stamp)


def read_idx(rel: str) -> np.ndarray:
    """An IDX file (gzipped): uint8 images (N, rows, cols) or labels (N,)."""
    p = path(rel)
    try:
        raw = gzip.open(p).read()
        ndim = raw[3]
        dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, EOFError, ValueError, IndexError) as e:
        raise DataError(f"data file {p} is not a valid gzipped IDX file: {e}") from e


def read_csv(rel: str, header: bool) -> np.ndarray:
    """A comma-separated numeric file (gzipped when named ``*.gz``) as a float64 (rows, cols) array."""
    p = path(rel)
    try:
        return np.loadtxt(p, delimiter=",", skiprows=1 if header else 0, ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"data file {p} is not a valid CSV file: {e}") from e


def read_npz(rel: str) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, loaded eagerly, never with pickle."""
    p = path(rel)
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"data file {p} is not a valid pickle-free .npz file: {e}") from e
