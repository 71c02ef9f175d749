#!/bin/bash
# `wsss fit` on SLURM GPU nodes with DDP: one task per GPU. Lightning detects SLURM (SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID, SLURM_NODEID, the node list for the master address) and wires up DDP itself: no torchrun.
# The config's trainer.num_nodes / trainer.devices are overridden from the allocation, so they always match.
#
#   sbatch experiments/cluster/slurm_fit.sh experiments/voc2012/cam.yaml
#   sbatch --nodes=2 experiments/cluster/slurm_fit.sh experiments/voc2012/segmenter_full.yaml
#   sbatch --ntasks-per-node=8 --gpus-per-node=8 experiments/cluster/slurm_fit.sh CONFIG --data.init_args.batch_size=2
#   WSSS_COMMAND=predict sbatch experiments/cluster/slurm_fit.sh experiments/voc2012/cam.yaml --ckpt_path runs/voc2012/cam/checkpoints/last.ckpt
#
# WSSS_COMMAND (default fit) picks validate / test / predict instead; extra arguments go to that command
# (LightningCLI keys). The data batch size is per GPU: keep
# batch_size x GPUs x nodes at the recipe's global batch (16 for the voc2012 / coco2014 configs).
# Time limit: SIGUSR1 90 s before it, Lightning saves an hpc_ckpt in trainer.default_root_dir and requeues the job;
# the requeued job resumes from it.
#SBATCH --job-name=wsss-fit
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=10
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --output=%x-%j.out

set -euo pipefail
CONFIG=${1:?usage: sbatch experiments/cluster/slurm_fit.sh CONFIG [wsss fit arguments...]}
shift
COMMAND=${WSSS_COMMAND:-fit}             # fit | validate | test | predict
cd "${SLURM_SUBMIT_DIR:-.}"               # submit from the repository root: config paths are relative to it
# source .venv/bin/activate               # the environment where `pip install -e .` was run
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export NCCL_ASYNC_ERROR_HANDLING=1

srun wsss "$COMMAND" --config "$CONFIG" \
    --trainer.num_nodes "$SLURM_NNODES" \
    --trainer.devices "$SLURM_NTASKS_PER_NODE" \
    "$@"
