"""Optional compiled LightGBM predictor (lleaves: the trees compiled to machine code by LLVM).

`compile_booster` turns a LightGBM text model into a shared object once (in training:
seconds for a few hundred trees), with a sidecar `<out>.json` naming what it was built
from and for. `load_predictor` returns a function `x -> scores` that uses the compiled
file when it is there, was built from this very model text, and matches this host and
library versions; otherwise `Booster.predict(num_threads=1)`. lleaves keeps no such
check itself (its cache "makes no effort to check staleness"), and a stale or foreign
object file would answer wrong scores or crash the process, not raise.

lleaves is an optional extra (`pip install lleaves 'llvmlite==0.44.*'`): lleaves 1.3.0
calls `llvmlite.binding.PassManagerBuilder`, which llvmlite 0.45+ removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]
SIDECAR_FORMAT = "xsell-compiled/1"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _build_target() -> dict:
    """What a compiled object is tied to: CPU (lleaves targets the host's CPU features),
    platform and the compiler versions."""
    from importlib.metadata import version

    import lleaves  # noqa: F401 - fails here when the extra is missing
    import llvmlite
    import llvmlite.binding as llvm

    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "triple": llvm.get_process_triple(),
        "cpu": llvm.get_host_cpu_name(),
        "cpu_features": llvm.get_host_cpu_features().flatten(),
        "llvmlite": llvmlite.__version__,
        "lleaves": version("lleaves"),
    }


def sidecar_path(out: Path) -> Path:
    return Path(str(out) + ".json")


def compile_booster(model_txt: Path, out: Path) -> Path:
    """Compile a LightGBM text model with lleaves into `out` (+ `out.json`); returns `out`.

    Raises ImportError when lleaves is not installed. An existing `out` is replaced.
    """
    import lleaves

    model_txt, out = Path(model_txt), Path(out)
    target = _build_target()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)  # lleaves would load an existing cache file instead of compiling
    t0 = time.perf_counter()
    model = lleaves.Model(model_file=str(model_txt))
    model.compile(cache=str(tmp))
    seconds = time.perf_counter() - t0
    tmp.replace(out)
    meta = {
        "format": SIDECAR_FORMAT,
        "model_sha256": _sha256(model_txt),
        "object_sha256": _sha256(out),
        "num_trees": model.num_trees(),
        "num_features": model.num_feature(),
        "compile_seconds": round(seconds, 3),
        "target": target,
    }
    sidecar_path(out).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("compiled %s (%d trees) in %.1f s -> %s", model_txt, model.num_trees(), seconds, out)
    return out


def compiled_usable(model_txt: Path, compiled: Path) -> tuple[bool, str]:
    """(usable, why not): the compiled file exists, was built from this model text, and
    for this host, platform and lleaves/llvmlite version."""
    compiled = Path(compiled)
    if not compiled.is_file():
        return False, f"{compiled} does not exist"
    try:
        meta = json.loads(sidecar_path(compiled).read_text())
    except (OSError, ValueError) as exc:
        return False, f"{sidecar_path(compiled)} unreadable: {exc}"
    if meta.get("format") != SIDECAR_FORMAT:
        return (
            False,
            f"{sidecar_path(compiled)}: format {meta.get('format')!r}, expected {SIDECAR_FORMAT!r}",
        )
    try:
        target = _build_target()
    except ImportError as exc:
        return False, f"lleaves is not installed ({exc})"
    if meta.get("target") != target:
        diff = sorted(k for k in target if meta.get("target", {}).get(k) != target[k])
        return False, f"built for another target or library version (differs in {', '.join(diff)})"
    if meta.get("model_sha256") != _sha256(Path(model_txt)):
        return False, f"built from another model text than {model_txt}"
    if meta.get("object_sha256") != _sha256(compiled):
        return False, f"{compiled} changed after it was built"
    return True, ""


def load_predictor(model_txt: Path, compiled: Path | None) -> Predictor:
    """x (n, features) -> scores (n,), float64.

    The lleaves predictor (one thread) when `compiled` is usable (see `compiled_usable`),
    else LightGBM's `Booster.predict(num_threads=1)` on `model_txt`; the reason for a
    fallback is logged once. The function has a `kind` attribute: "lleaves" or "lightgbm".
    """
    model_txt = Path(model_txt)
    if compiled is not None:
        ok, why = compiled_usable(model_txt, Path(compiled))
        if ok:
            try:
                import lleaves

                model = lleaves.Model(model_file=str(model_txt))
                model.compile(cache=str(compiled))  # loads the object file; no compilation

                def predict_compiled(x: np.ndarray) -> np.ndarray:
                    return model.predict(x, n_jobs=1)

                predict_compiled.kind = "lleaves"  # type: ignore[attr-defined]
                return predict_compiled
            except Exception as exc:  # noqa: BLE001 - any load failure means: use LightGBM
                why = f"lleaves could not load it: {type(exc).__name__}: {exc}"
        log.warning("compiled model not used for %s: %s; using LightGBM", model_txt, why)
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(model_txt))

    def predict_lightgbm(x: np.ndarray) -> np.ndarray:
        # One thread: a request is a few hundred rows, and threads stall when the other core serves.
        return booster.predict(x, num_threads=1)

    predict_lightgbm.kind = "lightgbm"  # type: ignore[attr-defined]
    return predict_lightgbm


__all__ = ["Predictor", "compile_booster", "compiled_usable", "load_predictor", "sidecar_path"]
