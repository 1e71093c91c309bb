#!/bin/bash
# All TrainingArguments in one JSON file, the script's sole argument.
torchrun --nproc-per-node 4 run_clm.py clm_qwen_args.json
