"""The model bundle: one versioned directory, written atomically, verified on load.

Layout: manifest.json (format, version, created, data fingerprint, feature names
in order, sha256 of every file, metrics, config), the retrieval artifacts
(`Artifacts.save`), ann.idx, model_cross_sell.txt, model_up_sell.txt and
cleaning_report.json. A bundle is written into a temporary sibling directory and
renamed into place, so an interrupted training never leaves a loadable half.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from xsell.errors import BundleError

FORMAT = "xsell-bundle/1"
MANIFEST = "manifest.json"
MODEL_FILES = {"cross_sell": "model_cross_sell.txt", "up_sell": "model_up_sell.txt"}
# optional lleaves-compiled twins (+ ".json" sidecars), written when lleaves is installed
COMPILED_FILES = {"cross_sell": "model_cross_sell.so", "up_sell": "model_up_sell.so"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_version(fingerprint: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{fingerprint[:8]}"


def check_out_dir(out_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse an output path a bundle cannot go to, before any training is spent on it.

    `overwrite` replaces a bundle (a directory with a manifest), never another non-empty
    directory: `--out` naming the data directory by mistake must not delete the data.
    """
    out_dir = Path(out_dir)
    try:
        if out_dir.exists():
            if not out_dir.is_dir():
                raise BundleError("exists and is not a directory", path=str(out_dir))
            if any(out_dir.iterdir()):
                if not (out_dir / MANIFEST).is_file():
                    raise BundleError("directory exists, is not empty and holds no manifest.json: not a bundle, "
                                      "so not replaced even with --overwrite; choose another --out", path=str(out_dir))  # fmt: skip
                if not overwrite:
                    raise BundleError("directory exists and is not empty (use --overwrite)", path=str(out_dir))
        parent = out_dir.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise BundleError(f"cannot create it: {parent} is not a directory", path=str(out_dir))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BundleError(f"cannot create it: {parent} is not writable", path=str(out_dir))
    except OSError as exc:  # e.g. a directory that cannot be listed
        raise BundleError(f"cannot use it as the bundle directory: {exc.strerror or exc}", path=str(out_dir)) from exc


@contextmanager
def atomic_bundle_dir(out_dir: Path, *, overwrite: bool = False):
    """Yield a temporary directory; on success rename it to `out_dir`, else delete it."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite=overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as exc:
        raise BundleError(f"cannot create the bundle directory: {exc.strerror or exc}", path=str(out_dir)) from exc
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a bundle is read by other users' servers
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(bundle: Path, manifest: dict) -> dict:
    """Hash every file in `bundle` into the manifest and write it (last: it marks completion)."""
    files = sorted(p.name for p in bundle.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format": FORMAT, **manifest, "files": {name: sha256_file(bundle / name) for name in files}}
    manifest.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def check_model_text(path: Path) -> None:
    """Refuse a LightGBM text model whose tree section is not whole.

    LightGBM seeks through the trees by the `tree_sizes=` header and crashes the
    process (SIGSEGV, LightGBM 4.7) on a truncated file instead of raising, so a
    bad file must be caught before it reaches LightGBM, even when its hash matches.
    """
    data = Path(path).read_bytes()
    header = re.search(rb"^tree_sizes=([0-9 ]*)$", data, re.MULTILINE)
    start, end = data.find(b"\nTree=0\n"), data.find(b"\nend of trees\n")
    if header is None or start < 0 or end < 0 or b"end of parameters" not in data[end:]:
        raise BundleError("not a whole LightGBM text model (truncated?)", path=str(path))
    sizes = [int(x) for x in header.group(1).split()]
    if sum(sizes) != end + 1 - (start + 1):
        raise BundleError(f"tree section is {end - start} bytes, its header says {sum(sizes)}", path=str(path))


def read_manifest(bundle: Path, *, verify: bool = True) -> dict:
    """Read and check the manifest: format, every file present with its recorded hash."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError("not a directory", path=str(bundle))
    if not path.is_file():
        raise BundleError("no manifest.json: not a bundle, or an unfinished one", path=str(bundle))
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"unreadable manifest: {exc}", path=str(path)) from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle format {manifest.get('format')!r}, this code reads {FORMAT!r}", path=str(path))
    for key in ("version", "feature_names", "files"):
        if key not in manifest:
            raise BundleError(f"manifest lacks {key!r}", path=str(path))
    if verify:
        for name, digest in manifest["files"].items():
            file = bundle / name
            if not file.is_file():
                raise BundleError("file listed in the manifest is missing", path=str(file))
            actual = sha256_file(file)
            if actual != digest:
                raise BundleError(f"sha256 {actual[:12]}... does not match the manifest's {digest[:12]}...", path=str(file))
    return manifest
