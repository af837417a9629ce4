"""Starting distillkit as a user would, in one process or under torchrun, and the reference run that every
multi-process strategy (ddp, fsdp2, deepspeed) must reproduce."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from server_process import free_port

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
ACCELERATE = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
CONF = Path(__file__).parents[1] / "conf" / "accelerate"


def cli(args: list[str], out_dir: Path, processes: int = 1, accelerate_config: str | None = None
        ) -> subprocess.CompletedProcess:
    """`python -m distillkit.cli ARGS`, or with several processes `accelerate launch --config_file
    conf/accelerate/<accelerate_config>.yaml` of it (which starts torchrun), or torchrun itself; asserts success."""
    if accelerate_config:
        launcher = [ACCELERATE, "launch", "--config_file", str(CONF / f"{accelerate_config}.yaml"),
                    "--num_processes", str(processes), "--main_process_port", str(free_port())]
    elif processes > 1:
        launcher = [TORCHRUN, f"--nproc-per-node={processes}", "--master-port", str(free_port())]
    else:
        launcher = [sys.executable]
    done = subprocess.run([*launcher, "-m", "distillkit.cli", *args, f"hydra.run.dir={out_dir}"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def reference_args(student: Path, teacher: Path) -> list[str]:
    """3 off-policy steps (the data set's completions: every process count sees the same tokens), a checkpoint at
    step 2, an active gradient clip. A run of P processes sets train.batch_size=4/P."""
    return [f"model.student={student}", f"teacher.model={teacher}", "method.lmbda=0", "train.steps=3",
            "train.eval_every=0", "train.save_every=2", "data.num_eval=8", "data.num_train=64",
            "train.max_completion_length=5", "tracking.enabled=false", "train.gradient_accumulation_steps=2",
            "train.max_grad_norm=0.05"]


def assert_same_weights(saved_model_dir: Path, expected: dict[str, torch.Tensor], rtol=1e-4, atol=1e-5) -> None:
    got = load_file(saved_model_dir / "model.safetensors")
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=rtol, atol=atol, msg=name)


def rerun_resumes_to_the_same_weights(args: list[str], out_dir: Path, processes: int,
                                      accelerate_config: str | None = None) -> None:
    """Remove the finished run's final model and run it again: it resumes from its step-2 checkpoint and must end
    on exactly the same weights."""
    whole = load_file(out_dir / "final_model" / "model.safetensors")
    shutil.rmtree(out_dir / "final_model")
    resumed = cli(args, out_dir, processes, accelerate_config)
    assert "Resumed from" in resumed.stdout and "step 2" in resumed.stdout
    assert_same_weights(out_dir / "final_model", whole, rtol=0, atol=0)
