"""Run by the tests under ``torchrun``: ``fit`` a pickled training config, then save this rank's
trained weights and the training-sample indices it drew to ``OUT/rank{RANK}.pt``."""

import os
import pickle
import sys
from pathlib import Path

import torch

from ssfeat import training


def main(cfg_path: str, out: str) -> None:
    cfg = pickle.loads(Path(cfg_path).read_bytes())
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
    training.fit(cfg, out, progress=False)
    assert len(models) == 1, "fit did not wrap the model in DistributedDataParallel"
    params = {k: v.detach().clone() for k, v in models[0].named_parameters()}
    torch.save({"params": params, "drawn": list(drawn)}, Path(out) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
