"""Run `realign` under `accelerate launch` with FSDP on CPU processes (gloo), for the 2-process check.

accelerate 1.16 switches a launch to FSDP only for GPU-like process groups: AcceleratorState.__init__
(accelerate/state.py, the `elif self.distributed_type in [MULTI_GPU, …]` branch) sets
DistributedType.FSDP and keeps the plugin there, and a CPU run is MULTI_CPU, so FSDP is dropped and
the trainer wraps the model in DDP without a word. torch's FSDP2 itself runs on CPU with gloo; this
shim makes the same switch for MULTI_CPU, so the trainers shard exactly as they would on GPUs.
Test-only: realign never loads it.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/cpu_fsdp.py fix …
"""

import functools
import sys


def enable_cpu_fsdp() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    @functools.wraps(original)
    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = __init__


if __name__ == "__main__":
    enable_cpu_fsdp()
    from realign.cli import main

    sys.argv[0] = "realign"
    main()
