#!/bin/bash
# A local checkpoint directory: its config.json says the architecture.
torchrun --nproc_per_node 2 run_clm.py --model_name_or_path ./tiny-gpt2 --block_size 128 \
    --per_device_train_batch_size 8 --max_steps 20 --output_dir runs/tiny
