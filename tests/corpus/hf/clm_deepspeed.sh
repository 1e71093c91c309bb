#!/bin/bash
torchrun --nproc_per_node 2 run_clm.py --deepspeed ds_zero2.json --model_name_or_path gpt2 \
    --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --max_steps 30 --bf16 \
    --output_dir runs/gpt2-ds
