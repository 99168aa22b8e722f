"""The OCI image of the bundle, declared in Python (`bentoml containerize` builds it; see scripts/image.sh).

Declaring it here rather than in bentofile.yaml matters: with a bentofile `docker:` section BentoML 1.4 writes a
Dockerfile that apt-installs build-essential and git (~1.0 GB image); ``distro="none"`` on our own base image adds
no system package at all (598 MB measured on 2026-12-01: 123 MB base, ~78 MB onnxruntime). The base image is
built locally by scripts/image.sh (no registry is reachable).
"""

from __future__ import annotations

import re
from pathlib import Path

import bentoml

BASE_IMAGE = "localhost/fraud-python-base:3.11-bookworm-nopip"
PYTHON_VERSION = "3.11"
# Packages of requirements.txt the serving image does without: pyarrow (170 MB) is read by fraud-batch only,
# onnx and skl2onnx (35 MB) by training's ONNX export only (serving loads the graphs with onnxruntime).
NOT_SERVED = frozenset({"pyarrow", "onnx", "skl2onnx"})
# The image is squashed into one layer (buildah without --layers), so deleting here does shrink it.
# Test suites and compiler inputs (Cython sources, C headers, stubs) are never used when serving.
SLIM_COMMANDS = (
    "find /app/.venv/lib -depth -type d -name tests -exec rm -rf {} +",
    r"find /app/.venv/lib \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.pyi' -o -name '*.h'"
    r" -o -name '*.c' -o -name '*.cpp' \) -delete",
)
REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def requirement_lines(requirements: Path = REQUIREMENTS) -> list[str]:
    """The pins of a requirements file, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines())
    return [line for line in lines if line and _name(line) not in NOT_SERVED]


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def bundle_image(base_image: str = BASE_IMAGE, requirements: Path = REQUIREMENTS) -> bentoml.images.Image:
    """Our Debian bookworm Python 3.11 base plus the pinned runtime requirements, nothing else."""
    # Image.requirements_file() only takes paths relative to the cwd; read the file ourselves. The base has no
    # pip and gets no uv: scripts/image.sh bind-mounts the project's pinned uv into the build steps.
    image = bentoml.images.Image(base_image=base_image, distro="none", python_version=PYTHON_VERSION)
    image.python_packages(*requirement_lines(requirements))
    for command in SLIM_COMMANDS:
        image.run(command)
    return image


IMAGE = bundle_image()
