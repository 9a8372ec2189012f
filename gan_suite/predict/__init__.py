"""``gan-suite predict``: apply a trained checkpoint to a folder of images (see :mod:`.run`)."""

from gan_suite.predict.checkpoint import LoadedRun, load_checkpoint
from gan_suite.predict.run import predict, predict_main, run_predict

__all__ = ["LoadedRun", "load_checkpoint", "predict", "predict_main", "run_predict"]
