#!/bin/bash
# A Mamba hybrid in the style of Megatron's later examples/mamba/train.sh (run from examples/mamba):
# pretrain_hybrid.py, the layers given only by --hybrid-layer-pattern, samples-based schedule.
HYBRID_LAYER_PATTERN="M-M-*M-M-M-M*-M-M-M-*M-M-M-M-*M-"
TRAIN_SAMPLES=640000
torchrun --nproc_per_node 8 ../../pretrain_hybrid.py \
    --tensor-model-parallel-size 1 \
    --sequence-parallel \
    --use-distributed-optimizer \
    --untie-embeddings-and-output-weights \
    --init-method-std 0.014 \
    --position-embedding-type none \
    --hybrid-layer-pattern ${HYBRID_LAYER_PATTERN} \
    --hidden-size 768 \
    --num-attention-heads 12 \
    --group-query-attention \
    --num-query-groups 4 \
    --seq-length 2048 \
    --max-position-embeddings 2048 \
    --train-samples ${TRAIN_SAMPLES} \
    --lr-warmup-samples 6400 \
    --lr-decay-samples 633600 \
    --save ./checkpoints \
    --tokenizer-type GPTSentencePieceTokenizer \
    --tokenizer-model /data/tokenizers/nemotron_256k.model \
    --micro-batch-size 2 \
    --global-batch-size 64 \
    --lr 3e-4 \
    --min-lr 3e-5 \
    --lr-decay-style cosine \
    --weight-decay 0.05 \
    --disable-bias-linear \
    --normalization RMSNorm \
    --adam-beta2 0.98 \
    --log-interval 10 \
    --save-interval 1000 \
    --eval-interval 1000 \
    --eval-iters 16 \
    --bf16 \
    --spec megatron.core.models.hybrid.hybrid_layer_specs hybrid_stack_spec \
    --tensorboard-dir ./tensorboard
