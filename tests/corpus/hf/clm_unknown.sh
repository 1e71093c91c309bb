#!/bin/bash
torchrun --nproc_per_node 2 run_clm.py --model_name_or_path my-lab/domain-llm-3b --max_steps 10 \
    --output_dir runs/domain
