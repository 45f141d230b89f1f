"""The engine: how a run uses its processes and devices, in one place.

    engine.py     Engine: accelerate, with DeepSpeed ZeRO when the launch profile asks for it (build, prepare,
                  step, save and load state, gather full weights, collectives), or plain torch in one process
    launch.py     launch profiles and re-running a command under `accelerate launch` (and --dry-run sizes)
    profiles/     the shipped accelerate configs (single, ddp, zero2, zero3, zero3_offload)

No module outside this package asks which engine runs.
"""

from gpmctl.engine.engine import Diverged, Engine, RankError

__all__ = ["Diverged", "Engine", "RankError"]
