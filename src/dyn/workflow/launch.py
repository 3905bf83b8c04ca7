"""Data parallelism over several Slurm nodes: one task per node runs torchrun, a c10d rendezvous joins them.

A distillation job with `distill.nodes: K` above 1 asks Slurm for K nodes and one task on each
(`slurm_resources`). Its command, `python -m dyn.workflow.launch --nodes K --gpus G --cpus C -- distill ...`,
starts on the job's first node and starts those K tasks with `srun`; each task then starts

    torchrun --nnodes=K --nproc_per_node=G --rdzv_backend=c10d --rdzv_endpoint=<first node>:<port>
             --rdzv_id=<job id> -m dyn.cli distill ...

(torchrun as `python -m torch.distributed.run` of this Python). The K torchrun agents meet at the
first node, which hosts the rendezvous store, and number the K x G processes; each process joins the
process group from torchrun's variables exactly as on one machine (training/distributed.py), so
training has one path for one GPU, one node and many.

A task's place in the job comes from Slurm's variables, read as timm's `world_info_from_env` reads
them (the first variable present wins). Outside a Slurm allocation a job of several nodes ends in one
line, exit code 2: one machine runs several GPUs with `distill.nodes: 1` and `distill.gpus`.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import click

from ..errors import UserError

# Rendezvous ports: below Linux's ephemeral range (32768 and up), so a port is rarely taken, and a
# different one for each job id, so two jobs sharing a first node do not meet at the same store.
PORTS = (20000, 30000)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist, as `scontrol show hostnames LIST | head -1` prints it:
    `gpu[07-09,12],cpu1` -> `gpu07`, `rack[1-2]-n[3-4]` -> `rack1-n3`. Parsed here, because scontrol
    needs the cluster's configuration and a subprocess for what is a string operation."""
    item = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())  # up to the first comma outside brackets
    if item is None:
        raise UserError(f"Slurm node list '{nodelist}' names no node")
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", item.group(0))  # each bracket: its first value


def rendezvous_port(job_id: str) -> int:
    low, high = PORTS
    return low + int(job_id) % (high - low)


@dataclass(frozen=True)
class SlurmTask:
    """Where one task of a Slurm job step runs."""
    job_id: str
    node_rank: int  # 0 on the step's first node
    nodes: int  # nodes of the step
    first_host: str


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)


def slurm_task(env: Mapping[str, str] = os.environ) -> SlurmTask:
    """This task's node and job from Slurm's variables (srun sets them in every task)."""
    job_id = _first(env, "SLURM_JOB_ID", "SLURM_JOBID")
    nodelist = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    node_rank = _first(env, "SLURM_NODEID")
    nodes = _first(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    if None in (job_id, nodelist, node_rank, nodes):
        raise UserError("not in a Slurm task (SLURM_JOB_ID, SLURM_NODEID, SLURM_NNODES and SLURM_JOB_NODELIST "
                        "are not all set): a job of several nodes is started by srun")
    return SlurmTask(job_id, int(node_rank), int(nodes), first_host(nodelist))


def torchrun_argv(task: SlurmTask, nodes: int, gpus: int, command: Sequence[str]) -> list[str]:
    """One node's torchrun: G processes (one on a node without GPUs), found by the others at the first node.

    The first node hosts the rendezvous store because Slurm says it is the first (is_host), not because
    its host name matches the node list's: they differ where a node's Slurm name is not its host name.
    """
    if task.nodes != nodes:
        raise UserError(f"distill.nodes is {nodes} but this Slurm step has {task.nodes} node(s)")
    # torchrun as this Python's module: the same environment whether or not its bin is on PATH
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={max(gpus, 1)}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={task.first_host}:{rendezvous_port(task.job_id)}", f"--rdzv_id={task.job_id}",
            f"--rdzv_conf=is_host={int(task.node_rank == 0)}", "-m", "dyn.cli", *command]


def srun_argv(nodes: int, gpus: int, cpus: int, command: Sequence[str]) -> list[str]:
    """One task per node, each with the node's GPUs and CPUs, each starting that node's torchrun.

    The SLURM plugin clears the job's SLURM_* variables before this runs, so srun is told the whole
    shape rather than inheriting it; --kill-on-bad-exit ends every node when one fails, instead of
    leaving the others waiting in a collective until their time runs out.
    """
    gres = [f"--gres=gpu:{gpus}"] if gpus else []
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus}",
            *gres, "--kill-on-bad-exit=1", sys.executable, "-m", "dyn.workflow.launch", "--on-node",
            f"--nodes={nodes}", f"--gpus={gpus}", "--", *command]


def check_global_batch(global_batch: int, nodes: int, gpus: int) -> None:
    """Before any job starts: each of the job's processes takes an equal share of the global batch (the
    training's own check would end every process of the job with the same line, and torchrun's report)."""
    processes = nodes * max(gpus, 1)
    if global_batch % processes:
        raise UserError(f"train.global_batch {global_batch} does not divide among the {processes} processes of "
                        f"a distillation job (distill.nodes {nodes} x distill.gpus {gpus}): use a multiple of "
                        f"{processes}")


def task_cpus(gpus: int, cpus_per_gpu: int, threads: int) -> int:
    """CPUs of one node's task: `cpus_per_gpu` for each of its GPUs, or `threads` on a node without."""
    return gpus * cpus_per_gpu if gpus else threads


# Resources the nodes and GPUs decide for a job of several nodes; resources.distill.slurm may not set them.
_DECIDED = ("gpu", "gres", "nodes", "tasks", "tasks_per_node", "tasks_per_gpu", "cpus_per_task", "cpus_per_gpu",
            "mpi")


def slurm_resources(nodes: int, gpus: int, cpus_per_gpu: int, threads: int, slurm: Mapping) -> dict:
    """What a distillation job asks snakemake-executor-plugin-slurm for, besides memory and time.

    One node: `gpu` GPUs in one task with `cpus_per_gpu` each, as before. Several: `--nodes=K
    --ntasks=K` (one task per node), each node's GPUs as GRES (`--gres=gpu[:model]:G` counts per node,
    where `--gpus` would count over the job, free to split 8 as 7 + 1) and its CPUs per task. `mpi`
    makes the plugin run the job's command once on the first node instead of inside an srun of one
    task, so that the command can srun its node tasks itself; `tasks_per_gpu: 0` keeps the plugin from
    reading `tasks` as tasks per GPU.
    """
    if nodes == 1:
        return {"gpu": gpus, "cpus_per_gpu": cpus_per_gpu, **slurm}
    clash = sorted(set(_DECIDED) & set(slurm))
    if clash:
        raise UserError(f"resources.distill.slurm sets {', '.join(clash)}: with distill.nodes {nodes} these "
                        "follow from distill.nodes, distill.gpus and resources.distill.cpus_per_gpu")
    site = {key: value for key, value in slurm.items() if key != "gpu_model"}
    model = f"{slurm['gpu_model']}:" if slurm.get("gpu_model") else ""
    gres = {"gres": f"gpu:{model}{gpus}"} if gpus else {}
    return {"nodes": nodes, "tasks": nodes, "mpi": "srun", "tasks_per_gpu": 0,
            "cpus_per_task": task_cpus(gpus, cpus_per_gpu, threads), **gres, **site}


def start(nodes: int, gpus: int, cpus: int, on_node: bool, command: Sequence[str],
          env: Mapping[str, str] = os.environ) -> None:
    """Replace this process with the srun of the node tasks (in the job) or with one node's torchrun."""
    if not on_node and not _first(env, "SLURM_JOB_ID", "SLURM_JOBID"):
        raise UserError(f"distill.nodes {nodes} needs a Slurm allocation of {nodes} nodes "
                        "(snakemake --profile profiles/slurm); on one machine use distill.nodes: 1 and distill.gpus")
    if on_node:
        task = slurm_task(env)
        argv = torchrun_argv(task, nodes, gpus, command)
        where = f"node {task.node_rank} of {nodes}"
    else:
        argv = srun_argv(nodes, gpus, cpus, command)
        where = f"Slurm job {_first(env, 'SLURM_JOB_ID', 'SLURM_JOBID')}"
    # the launcher's part of the command line, for the job's log (the command's own JSON is long)
    print(f"dyn: {where}: {' '.join(argv[:len(argv) - len(command) + 1])} ...", file=sys.stderr, flush=True)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} not found on this node's PATH") from None


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--nodes", type=click.IntRange(min=1), required=True, help="Nodes of the job.")
@click.option("--gpus", type=click.IntRange(min=0), required=True,
              help="GPUs per node: one process each (one process on a node without).")
@click.option("--cpus", type=click.IntRange(min=1), default=1, show_default=True, help="CPUs of each node's task.")
@click.option("--on-node", is_flag=True, help="Run as one node's task (srun starts these): start its torchrun.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def launch(nodes, gpus, cpus, on_node, command):
    """Run `dyn COMMAND` data-parallel over the nodes of this Slurm job."""
    start(nodes, gpus, cpus, on_node, command)


def main(argv: list[str] | None = None) -> None:
    """A user's mistake, or no Slurm allocation, ends in one line and exit code 2, as `dyn` does."""
    try:
        launch.main(args=argv, standalone_mode=False)
    except UserError as error:
        click.echo(f"dyn: error: {error}", err=True)
        sys.exit(2)
    except click.ClickException as error:
        click.echo(f"dyn: error: {error.format_message()}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
