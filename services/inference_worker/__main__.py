"""Start the inference-worker service: `python -m services.inference_worker`."""

import sys

from llmos.runner import main
from services.inference_worker.app import inference_worker
from services.inference_worker.engine.compute import ComputeLoop

if __name__ == "__main__":
    sys.exit(main(inference_worker(ComputeLoop())))
