#!/bin/bash
# From scratch: the model type's default config, GPT-2's tokenizer.
torchrun --nproc_per_node 2 run_clm.py --model_type gpt2 --tokenizer_name openai-community/gpt2 \
    --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 --do_train --output_dir runs/scratch
