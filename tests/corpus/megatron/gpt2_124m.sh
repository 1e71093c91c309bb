#!/bin/bash
# GPT-2 small (124M) on one node, in the style of examples/gpt3/train_gpt3_175b_distributed.sh.
CHECKPOINT_PATH=checkpoints/gpt2_124m
DATA_PATH=data/openwebtext_text_document

torchrun --nproc_per_node 2 --nnodes 1 --master_addr localhost --master_port 6000 pretrain_gpt.py \
    --num-layers 12 \
    --hidden-size 768 \
    --num-attention-heads 12 \
    --seq-length 1024 \
    --max-position-embeddings 1024 \
    --micro-batch-size 4 \
    --global-batch-size 32 \
    --train-iters 100 \
    --lr 6e-4 \
    --min-lr 6e-5 \
    --lr-decay-style cosine \
    --lr-decay-iters 30 \
    --lr-warmup-iters 1 \
    --weight-decay 0.1 \
    --clip-grad 1.0 \
    --bf16 \
    --tokenizer-type GPT2BPETokenizer \
    --vocab-file gpt2-vocab.json \
    --merge-file gpt2-merges.txt \
    --data-path $DATA_PATH \
    --split 949,50,1 \
    --log-interval 10 \
    --save-interval 20 \
    --eval-interval 50 \
    --eval-iters 5 \
    --save $CHECKPOINT_PATH
