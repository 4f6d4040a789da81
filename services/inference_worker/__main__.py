"""Start the inference-worker service: `python -m services.inference_worker`."""

import sys

from llmos.runner import main
from services.inference_worker.app import inference_worker
from services.inference_worker.engine.compute import ComputeLoop

#: The compute loop releases and re-takes the GIL around every torch op (~600 a decode
#: step) while Triton's proxy and the NATS/tritonclient threads stream tokens. With the
#: default 5 ms switch interval it waits behind them over and over (measured: 81 tok/s at
#: 32 streams through Triton); 1 ms gave 113 tok/s on the same machine and load.
GIL_SWITCH_INTERVAL_S = 0.001

if __name__ == "__main__":
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    sys.exit(main(inference_worker(ComputeLoop())))
