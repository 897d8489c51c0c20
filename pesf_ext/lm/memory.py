"""Analytic training memory of causal-LM distillation (KD, PESF-KD, FT-KD) at the real models' shapes, in bytes.

Nothing is allocated: every figure is counted from a model's ``config.json`` values (:data:`SHAPES`), so it does not
depend on the machine. ``python tools/lm_benchmark.py --memory --markdown`` prints the table of docs/causal_lm.md.

Dtype policy (what the causal-LM runner does under ``speed.amp: 'bf16'``):

- a trained model (the student; the teacher in FT-KD) keeps fp32 weights, fp32 gradients and AdamW's two fp32
  moments (16 bytes per parameter); autocast saves a bf16 copy of each weight it multiplies for backward (2 more);
- a frozen teacher (KD) and the base of a LoRA teacher are held in bf16 (2 bytes per parameter);
- LoRA adapters are fp32 with their own gradients and moments (16 + 2 bytes per adapter parameter, as above).

Saved activations per token of one transformer block (Llama/Qwen2 in Hugging Face's code, bf16 autocast, SDPA with
native grouped-query attention, no dropout), counted tensor by tensor in the manner of Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", section 4.1 (their per-layer
``s·b·h·(34 + 5·a·s/h)`` is a GPT-3 block with 4h MLP, dropout masks and materialised attention scores; here the MLP
is SwiGLU of width I, attention is fused, RMSNorm upcasts to fp32), with h hidden, I intermediate, n_q = heads x
head_dim, n_kv = kv heads x head_dim, a heads, r the LoRA rank:

- trained block (fp32 weights, fp32 residual stream): ``26h + 4 n_q + 4 n_kv + 8I + 4a + 8`` bytes
  (two RMSNorms 2(8h + 4); bf16 casts of the normed input for q, k, v 6h and gate, up 4h; SDPA's q, k, v, output and
  fp32 log-sum-exp 4 n_q + 4 n_kv + 4a; SiLU input, SiLU output, up output and their product 8I);
- LoRA block (bf16 base, PEFT adapters on q, k, v, o, gate, up, down): ``18h + 6 n_q + 4 n_kv + 8I + 4a + 14r + 8``
  (the frozen linears save nothing; each adapter saves its own bf16 copy of the input and its rank-r output;
  the norms save the fp32 upcast and the rsqrt);
- with gradient checkpointing a block keeps its input (fp32 4h trained, bf16 2h on a LoRA base) and one block's
  full activations exist at a time in backward.

Tests (tests/test_lm_benchmark.py) check these counts against ``saved_tensors_hooks`` on tiny models, the parameter
counts against ``sum(p.numel())`` of built models, and the LoRA counts against PEFT.
"""
import dataclasses

GB = 1e9
GPU_BYTES = 80 * GB
RESERVE = 0.10  # CUDA context, allocator fragmentation and temporaries: a plan must leave 10% of the GPU free
TRAINED_BYTES, BF16_COPY, BF16 = 16, 2, 2


@dataclasses.dataclass(frozen=True)
class Shape:
    """A decoder-only LM's shape (``config.json`` names in the comments). ``vocab`` is the output layer's rows
    (``vocab_size``), ``tokenizer`` the tokenizer's ids (``len(tokenizer)``); rows past it are padding."""
    name: str
    hidden: int          # hidden_size
    intermediate: int    # intermediate_size
    layers: int          # num_hidden_layers
    heads: int           # num_attention_heads
    kv_heads: int        # num_key_value_heads
    vocab: int           # vocab_size
    tokenizer: int
    tied: bool           # tie_word_embeddings
    qkv_bias: bool       # Qwen2: q/k/v projections have biases; Llama: none

    @property
    def head_dim(self):
        return self.hidden // self.heads


# From the models' config.json on the Hugging Face hub, as transcribed in torchtune's model builders
# (torchtune/models/qwen2_5/_model_builders.py qwen2_5_0_5b / qwen2_5_1_5b_instruct / qwen2_5_7b_instruct,
# torchtune/models/llama3_1/_model_builders.py llama3_1_8b, torchtune/models/llama3_2/_model_builders.py llama3_2_1b,
# whose component builder ties the embeddings), and the Qwen2.5-7B-Instruct config.json ("tie_word_embeddings": false,
# "vocab_size": 152064). Tokenizer sizes: Qwen2.5's tokenizer has 151,665 ids (151,643 BPE + 22 special), Llama 3's
# 128,256 (128,000 + 256 special).
SHAPES = {s.name: s for s in (
    Shape('Qwen2.5-0.5B', 896, 4864, 24, 14, 2, 151936, 151665, True, True),
    Shape('Qwen2.5-1.5B', 1536, 8960, 28, 12, 2, 151936, 151665, True, True),
    Shape('Qwen2.5-7B', 3584, 18944, 28, 28, 4, 152064, 151665, False, True),
    Shape('Llama-3.2-1B', 2048, 8192, 16, 32, 8, 128256, 128256, True, False),
    Shape('Llama-3.1-8B', 4096, 14336, 32, 32, 8, 128256, 128256, False, False),
)}
PAIRS = (('Qwen2.5-1.5B', 'Qwen2.5-0.5B'), ('Qwen2.5-7B', 'Qwen2.5-0.5B'), ('Llama-3.1-8B', 'Llama-3.2-1B'))


def linear_shapes(s):
    """(in, out) of the seven linear layers of a block: q, k, v, o, gate, up, down."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return [(s.hidden, q), (s.hidden, kv), (s.hidden, kv), (q, s.hidden), (s.hidden, s.intermediate),
            (s.hidden, s.intermediate), (s.intermediate, s.hidden)]


def block_parameters(s):
    """Weights of one block: the seven linears, q/k/v biases (Qwen2), two RMSNorm weights."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return sum(i * o for i, o in linear_shapes(s)) + (q + 2 * kv if s.qkv_bias else 0) + 2 * s.hidden


def parameters(s):
    """``sum(p.numel())`` of the model: embeddings, blocks, final norm, and the output layer unless tied."""
    return s.vocab * s.hidden * (1 if s.tied else 2) + s.layers * block_parameters(s) + s.hidden


def lora_parameters(s, r, blocks=None):
    """LoRA weights (A: r x in, B: out x r) on every linear of ``blocks`` blocks (None: all)."""
    return (s.layers if blocks is None else blocks) * r * sum(i + o for i, o in linear_shapes(s))


def trained_block_bytes(s):
    """Saved bytes per token of a trained block (fp32 weights, bf16 autocast); see the module docstring."""
    h, q, kv = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    return 26 * h + 4 * q + 4 * kv + 8 * s.intermediate + 4 * s.heads + 8


def lora_block_bytes(s, r):
    """Saved bytes per token of a LoRA-adapted block (bf16 base, fp32 adapters, bf16 autocast)."""
    h, q, kv = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    return 18 * h + 6 * q + 4 * kv + 8 * s.intermediate + 4 * s.heads + 14 * r + 8


def activation_bytes(s, tokens, role, checkpointing=False, r=16, blocks=None):
    """Saved activations of one model over ``tokens`` tokens. ``role``: 'trained' (every block, plus the final
    norm 8h + 4 and the output layer's bf16 input 2h and the token ids 8 per token), 'lora' (``blocks`` adapted
    blocks, the last ones, plus the final norm's 4h + 4), 'frozen' (nothing: the forward runs under no_grad)."""
    if role == 'frozen':
        return 0
    if role == 'trained':
        block, kept, n, outside = trained_block_bytes(s), 4 * s.hidden, s.layers, 10 * s.hidden + 12
    else:
        block, kept, n = lora_block_bytes(s, r), 2 * s.hidden, s.layers if blocks is None else blocks
        outside = 4 * s.hidden + 4
    per_token = (n * kept + block if checkpointing else n * block) + outside
    return per_token * tokens


def state_bytes(s, role, r=16, blocks=None):
    """Weights, gradients, AdamW moments and autocast's bf16 weight copies of one model (the dtype policy)."""
    if role == 'trained':
        return (TRAINED_BYTES + BF16_COPY) * parameters(s)
    lora = (TRAINED_BYTES + BF16_COPY) * lora_parameters(s, r, blocks) if role == 'lora' else 0
    return BF16 * parameters(s) + lora


# Loss path: the bf16 logits of each model (2 bytes per row and token) and their fp32 copies for the loss (4), plus
# what TokenKDLoss saves for backward: 3 fp32 [tokens, V] tensors with a frozen teacher (the student's shifted
# logits, log-probabilities, the teacher's probabilities), 6 when the teacher learns too (the teacher's as well).
LOSS_SAVED = {'frozen': 12, 'lora': 24, 'trained': 24}
LOGITS_BYTES = 2 + 4
# Chunked (speed.loss_chunk_tokens): no fp32 copy of the whole logits (the runner leaves them bf16), and the loss
# keeps only the gradient of each side that learns, one bf16 [tokens, V] tensor (computed chunk by chunk in the
# forward), plus the working set of one chunk: at most 9 fp32 [chunk, V] tensors with a frozen teacher, 13 when the
# teacher learns (measured with pesf_ext.losses.memory.loss_memory: 34.3 and 48.3 bytes per chunk token and row;
# tests/test_lm_benchmark.py checks both).
LEARNING_SIDES = {'frozen': 1, 'lora': 2, 'trained': 2}
CHUNK_WORKING = {'frozen': 9 * 4, 'lora': 13 * 4, 'trained': 13 * 4}


def loss_bytes(vocab, tokens, teacher_role, chunk_tokens=None):
    """Bytes of the loss path at ``vocab`` output rows. Whole (``chunk_tokens`` None): both models' bf16 logits and
    their fp32 copies for every token, and the loss's saved tensors for every token. Chunked: both models' bf16
    logits, the bf16 gradient of each learning side, and one chunk's fp32 working set."""
    if chunk_tokens is None:
        return (2 * LOGITS_BYTES + LOSS_SAVED[teacher_role]) * vocab * tokens
    return (2 * BF16 + BF16 * LEARNING_SIDES[teacher_role]) * vocab * tokens + \
        CHUNK_WORKING[teacher_role] * vocab * min(chunk_tokens, tokens)


METHODS = {'kd': ('KD', 'frozen', None), 'pesfkd': ('PESF-KD, LoRA on every block', 'lora', None),
           'pesfkd_last2': ('PESF-KD, LoRA on the last 2 blocks', 'lora', 2),
           'ftkd': ('FT-KD', 'trained', None)}


def method_memory(teacher, student, method, tokens, r=16, chunk_tokens=256, world=8):
    """Bytes of one method (``METHODS`` key) on one GPU, ``tokens`` tokens per GPU: a dict with the trained
    parameters, the model states, activations without/with gradient checkpointing, the loss path without/with
    chunking, the one-GPU totals (plain; checkpointing and chunking) and the per-GPU total under FSDP over
    ``world`` GPUs (states sharded, checkpointing and chunking on)."""
    _, role, blocks = METHODS[method]
    vocab = max(teacher.vocab, student.vocab)
    states = state_bytes(student, 'trained') + state_bytes(teacher, role, r, blocks)
    trained = parameters(student) + {'frozen': 0, 'lora': lora_parameters(teacher, r, blocks),
                                     'trained': parameters(teacher)}[role]
    act = {ckpt: activation_bytes(student, tokens, 'trained', ckpt) + activation_bytes(teacher, tokens, role, ckpt, r,
                                                                                      blocks)
           for ckpt in (False, True)}
    loss = {chunk: loss_bytes(vocab, tokens, role, chunk) for chunk in (None, chunk_tokens)}
    lean = act[True] + loss[chunk_tokens]
    return {'trained_parameters': trained, 'states': states, 'activations': act[False],
            'activations_checkpointed': act[True], 'loss': loss[None], 'loss_chunked': loss[chunk_tokens],
            'one_gpu': states + act[False] + loss[None], 'one_gpu_lean': states + lean,
            'fsdp_per_gpu': states / world + lean}


def verdict(memory, capacity=GPU_BYTES, world=8):
    usable = capacity * (1 - RESERVE)
    if memory['one_gpu'] <= usable:
        return 'one GPU'
    if memory['one_gpu_lean'] <= usable:
        return 'one GPU, checkpointing + chunks'
    return f'FSDP over {world}' if memory['fsdp_per_gpu'] <= usable else f'no (not even FSDP over {world})'


def memory_table(batch=4, seq=512, r=16, chunk_tokens=256, world=8):
    """The Markdown table of docs/causal_lm.md: one row per pair and method, GB = 1e9 bytes."""
    tokens = batch * seq
    lines = ['| teacher → student | method | trained parameters | model states | activations (plain / '
             'checkpointed) | loss path (whole / chunked) | one GPU (plain / lean) | FSDP ×8, per GPU | fits 80 GB |',
             '|---|---|---|---|---|---|---|---|---|']
    for teacher_name, student_name in PAIRS:
        teacher, student = SHAPES[teacher_name], SHAPES[student_name]
        for method, (title, _, _) in METHODS.items():
            m = method_memory(teacher, student, method, tokens, r, chunk_tokens, world)
            lines.append(f'| {teacher_name} → {student_name} | {title} | {m["trained_parameters"] / 1e9:.2f} B | '
                         f'{m["states"] / GB:.1f} | {m["activations"] / GB:.1f} / '
                         f'{m["activations_checkpointed"] / GB:.1f} | {m["loss"] / GB:.1f} / '
                         f'{m["loss_chunked"] / GB:.1f} | {m["one_gpu"] / GB:.1f} / {m["one_gpu_lean"] / GB:.1f} | '
                         f'{m["fsdp_per_gpu"] / GB:.1f} | {verdict(m, world=world)} |')
    lines += ['', f'GB = 10^9 bytes, per GPU, {batch} sequences × {seq} tokens per GPU, LoRA r = {r}, chunks of '
              f'{chunk_tokens} tokens; "lean" = gradient checkpointing on the trained models and the loss over '
              f'chunks; FSDP ×{world} shards the model states over {world} GPUs and keeps the lean activations; '
              f'"fits" leaves {RESERVE:.0%} of 80 GB free for the CUDA context, fragmentation and temporaries.']
    return '\n'.join(lines)


__all__ = ['SHAPES', 'PAIRS', 'Shape', 'parameters', 'lora_parameters', 'trained_block_bytes', 'lora_block_bytes',
           'activation_bytes', 'state_bytes', 'loss_bytes', 'method_memory', 'memory_table']
