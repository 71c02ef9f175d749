#!/bin/bash
# `wsss fit` with DDP launched by torchrun (no SLURM): torchrun starts one process per GPU and sets RANK,
# LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; Lightning detects them (TorchElasticEnvironment) and does
# not launch processes itself. `python -m lightning_wsss` is the `wsss` command (lightning_wsss/__main__.py).
#
#   experiments/cluster/torchrun_fit.sh experiments/voc2012/cam.yaml                  # every GPU of this machine
#   NPROC=2 experiments/cluster/torchrun_fit.sh experiments/voc2012/cam.yaml --data.init_args.batch_size=8
#   # two machines: run on each, with the same MASTER_ADDR (the first machine) and NODE_RANK 0 / 1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 experiments/cluster/torchrun_fit.sh experiments/voc2012/segmenter_full.yaml
#
# WSSS_COMMAND (default fit) picks validate / test / predict instead; extra arguments go to that command.
# The data batch size is per process (GPU).
set -euo pipefail
CONFIG=${1:?usage: experiments/cluster/torchrun_fit.sh CONFIG [wsss fit arguments...]}
shift
COMMAND=${WSSS_COMMAND:-fit}
NPROC=${NPROC:-$(nvidia-smi --list-gpus | wc -l)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m lightning_wsss "$COMMAND" --config "$CONFIG" \
    --trainer.num_nodes "$NNODES" \
    --trainer.devices "$NPROC" \
    "$@"
