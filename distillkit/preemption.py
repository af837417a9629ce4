"""Stop cleanly when the scheduler asks: finish the current step, write a checkpoint, then requeue or exit.

SLURM warns a job before it preempts or times it out (`--signal`), and `scancel`/preemption send SIGTERM.
submitit binds its own requeue handler to SIGUSR2 (SUBMITIT_PREEMPT_SIGNAL changes it) and ignores SIGTERM; its
handler exits at once, mid-step. This guard takes SIGUSR1, SIGUSR2 and SIGTERM over, so the loop can save at
a step boundary first; then it hands over to submitit's handler, which resubmits the same Hydra job into the same
folder. The requeued job resumes from that checkpoint and reopens its MLflow run (the run id is in the folder).
Outside submitit, the process exits with 128 + the signal number, and rerunning the command resumes.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

SIGNAL_NAMES = ("SIGUSR1", "SIGUSR2", "SIGTERM")


def submitit_requeue_handler(handlers: dict[int, object]) -> Callable | None:
    """submitit's `checkpoint_and_try_requeue`, if a submitit job installed it for any of our signals."""
    for handler in handlers.values():
        if getattr(handler, "__name__", "") == "checkpoint_and_try_requeue":
            return handler
    return None


class PreemptionGuard:
    """`with PreemptionGuard() as guard:` records a stop request; the loop checks `guard.requested` per step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread
            for name in SIGNAL_NAMES:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.getsignal(signum)
                    signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _record(self, signum: int, frame) -> None:
        if self.signum is None:
            print(f"\nReceived {signal.Signals(signum).name}: stopping after this step with a checkpoint.",
                  file=sys.stderr, flush=True)
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def hand_over(self, step: int) -> NoReturn:
        """After the checkpoint of `step`: submitit requeues the job and exits; otherwise exit 128 + signum."""
        assert self.signum is not None
        requeue = submitit_requeue_handler(self._previous)
        self.restore()
        if requeue is not None:
            print(f"Checkpoint at step {step} written; requeueing through submitit.", file=sys.stderr, flush=True)
            requeue(self.signum, None)  # resubmits the job, then sys.exit
        print(f"Checkpoint at step {step} written; rerun the same command to resume.", file=sys.stderr, flush=True)
        sys.exit(128 + self.signum)
