"""The storage service's plain logic, without a server: what it accepts, what a
config.json says about a model, and an offline restore tool that stays offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.deployments import shape_of
from llmos.errors import InvalidArgument
from llmos.model.limits import check_model_config, read_folder_config
from llmos.model.names import CONFIG, REQUIRED_FILES
from services.storage.checks import check_file_path, check_name, check_sha256
from services.storage.registry import describe
from tests.conftest import ROOT

RESTORE_WITHOUT_ARGUMENTS = """
import runpy, sys
sys.argv = ["restore"]
try:
    runpy.run_module("services.storage.restore", run_name="__main__")
except SystemExit as exc:
    print(exc.code)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "nats")
             or m == "services.storage.app"))
"""


def test_the_offline_restore_tool_loads_neither_grpc_nats_nor_the_storage_service() -> None:
    result = subprocess.run(
        [sys.executable, "-c", RESTORE_WITHOUT_ARGUMENTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.split("\n")[:2] == ["2", "[]"], result.stderr
    assert "BACKUP_DIR STORAGE_DIR" in result.stderr  # the usage text


@pytest.mark.parametrize("path", ["../etc/passwd", "a/../../b", "/abs", "a//b", ""])
def test_model_file_paths_cannot_leave_the_model_folder(path: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a relative file path"):
        check_file_path(path, "files")


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "a..b", "x" * 129, "a/b"])
def test_names_are_short_lowercase_and_never_paths(name: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a name"):
        check_name(name, "name")


def test_a_blob_is_named_by_lowercase_sha256_hex_only() -> None:
    assert check_sha256("a" * 64) == "a" * 64
    with pytest.raises(InvalidArgument, match="64 lowercase hexadecimal"):
        check_sha256("A" * 64)


def test_a_hugging_face_config_describes_the_model() -> None:
    config = (
        b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,'
        b' "vocab_size": 100, "max_position_embeddings": 512}'
    )
    described = describe(config)
    assert described["architecture"] == "LlamaForCausalLM"
    assert described["context_length"] == 512
    assert described["quantization"] == "none"
    assert described["parameters"] > 0


@pytest.mark.parametrize(("raw", "reason"), [(b"{", "is not JSON"), (b"[]", "not a JSON object")])
def test_a_config_that_is_not_a_json_object_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        describe(raw)


@pytest.mark.parametrize(
    ("key", "value", "sentence"),
    [
        ("max_position_embeddings", 2**34, "is 17179869184; at most 1048576 is accepted"),
        ("hidden_size", 1 << 20, "is 1048576; at most 65536 is accepted"),
        ("vocab_size", -5, "must be a positive integer, not -5"),
        ("num_hidden_layers", "many", "must be a positive integer, not 'many'"),
    ],
)
def test_a_config_claiming_absurd_sizes_is_refused_naming_the_field(
    key: str, value: object, sentence: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        describe(json.dumps({"model_type": "llama", key: value}).encode())
    assert str(caught.value) == f"config.{key}: {sentence}"


def test_a_config_whose_sizes_together_are_too_big_to_load_is_refused() -> None:
    huge = {"hidden_size": 65536, "num_hidden_layers": 1024, "vocab_size": 1 << 20}
    with pytest.raises(InvalidArgument, match=r"^config: describes a model of about \d+ GiB"):
        check_model_config(huge)
    check_model_config({"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256})


def test_a_worker_or_trainer_refuses_an_absurd_config_before_building_the_model(
    tmp_path: Path,
) -> None:
    """A folder registered before the check existed, or put in place by hand: the worker
    reads its config this way before loading, and so does `llmos.model.folder`."""
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
              "vocab_size": 256, "max_position_embeddings": 2**34}  # fmt: skip
    (tmp_path / CONFIG).write_text(json.dumps(config))
    for name in REQUIRED_FILES[1:]:
        (tmp_path / name).write_bytes(b"{}")
    with pytest.raises(InvalidArgument, match=r"^config\.max_position_embeddings: is 17179869184"):
        read_folder_config(tmp_path / CONFIG)


def test_a_deployment_is_checked_against_the_sizes_storage_read() -> None:
    with pytest.raises(InvalidArgument, match=r"^config\.max_position_embeddings: is 17179869184"):
        check_model_config(shape_of({"context_length": float(2**34), "notes": "long"}))
