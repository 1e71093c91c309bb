# GPT-2 medium-sized model from scratch on openwebtext, 8 GPUs
wandb_log = False
wandb_run_name = "gpt2-350M"

# 8 batch size * 1024 block size * 8 gradaccum * 8 GPUs = 524,288 tokens
batch_size = 8
block_size = 1024
gradient_accumulation_steps = 8 * 8

n_layer = 24
n_head = 16
n_embd = 1024
bias = True

max_iters = 400000
lr_decay_iters = 400000
learning_rate = 3e-4
min_lr = 3e-5
eval_interval = 1000
eval_iters = 100
log_interval = 20
weight_decay = 1e-1
dtype = "float16"
