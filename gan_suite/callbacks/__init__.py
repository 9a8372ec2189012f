"""Lightning callbacks: cross-cutting behaviour whose state must survive a checkpoint."""

from gan_suite.callbacks.ddp_check import DDPConsistencyCheck
from gan_suite.callbacks.evaluation import Evaluation
from gan_suite.callbacks.history import HistoryBuffer, ImagePool
from gan_suite.callbacks.instances import InstanceNeighbourhoods
from gan_suite.callbacks.safety import RunSafety
from gan_suite.callbacks.samples import SampleGrid

__all__ = [
    "DDPConsistencyCheck",
    "Evaluation",
    "HistoryBuffer",
    "ImagePool",
    "InstanceNeighbourhoods",
    "RunSafety",
    "SampleGrid",
]

from gan_suite.callbacks.bdl_schedule import BDLSchedule  # noqa: E402

__all__ += ["BDLSchedule"]
