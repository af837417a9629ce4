"""Methods build each optimizer step's micro-batches from rollouts: what the student and the teacher see."""

from distillkit.methods.gkd import GKD, MicroBatch

__all__ = ["GKD", "MicroBatch"]
