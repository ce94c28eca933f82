"""Joining a multi-process run through JAX's own runtime, before any device is touched.

Cluster environments JAX detects by itself (TPU pods, SLURM, Open MPI) are initialised with
`jax.distributed.initialize()`. Elsewhere, set JAX_COORDINATOR_ADDRESS (host:port of process 0),
JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process. A single process does nothing.
"""
import os

import jax


def _cluster_detected() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize_if_multiprocess() -> None:
    """Calls `jax.distributed.initialize` when the environment describes several processes."""
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not")
        jax.distributed.initialize(coordinator_address=address,
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif _cluster_detected():
        jax.distributed.initialize()
