#!/bin/bash
# Multi-node RL training under SLURM: one task per GPU; Lightning's SLURMEnvironment reads the rank, world
# size and master address that srun provides (no torchrun needed). Adjust the #SBATCH lines to your cluster
# and keep trainer.num_nodes / trainer.devices / data_parallel_size in configs/scale/multinode_slurm.yaml
# equal to --nodes / --ntasks-per-node / nodes × tasks.
#
#   sbatch tools/slurm_example.sh
#
#SBATCH --job-name=epr-lightning
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@120          # Lightning's SLURM plugin checkpoints and requeues on this signal
#SBATCH --output=slurm-%j.out

set -euo pipefail

# A shared filesystem for runs/ (logs, DCP checkpoints) and the model folder; no hub downloads.
MODEL=${MODEL:-/shared/models/Qwen3-8B}
VENV=${VENV:-$PWD/.venv}
source "$VENV/bin/activate"

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
export TOKENIZERS_PARALLELISM=false
export NCCL_ASYNC_ERROR_HANDLING=1
# export NCCL_SOCKET_IFNAME=ib0     # the interface between nodes, if NCCL picks the wrong one

srun --kill-on-bad-exit=1 epr-lightning fit \
    --config configs/demo.yaml \
    --config configs/task/countdown.yaml \
    --config configs/method/repo_r.yaml \
    --config configs/scale/multinode_slurm.yaml \
    --model.init_args.policy.init_args.path="$MODEL" \
    --trainer.num_nodes="$SLURM_NNODES" \
    --trainer.devices="$SLURM_NTASKS_PER_NODE" \
    --trainer.strategy.data_parallel_size="$SLURM_NTASKS" \
    "$@"

# After the run, turn the DCP checkpoint into an HF folder (on one node, CPU is enough):
#   epr-lightning export runs/multinode/version_0/checkpoints/last.ckpt exported/
