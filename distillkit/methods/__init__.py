"""Methods build each optimizer step's micro-batches from rollouts: what the student and the teacher see."""

from distillkit.methods.gkd import GKD
from distillkit.methods.micro_batch import MicroBatch, RolloutContext
from distillkit.methods.sdft import SDFT
from distillkit.methods.sdpo import SDPO

__all__ = ["GKD", "SDFT", "SDPO", "MicroBatch", "RolloutContext"]
