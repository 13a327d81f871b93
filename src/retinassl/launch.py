"""Which process of a multi-process (DDP) launch this is, from the launcher's environment.

Under DDP every rank runs the whole command (Lightning's launcher re-runs it for ranks 1..N-1 on a
node; ``torchrun`` and ``srun`` start every rank themselves). All ranks train, but only rank 0 may
create the run directory, update its ``run.json`` and append to its results table; the others use
rank 0's run directory (so that checkpoints and ``--resume`` are shared) and leave its records alone.
This module reads the standard variables only; it never touches ``torch.distributed``.
"""

from __future__ import annotations

import os

RUN_DIR_ENV = "RETINASSL_RUN_DIR"


def process_rank() -> int:
    """0 for the process that owns the run directory (rank 0, or a process not launched as one of
    several), a positive number (its rank, or 1 when only its node rank is known) otherwise.

    ``RANK`` (torchrun), ``SLURM_PROCID`` (srun, when more than one task), else ``NODE_RANK`` and
    ``LOCAL_RANK`` as Lightning's launcher sets them for the processes it starts.
    """
    if os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"])
    if os.environ.get("SLURM_PROCID", "").isdigit() and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return int(os.environ["SLURM_PROCID"])
    local = os.environ.get("LOCAL_RANK", "")
    node = os.environ.get("NODE_RANK", "")
    return int(local) if local.isdigit() and int(local) > 0 else (1 if node.isdigit() and int(node) > 0 else 0)


def launch_id() -> str | None:
    """An identifier every rank of an externally launched job shares (srun: job and step id;
    torchrun: ``--rdzv-id``), or None."""
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return f"slurm{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}"
    return None
