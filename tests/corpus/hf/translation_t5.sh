#!/bin/bash
torchrun --nproc_per_node 2 run_translation.py \
    --model_name_or_path google-t5/t5-small \
    --do_train \
    --source_lang en --target_lang ro \
    --source_prefix "translate English to Romanian: " \
    --dataset_name wmt16 --dataset_config_name ro-en \
    --per_device_train_batch_size 16 \
    --num_train_epochs 1 \
    --max_steps 300 \
    --fp16 \
    --output_dir runs/t5-small-en-ro \
    --predict_with_generate
