#!/bin/bash
# The recipe file, with the learning rate overridden on the command line.
torchrun --nproc_per_node 2 sft.py --config sft_trl.yaml --learning_rate 1e-5
