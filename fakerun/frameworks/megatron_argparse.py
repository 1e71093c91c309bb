"""The argparse parsers of 2021-22 Megatron-LM and of Megatron-DeepSpeed, as far as their usage message and
unknown arguments go: what every rank prints when torch.distributed.launch passes `--local-rank=N`, which
their `--local_rank` does not match (deepspeedai/Megatron-DeepSpeed#178), before exiting with code 2."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence

from fakerun.frameworks import pytrace

__all__ = ["LEGACY_MEGATRON", "MEGATRON_DEEPSPEED", "refusal"]

# Each parser's options in the order parse_args adds them (dumped from the sources with their add_argument
# calls run): `--name`, then `!` for a flag, `*`/`+` for nargs, `@dest` where the dest differs from the
# name, `=a,b` for its choices as str() shows them (`=P.{a,b}` for P.a,P.b).
# Megatron-LM v2.6 (August 2021) megatron/arguments.py.
_LEGACY_MEGATRON = """
--num-layers --hidden-size --ffn-hidden-size --num-attention-heads --kv-channels
--max-position-embeddings --make-vocab-size-divisible-by --layernorm-epsilon
--apply-residual-connection-post-layernorm! --openai-gelu! --onnx-safe
--bert-no-binary-head!@bert_binary_head --attention-dropout --hidden-dropout --weight-decay --clip-grad
--adam-beta1 --adam-beta2 --adam-eps --sgd-momentum --micro-batch-size --batch-size --global-batch-size
--rampup-batch-size* --checkpoint-activations! --distribute-checkpointed-activations!
--activations-checkpoint-method=uniform,block --activations-checkpoint-num-layers --train-iters
--train-samples --log-interval --exit-interval --exit-duration-in-mins --tensorboard-dir
--no-masked-softmax-fusion!@masked_softmax_fusion --no-bias-gelu-fusion!@bias_gelu_fusion
--no-bias-dropout-fusion!@bias_dropout_fusion --optimizer=adam,sgd --dataloader-type=single,cyclic
--seed --init-method-std --init-method-xavier-uniform! --lr --lr-decay-style=constant,linear,cosine
--lr-decay-iters --lr-decay-samples --lr-warmup-fraction --lr-warmup-iters --lr-warmup-samples --warmup
--min-lr --override-lr-scheduler! --use-checkpoint-lr-scheduler! --save --save-interval --no-save-optim!
--no-save-rng! --load --no-load-optim! --no-load-rng! --finetune! --fp16! --bf16! --loss-scale
--initial-loss-scale --min-loss-scale --loss-scale-window --hysteresis --fp32-residual-connection!
--no-query-key-layer-scaling!@apply_query_key_layer_scaling --attention-softmax-in-fp32!
--accumulate-allreduce-grads-in-fp32! --fp16-lm-cross-entropy! --tensor-model-parallel-size
--pipeline-model-parallel-size --model-parallel-size --num-layers-per-virtual-pipeline-stage
--distributed-backend=nccl,gloo --DDP-impl=local,torch
--no-contiguous-buffers-in-local-ddp!@use_contiguous_buffers_in_local_ddp
--no-scatter-gather-tensors-in-pipeline!@scatter_gather_tensors_in_pipeline --local_rank --lazy-mpu-init
--use-cpu-initialization! --empty-unused-memory-level=0,1,2 --eval-iters --eval-interval --data-path*
--split --vocab-file --merge-file --vocab-extra-ids --seq-length --encoder-seq-length
--decoder-seq-length --retriever-seq-length --sample-rate --mask-prob --short-seq-prob --mmap-warmup!
--num-workers --tokenizer-type=BertWordPieceLowerCase,BertWordPieceCase,GPT2BPETokenizer
--data-impl=lazy,cached,mmap,infer --reset-position-ids! --reset-attention-mask! --eod-mask-loss!
--adlr-autoresume! --adlr-autoresume-interval --ict-head-size --biencoder-projection-dim
--biencoder-shared-query-context-model! --ict-load --bert-load --titles-data-path --query-in-block-prob
--use-one-sent-docs! --evidence-data-path --retriever-report-topk-accuracies+ --retriever-score-scaling!
--block-data-path --embedding-path --indexer-batch-size --indexer-log-interval --num-classes --img-dim
--num-channels --patch-dim --log-params-norm! --log-num-zeros-in-grad! --tensorboard-log-interval
--tensorboard-queue-size --log-timers-to-tensorboard! --log-batch-size-to-tensorboard!
--no-log-learnig-rate-to-tensorboard!@log_learning_rate_to_tensorboard
--no-log-loss-scale-to-tensorboard!@log_loss_scale_to_tensorboard --log-validation-ppl-to-tensorboard!
--log-memory-to-tensorboard!
"""

# bigscience-workshop/Megatron-DeepSpeed megatron/arguments.py, then deepspeed.add_config_arguments
# (DeepSpeed's four, none hidden from the usage).
_MEGATRON_DEEPSPEED = """
--num-layers --hidden-size --ffn-hidden-size --num-attention-heads --kv-channels
--max-position-embeddings --make-vocab-size-divisible-by --pad-vocab-size-to --layernorm-epsilon
--sync-tp-duplicated-parameters! --apply-residual-connection-post-layernorm! --embed-layernorm!
--openai-gelu! --onnx-safe --bert-no-binary-head!@bert_binary_head
--position-embedding-type=PositionEmbeddingType.{rotary,absolute,alibi}
--glu-activation=geglu,liglu,reglu,swiglu --kill-switch-path
--log-level=debug,info,warning,error,critical --log-level-replica=debug,info,warning,error,critical
--attention-dropout --hidden-dropout --weight-decay --clip-grad --adam-beta1 --adam-beta2 --adam-eps
--sgd-momentum --micro-batch-size --batch-size --global-batch-size --rampup-batch-size*
--checkpoint-activations! --distribute-checkpointed-activations! --checkpoint-num-layers --train-iters
--train-samples --train-tokens --log-interval --exit-interval --exit-duration-in-mins --tensorboard-dir
--no-masked-softmax-fusion!@masked_softmax_fusion --no-bias-gelu-fusion!@bias_gelu_fusion
--no-bias-dropout-fusion!@bias_dropout_fusion --optimizer=adam,sgd --use-bnb-optimizer!
--dataloader-type=single,cyclic --cpu-optimizer! --cpu_torch_adam! --codecarbon-dir --eval-only
--skip-train-iteration-range+ --inference! --abort-on-unmet-fused-kernel-constraints!
--pp-partition-method --seed --init-method-std --init-method-xavier-uniform! --lr
--lr-decay-style=constant,linear,cosine --lr-decay-iters --lr-decay-samples --lr-decay-tokens
--lr-warmup-fraction --lr-warmup-iters --lr-warmup-samples --warmup --min-lr --override-lr-scheduler!
--use-checkpoint-lr-scheduler! --universal-checkpoint! --save --save-interval --no-save-optim!
--no-save-rng! --load --no-load-optim! --no-load-rng! --finetune! --fp16! --bf16! --loss-scale
--initial-loss-scale --min-loss-scale --loss-scale-window --hysteresis --fp32-residual-connection!
--no-query-key-layer-scaling!@apply_query_key_layer_scaling --attention-softmax-in-fp32!
--accumulate-allreduce-grads-in-fp32! --fp16-lm-cross-entropy! --tensor-model-parallel-size
--pipeline-model-parallel-size --model-parallel-size --num-layers-per-virtual-pipeline-stage
--distributed-backend=nccl,gloo --DDP-impl=local,torch --use-contiguous-buffers-in-ddp!
--no-scatter-gather-tensors-in-pipeline!@scatter_gather_tensors_in_pipeline --local_rank --lazy-mpu-init
--use-cpu-initialization! --eval-iters --eval-interval --data-path* --split
--train-weighted-split-paths* --valid-weighted-split-paths* --test-weighted-split-paths*
--train-weighted-split-paths-path --valid-weighted-split-paths-path --test-weighted-split-paths-path
--log-path --vocab-file --merge-file --vocab-extra-ids --seq-length --encoder-seq-length
--decoder-seq-length --retriever-seq-length --sample-rate --mask-prob --short-seq-prob --mmap-warmup!
--num-workers --valid-num-workers
--tokenizer-type=BertWordPieceLowerCase,BertWordPieceCase,GPT2BPETokenizer,PretrainedFromHF
--tokenizer-name-or-path --data-impl=lazy,cached,mmap,infer --reset-position-ids!
--reset-attention-mask! --eod-mask-loss! --loss-on-targets-only!
--reweight-loss-based-on-position-frequency! --noise-density --mean-noise-span-length --adlr-autoresume!
--adlr-autoresume-interval --ict-head-size --biencoder-projection-dim
--biencoder-shared-query-context-model! --ict-load --bert-load --titles-data-path --query-in-block-prob
--use-one-sent-docs! --evidence-data-path --retriever-report-topk-accuracies+ --retriever-score-scaling!
--block-data-path --embedding-path --indexer-batch-size --indexer-log-interval --num-classes --img-dim
--num-channels --patch-dim --log-params-norm! --log-num-zeros-in-grad! --tensorboard-log-interval
--tensorboard-queue-size --log-timers-to-tensorboard! --log-batch-size-to-tensorboard!
--no-log-learnig-rate-to-tensorboard!@log_learning_rate_to_tensorboard
--no-log-loss-scale-to-tensorboard!@log_loss_scale_to_tensorboard --log-validation-ppl-to-tensorboard!
--zero-stage --zero-reduce-scatter! --zero-contigious-gradients! --zero-reduce-bucket-size
--zero-allgather-bucket-size --remote-device=none,cpu,nvme --use-pin-memory! --scattered-embeddings!
--split-transformers! --memory-centric-tiled-linear! --tile-factor --deepspeed-activation-checkpointing!
--partition-activations! --contigious-checkpointing! --checkpoint-in-cpu! --synchronize-each-layer!
--profile-backward! --deepspeed! --deepspeed_config --deepscale! --deepscale_config
"""
LEGACY_MEGATRON = tuple(_LEGACY_MEGATRON.split())
MEGATRON_DEEPSPEED = tuple(_MEGATRON_DEEPSPEED.split())


class _Refused(Exception):
    """argparse's error() called: the message it would print after the usage."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose error() raises instead of printing and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Refused(message)


def _parser(prog: str, words: Sequence[str], width: int) -> _Parser:
    """The parser of these option words; choices become the metavar argparse would show (no checks)."""

    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.HelpFormatter(prog, width=width)

    parser = _Parser(
        prog=prog, description="Megatron-LM Arguments", allow_abbrev=False, formatter_class=formatter
    )
    for word in words:
        word, _, choices = word.partition("=")
        word, _, dest = word.partition("@")
        name = word.rstrip("!*+")
        kw: dict[str, object] = {"dest": dest or name.lstrip("-").replace("-", "_")}
        if word.endswith("!"):
            kw["action"] = "store_true"
        else:
            if word[-1] in "*+":
                kw["nargs"] = word[-1]
            if choices:
                prefix, _, items = choices.rstrip("}").rpartition("{")
                kw["metavar"] = "{" + ",".join(prefix + item for item in items.split(",")) + "}"
        parser.add_argument(name, **kw)  # type: ignore[arg-type]
    return parser


def refusal(script: str, args: Sequence[str], words: Sequence[str]) -> str | None:
    """What a rank prints on stderr when parse_args refuses `--local-rank=N` + the script's arguments (the
    local rank as pytrace.LOCAL_RANK_SLOT), None if it accepts them. The usage is wrapped to the terminal's
    width less 2, as HelpFormatter does (COLUMNS, else the launcher's terminal, else 80)."""
    prog = os.path.basename(script)
    width = shutil.get_terminal_size().columns - 2
    parser = _parser(prog, words, width)
    try:
        parser.parse_args(["--local-rank=0", *args])
    except _Refused as exc:
        message = str(exc).replace("--local-rank=0", f"--local-rank={pytrace.LOCAL_RANK_SLOT}")
        return f"{parser.format_usage()}{prog}: error: {message}\n"
    return None
