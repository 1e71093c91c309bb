# a small character-level model on shakespeare_char, in the style of nanoGPT's config/ files

out_dir = "out-small-char"
eval_interval = 250
eval_iters = 20
log_interval = 10

always_save_checkpoint = False

wandb_log = False
wandb_project = "small-char"
wandb_run_name = "mini"

dataset = "shakespeare_char"
gradient_accumulation_steps = 4
batch_size = 32
block_size = 128

n_layer = 4
n_head = 4
n_embd = 256
dropout = 0.1

learning_rate = 2e-3
max_iters = 3000
lr_decay_iters = 3000
min_lr = 2e-4
beta2 = 0.98

warmup_iters = 50
compile = False
