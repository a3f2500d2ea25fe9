"""Run by the tests under ``torchrun``: ``python ddp_fit.py RECORD ssfeat-train-arguments...`` runs
the ``ssfeat train ...`` command, then saves this rank's trained weights and the training-sample
indices it drew to ``RECORD/rank{RANK}.pt``."""

import os
import sys
from pathlib import Path

import torch

from ssfeat.cli import main as ssfeat_main
from ssfeat.training import loop as training


def main(record: str, *args: str) -> None:
    models, drawn, train_synth = [], [], []

    class RecordingDDP(training.DistributedDataParallel):
        def __init__(self, module, *args, **kwargs):
            super().__init__(module, *args, **kwargs)
            models.append(module)

    real_task_for = training.task_for

    def recording_task_for(c):
        task = real_task_for(c)
        synthesizers, make_batch = task.synthesizers, task.make_batch

        def recording_synthesizers():
            train, val = synthesizers()
            train_synth.append(train)
            return train, val

        def recording_make_batch(synth, indices):
            if train_synth and synth is train_synth[0]:
                drawn.extend(indices)
            return make_batch(synth, indices)

        task.synthesizers, task.make_batch = recording_synthesizers, recording_make_batch
        return task

    training.DistributedDataParallel, training.task_for = RecordingDDP, recording_task_for
    assert ssfeat_main(list(args)) == 0
    assert len(models) == 1, "fit did not wrap the model in DistributedDataParallel"
    params = {k: v.detach().clone() for k, v in models[0].named_parameters()}
    Path(record).mkdir(exist_ok=True)
    torch.save({"params": params, "drawn": list(drawn)}, Path(record) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
