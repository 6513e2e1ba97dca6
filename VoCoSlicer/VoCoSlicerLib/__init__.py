"""Qt-free logic of the VoCoSlicer module: parameters, the backend process, scene ↔ files, the model catalogue."""

from VoCoSlicerLib.backendEnvironment import BackendEnvironment
from VoCoSlicerLib.backendRunner import BackendError, BackendRun, BackendRunner, RunOutcome
from VoCoSlicerLib.logic import VoCoSlicerLogic

__all__ = ["BackendEnvironment", "BackendError", "BackendRun", "BackendRunner", "RunOutcome", "VoCoSlicerLogic"]
