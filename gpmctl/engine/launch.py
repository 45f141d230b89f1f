"""Multi-process runs: named accelerate profiles and re-running a command under `accelerate launch`.

gpmctl never builds its own launcher. A recipe's `launch` section names a profile (an accelerate config
shipped in gpmctl/engine/profiles/, a path to your own, or none: the default accelerate config; see
gpmctl/config/profiles.py) and a process count; `gpmctl train-rm` then decides, from the environment alone, whether to run in place or to re-execute itself as

    python -m accelerate.commands.launch --config_file <profile> --num_processes N [...] -m gpmctl <same args>

The rules, first match wins:
  1. RANK, LOCAL_RANK or WORLD_SIZE is set: we are already one process of a launcher (accelerate launch,
     torchrun, the deepspeed launcher, or gpmctl's own re-execution). Run in place; the launcher's world
     size and engine win over the recipe's (DeepSpeed only when the launcher set it up, e.g.
     `accelerate launch --config_file $(gpmctl recipes cp zero3 .) -m gpmctl train-rm ...`).
  2. Inside an srun step that started several tasks (SLURM_STEP_NUM_TASKS > 1; the batch script itself
     does not count): with exactly one task per node (`srun --ntasks-per-node=1`), re-execute with
     num_machines = SLURM_STEP_NUM_NODES (which must equal launch.num_machines), machine_rank =
     SLURM_NODEID and main_process_ip = MASTER_ADDR (or the first host of SLURM_JOB_NODELIST). Any other
     task layout is an error: start one gpmctl per node and let it start the per-GPU processes.
  3. The recipe asks for one process on one machine with a profile that needs no launcher (`single`,
     `ddp`): run in place.
  4. Otherwise re-execute under accelerate launch. Several machines outside Slurm is an error (each
     machine needs its own launcher with its machine rank; see recipes/slurm/).
ACCELERATE_USE_CPU and the other ACCELERATE_* settings alone do not mean "inside a launcher": accelerate
launch only sets RANK/WORLD_SIZE when it starts more than one process, and a single process is the
case where running in place is right anyway.

Preemption through the re-execution: the parent forwards SIGTERM/SIGUSR1 to the worker processes (which
checkpoint and stop) and exits with the workers' code (75), which the launcher itself would turn into 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gpmctl.config.profiles import read_profile, resolve_profile, shipped_profiles, zero_stage  # noqa: F401  (re-exported)
from gpmctl.errors import ConfigError

_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
_CHILD_DIR = "GPMCTL_LAUNCH_DIR"  # set by the parent for its workers: exit code and pid files go there


def profile_engine(name_or_path: str) -> str:
    """`NO`, `MULTI_GPU`, `DEEPSPEED` or `FSDP`, as the profile's accelerate `distributed_type`."""
    return str(read_profile(name_or_path).get("distributed_type", "NO"))


@dataclass
class LaunchPlan:
    """What `gpmctl train-rm` will do: run in place (`command` is None) or re-execute."""

    reason: str
    world_size: int
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        import shlex

        if self.command is None:
            return "(runs in this process)"
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.command)


def _slurm_first_host(env: dict) -> str:
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    if shutil.which("scontrol") and nodelist:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    if nodelist and "[" not in nodelist and "," not in nodelist:
        return nodelist
    raise ConfigError("a multi-node Slurm run needs MASTER_ADDR (or scontrol on PATH to read SLURM_JOB_NODELIST)")


def plan_launch(launch, argv: list[str], env: dict | None = None, cuda: bool | None = None) -> LaunchPlan:
    """Decide how to run `gpmctl <argv>` for a recipe's `launch` section (gpmctl.config.LaunchConfig)."""
    env = dict(os.environ if env is None else env)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    engine = profile_engine(launch.profile)
    if any(env.get(k) for k in _LAUNCHER_VARS):
        return LaunchPlan("inside a launcher (RANK/LOCAL_RANK/WORLD_SIZE set)", int(env.get("WORLD_SIZE", "1")))
    num_machines, machine_rank, main_ip = launch.num_machines, None, None
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)  # set by srun only, not in the batch script
    if ntasks > 1:
        nnodes = int(env.get("SLURM_STEP_NUM_NODES", "1"))
        if ntasks != nnodes:
            raise ConfigError(
                f"Slurm started {ntasks} tasks on {nnodes} nodes; start one gpmctl per node "
                "(srun --ntasks-per-node=1) and it starts the per-GPU processes with accelerate launch"
            )
        if launch.num_machines != nnodes:
            per = max(launch.num_processes // launch.num_machines, 1)
            raise ConfigError(
                f"the Slurm job has {nnodes} nodes but the recipe says launch.num_machines={launch.num_machines}; "
                f"add launch.num_machines={nnodes} launch.num_processes={per * nnodes}"
            )
        machine_rank, main_ip = int(env.get("SLURM_NODEID", "0")), _slurm_first_host(env)
    elif launch.num_processes == 1 and num_machines == 1 and engine in ("NO", "MULTI_GPU"):
        return LaunchPlan("one process: no launcher needed", 1)
    elif num_machines > 1:
        raise ConfigError(
            f"launch.num_machines={num_machines}: outside Slurm each machine needs its own launcher "
            "(accelerate launch --machine_rank R --main_process_ip HOST ...); see recipes/slurm/"
        )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(resolve_profile(launch.profile)),
        "--num_processes",
        str(launch.num_processes),
        "--num_machines",
        str(num_machines),
    ]
    if machine_rank is not None:
        command += ["--machine_rank", str(machine_rank), "--main_process_ip", main_ip]
    port = launch.main_process_port or (int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else None)
    if port:
        command += ["--main_process_port", str(port)]
    if num_machines == 1 and not port:
        command += ["--main_process_port", str(_free_port())]  # two single-node runs on one machine do not collide
    command += ["-m", "gpmctl", *argv]
    child_env = {}
    if not env.get("OMP_NUM_THREADS"):  # torchrun's default is 1 thread per process (and a warning)
        child_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, launch.num_processes // num_machines)))
    if not cuda:
        child_env["DS_ACCELERATOR"] = "cpu"
        if engine != "DEEPSPEED":
            child_env["ACCELERATE_USE_CPU"] = "1"  # without it a CPU DDP run silently becomes N independent runs
    where = f"Slurm node {machine_rank} of {num_machines}" if machine_rank is not None else "not inside a launcher"
    return LaunchPlan(
        f"{where}: {launch.num_processes} processes, profile {launch.profile}", launch.num_processes, command, child_env
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_plan(plan: LaunchPlan) -> int:
    """Run the re-execution; forward SIGTERM/SIGUSR1 to the workers; return the workers' exit code."""
    with tempfile.TemporaryDirectory(prefix="gpmctl-launch-") as tmp:
        env = {**os.environ, **plan.env, _CHILD_DIR: tmp}
        proc = subprocess.Popen(plan.command, env=env)

        def forward(signum, frame):
            # The launcher would kill its workers on SIGTERM (and die of SIGUSR1): the workers get it instead.
            for pid_file in Path(tmp).glob("pid-*"):
                try:
                    os.kill(int(pid_file.read_text()), signum)
                except (ProcessLookupError, ValueError):
                    pass

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        codes = [int(p.read_text()) for p in Path(tmp).glob("exit-*") if p.read_text().strip()]
    if codes and code in (0, 1):
        return max(codes)  # 75: the workers checkpointed and stopped (torch's launcher would report 1)
    return code


def plan_processes(num_processes: int, argv: list[str], device: str, env: dict | None = None) -> LaunchPlan:
    """How a scoring command (`gpmctl score`, `gpmctl eval ...`: `argv`) runs on `num_processes` processes in all:
    the rules of `plan_launch` with the `ddp` profile (a whole model per process, no DeepSpeed), one machine
    per node of an srun step that started one task per node. `device` cpu keeps a GPU machine's processes on
    the CPU (gloo)."""
    from gpmctl.config import LaunchConfig

    env = dict(os.environ if env is None else env)
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    machines = int(env.get("SLURM_STEP_NUM_NODES", "1") or 1) if tasks > 1 else 1
    launch = LaunchConfig(profile="ddp", num_processes=num_processes, num_machines=machines)
    return plan_launch(launch, argv, env, cuda=False if device == "cpu" else None)


def warn_in_place(launch, plan: LaunchPlan, per_process_batch: int) -> None:
    """Running in place under someone else's launcher: say where it differs from the recipe."""
    from gpmctl.utils import log

    if plan.world_size != launch.num_processes and plan.world_size > 1:
        log(
            f"the launcher started {plan.world_size} processes, the recipe says launch.num_processes="
            f"{launch.num_processes}: the global batch is {per_process_batch * plan.world_size}"
        )
    if (
        plan.world_size > 1
        and profile_engine(launch.profile) == "DEEPSPEED"
        and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in ("1", "true")
    ):
        log(
            f"launch.profile={launch.profile} is DeepSpeed but this launcher did not set it up: training without "
            "DeepSpeed (use `accelerate launch --config_file <profile>` or let gpmctl launch itself)"
        )


def command_argv(command: str, recipe: str, overrides: list[str], **flags) -> list[str]:
    """`gpmctl` arguments that run the same recipe again (what a re-execution passes on): the command, the
    recipe and its overrides, then each flag that is set (`stop_after_steps=5` -> `--stop-after-steps 5`)."""
    argv = [command, recipe, *overrides]
    for name, value in flags.items():
        if value is True:
            argv.append("--" + name.replace("_", "-"))
        elif value not in (None, False):
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def run_training(plan: LaunchPlan, launch, per_process_batch: int, train, report) -> int:
    """Run a training command by its plan (train-rm, train-gpo): re-executed under accelerate launch, or in
    place as one of the run's processes (`train()`). The process the user started calls `report()` (one JSON
    line on stdout) once the run succeeded. Returns the exit code."""
    from gpmctl.utils import log

    if plan.command is not None:
        log(f"launch: {plan.reason}: {plan.shell()}")
        code = run_plan(plan)
        if code == 0:  # the launched processes trained and saved; this process reports
            report()
        return code
    warn_in_place(launch, plan, per_process_batch)
    if run_worker(train) is not None and rank() == 0 and not launched_by_gpmctl():  # else the parent reports
        report()
    return 0


def run_worker(train):
    """Run `train()` as this process's share of a run (see `worker`); None after a stop with a checkpoint."""
    with worker():
        return train()
    return None  # Preempted, after a checkpoint: `worker` kept the launcher from printing a traceback


@contextlib.contextmanager
def worker(errors_agreed: bool = False):
    """Around this process's share of a run. Under `run_plan` the pid is left for signal forwarding and a gpmctl
    error's exit code for the parent; a stop after a checkpoint (Preempted) then ends the block quietly, so
    the launcher prints no traceback. Other ranks than 0 exit quietly on an error that rank 0 reports.
    `errors_agreed`: every rank stops on a gpmctl error together (the scoring commands share errors through
    their collectives), so under `run_plan` rank 0 prints its line and every worker exits 0: the launcher
    adds no failure report of its own and the parent exits with the recorded code."""
    from gpmctl.errors import GpmctlError
    from gpmctl.train.loop import Preempted
    from gpmctl.utils import log

    register_worker()
    try:
        yield
    except GpmctlError as e:
        recorded = record_exit(e.exit_code)
        if recorded and isinstance(e, Preempted):
            log(str(e))
            return
        quiet = recorded and errors_agreed and os.environ.get("GPMCTL_DEBUG", "") in ("", "0")
        if rank() != 0:  # every rank hits the same error: rank 0 says it once
            raise SystemExit(0 if quiet else e.exit_code) from None
        if quiet:
            print(f"gpmctl: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(0) from None
        raise


def rank() -> int:
    """This process's rank under a launcher (0 without one)."""
    return int(os.environ.get("RANK", "0"))


def launched_by_gpmctl() -> bool:
    """True in a worker that `run_plan` started (its parent reports the run's result)."""
    return bool(os.environ.get(_CHILD_DIR))


def register_worker() -> None:
    """In a worker started by `run_plan`: leave our pid so the parent can forward signals to us."""
    folder = os.environ.get(_CHILD_DIR)
    if folder and Path(folder).is_dir():
        (Path(folder) / f"pid-{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))


def record_exit(code: int) -> bool:
    """In a worker started by `run_plan`: leave the exit code the parent should report (True if there is one)."""
    folder = os.environ.get(_CHILD_DIR)
    if folder and Path(folder).is_dir():
        (Path(folder) / f"exit-{os.environ.get('RANK', '0')}").write_text(str(code))
        return True
    return False


# ----------------------------------------------------------------------------------------------------
# --dry-run: sizes without the weights.

# Parameter counts of the paper's backbones, for a dry run on a machine that has not downloaded their config.
KNOWN_PARAMETERS = {"meta-llama/Llama-3.1-8B-Instruct": 8.03e9, "google/gemma-2b-it": 2.51e9, "google/gemma-2-9b-it": 9.24e9}


def count_parameters(model_cfg) -> tuple[int | None, str]:
    """(backbone + head parameters, where the count came from): the backbone's config built on the meta
    device (no weights read), else the table of the paper's backbones."""
    import torch

    try:
        from transformers import AutoConfig, AutoModel

        if model_cfg.backbone == "tiny":
            from gpmctl.models.build import tiny_backbone
            from gpmctl.models.sources import load_tokenizer

            with torch.device("meta"):
                backbone = tiny_backbone(load_tokenizer("tiny"), model_cfg.tiny)
        else:
            config = AutoConfig.from_pretrained(model_cfg.backbone, trust_remote_code=model_cfg.trust_remote_code)
            with torch.device("meta"):
                backbone = AutoModel.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
        hidden = backbone.config.hidden_size
        count = sum(p.numel() for p in backbone.parameters())
    except Exception:  # no config offline: fall back to the table
        known = KNOWN_PARAMETERS.get(model_cfg.backbone)
        return (
            (int(known), "table of known backbones (config not available offline)")
            if known
            else (None, "unknown: no config offline")
        )
    head = {"gpm": model_cfg.dim, "bt": 1, "gpm_bt": 1 + model_cfg.dim}[model_cfg.kind] * hidden
    gate = (model_cfg.dim // 2) * hidden if model_cfg.gate else 0
    return count + head + gate, "backbone config"


def model_state_gib(params: int, profile: str, world: int, mixed_precision: bool) -> float:
    """GiB of parameters + gradients + AdamW state per GPU (ZeRO paper accounting; activations excluded).

    Mixed precision: 2 B weights + 2 B grads + 12 B fp32 master/m/v per parameter; fp32: 4 + 4 + 8.
    ZeRO-2 shards grads and optimizer state, ZeRO-3 also the weights; offload moves the sharded states to CPU."""
    w, g, o = (2, 2, 12) if mixed_precision else (4, 4, 8)
    stage = zero_stage(profile) or 0
    cfg = read_profile(profile).get("deepspeed_config") or {}
    offload_opt = cfg.get("offload_optimizer_device", "none") not in ("none", None)
    offload_par = cfg.get("offload_param_device", "none") not in ("none", None)
    o_gpu = 0 if offload_opt else (o / world if stage >= 1 else o)
    g_gpu = g / world if stage >= 2 else g
    w_gpu = 0 if offload_par else (w / world if stage >= 3 else w)
    return params * (w_gpu + g_gpu + o_gpu) / 2**30
