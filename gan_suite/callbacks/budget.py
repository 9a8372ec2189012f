"""A training budget in the paper's unit: iterations (training batches), not optimizer steps.

Lightning's ``Trainer(max_steps=N)`` counts optimizer steps, and a GAN iteration makes two or
three of them (G, D, S), so ``--trainer.max_steps 4`` would stop a CycleGAN after 2 batches.
The CLI turns ``--trainer.max_steps N`` into this callback, which stops after N iterations
whatever the number of optimizer steps per iteration.
"""

from __future__ import annotations

import lightning as L


def iterations_done(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """Training batches completed so far (a GAN module's ``iteration`` counter, saved in its
    checkpoints; otherwise Lightning's own batch progress, which is restored on resume)."""
    counter = getattr(pl_module, "iteration", None)
    if counter is not None:
        return int(counter)
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)


class IterationBudget(L.Callback):
    """Stop ``fit`` after ``max_iterations`` training batches (the paper's iterations).

    Args:
        max_iterations: training batches in total over the whole run, resumes included
            (a run resumed at iteration 3 of 10 trains 7 more).

    Raises:
        ValueError: ``max_iterations`` below 1.
    """

    def __init__(self, max_iterations: int) -> None:
        if int(max_iterations) < 1:
            raise ValueError(f"max_iterations={max_iterations}: expected an integer >= 1")
        self.max_iterations = int(max_iterations)

    def _stop_if_done(self, trainer: L.Trainer, done: int) -> None:
        if done >= self.max_iterations:
            trainer.should_stop = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a resumed run that already spent its budget trains nothing more
        self._stop_if_done(trainer, iterations_done(trainer, pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # callbacks run before the module's own hook, which counts this batch: hence + 1
        done = iterations_done(trainer, pl_module)
        if getattr(pl_module, "iteration", None) is not None:
            done += 1
        self._stop_if_done(trainer, done)
