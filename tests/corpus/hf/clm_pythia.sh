#!/bin/bash
# Causal LM fine-tuning of a small Pythia on wikitext, two GPUs, bf16.
torchrun --nproc_per_node 2 run_clm.py \
    --model_name_or_path EleutherAI/pythia-160m \
    --dataset_name wikitext \
    --dataset_config_name wikitext-2-raw-v1 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 2 \
    --learning_rate 3e-4 \
    --warmup_ratio 0.1 \
    --max_steps 200 \
    --bf16 \
    --do_train \
    --output_dir runs/pythia-160m-wikitext
