from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from configs import compose_config  # noqa: E402
from tiny_models import make_tiny_model  # noqa: E402

# The tests' models are tiny: a second thread only adds synchronization (and spins when the machine is busy).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A random tiny student and a larger random teacher with the same tokenizer."""
    root = tmp_path_factory.mktemp("models")
    return make_tiny_model(root / "student"), make_tiny_model(root / "teacher", hidden=128, seed=1)


@pytest.fixture(scope="session")
def reference_weights(tiny_pair, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of `launch.reference_args` in one process with the global batch (4): what two processes
    must reach with ddp, fsdp2 and deepspeed."""
    from launch import cli, reference_args
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("reference")
    cli([*reference_args(*tiny_pair), "train.batch_size=4"], out)
    return load_file(out / "final_model" / "model.safetensors")


@pytest.fixture
def compose_cfg(tiny_pair, tmp_path):
    """Compose the real config (conf/) with overrides, pointing at the tiny models and a private MLflow store."""
    student, teacher = tiny_pair

    def _compose(*overrides: str):
        method = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "gkd")
        default_teacher = "live" if method == "gkd" else "ema"  # sdft and sdpo pick the EMA teacher
        teacher_choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("teacher=")), default_teacher)
        separate_teacher = teacher_choice == "live"
        base = [
            f"model.student={student}", *([f"teacher.model={teacher}"] if separate_teacher else []),
            "data.num_train=64", "data.num_eval=16",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "train.batch_size=4",
            "train.gradient_accumulation_steps=1", "train.max_completion_length=5",
        ]
        return compose_config([*base, *overrides])

    return _compose
