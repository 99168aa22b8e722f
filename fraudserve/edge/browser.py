"""The browser page of an edge bundle (``fraud-edge export --web``): a static page + an ES module on onnxruntime-web.

Written into the bundle before its manifest, so the page and the runtime are covered by the sha256s:

    index.html              the page: a form from schema.json, a JSON-list box, a results table
    web/edge_scorer.mjs     the scorer (validation, encoding, combination of edge_scorer.py)
    web/ort/                onnxruntime-web's WASM build (ort.wasm.min.mjs + its .mjs/.wasm), unless
                            the page is told to load it from another path (``ort_url``)

onnxruntime-web comes from npm (package.json at the repository root, exact version, no lock file).
Its WASM build runs the bundle's graphs as they are, float64 ``ai.onnx.ml`` TreeEnsemble (opset 5)
included, so there is no separate web variant of the members.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudserve.errors import ExportError

ASSETS = Path(__file__).with_name("web")
PAGE = "index.html"
MODULE = "web/edge_scorer.mjs"
ORT_FOLDER = "web/ort/"
# The WASM-only ES module of onnxruntime-web and the two files it loads beside itself (single-threaded SIMD build).
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
DEFAULT_ORT_DIR = Path(__file__).resolve().parents[2] / "node_modules" / "onnxruntime-web" / "dist"


@dataclass(frozen=True)
class WebOptions:
    """Where the page gets onnxruntime-web: copied from ``ort_dir`` into the bundle, or loaded from ``ort_url``."""

    ort_dir: Path = DEFAULT_ORT_DIR
    ort_url: str | None = None


def ort_web_version(ort_dir: Path) -> str:
    package = ort_dir.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def write_web(root: Path, options: WebOptions) -> dict[str, Any]:
    """Write the page into bundle folder ``root``; returns the manifest's ``web`` entry."""
    (root / "web").mkdir(exist_ok=True)
    shutil.copyfile(ASSETS / PAGE, root / PAGE)
    shutil.copyfile(ASSETS / Path(MODULE).name, root / MODULE)
    if options.ort_url is not None:
        return {"page": PAGE, "module": MODULE, "ort_url": options.ort_url, "onnxruntime_web": None}
    missing = [name for name in ORT_FILES if not (options.ort_dir / name).is_file()]
    if missing:
        raise ExportError(
            f"onnxruntime-web not found in {options.ort_dir} (missing {', '.join(missing)}): run "
            "`npm install --no-package-lock` at the repository root (make web), or pass --ort-dir or --ort-url",
            field="ort_dir",
        )
    (root / ORT_FOLDER).mkdir()
    for name in ORT_FILES:
        shutil.copyfile(options.ort_dir / name, root / ORT_FOLDER / name)
    return {"page": PAGE, "module": MODULE, "ort_url": ORT_FOLDER, "onnxruntime_web": ort_web_version(options.ort_dir)}
