"""Cost of the teacher side in causal-LM distillation, side by side in one process: KD (frozen teacher), PESF-KD
with LoRA on every teacher block and on the last blocks only, and FT-KD (whole teacher fine-tuned online).

Models are built from configs with random weights (no download), so the figures are costs, not accuracies. For each
method, on the same batches::

    python tools/lm_benchmark.py                                   # the offline configs' shapes (CPU)
    python tools/lm_benchmark.py --teacher_shape Qwen2.5-1.5B --student_shape Qwen2.5-0.5B --seq 512 --batch 8 \\
        --device cuda --amp bf16                                   # the real shapes (pesf_ext.lm.memory.SHAPES)
    python tools/lm_benchmark.py --memory --batch 4 --seq 512   # bytes at the real shapes, counted: no model built

prints seconds per step, tokens/s, the activations autograd saves for backward (MiB; the tensors held between
forward and backward, weights excluded), the teacher's trainable parameters and their training state (gradients and
AdamW's two moments, fp32: 12 bytes per parameter), the CUDA allocator's peak on a GPU, and each ratio to KD.
"""
import argparse
import contextlib
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.lm import memory  # noqa: E402
from pesf_ext.lm.lora import LoRATeacher  # noqa: E402
from pesf_ext.losses.divergences import TokenKDLoss  # noqa: E402

METHODS = ('kd', 'pesfkd_lora_all', 'pesfkd_lora_last', 'ftkd')


def get_args(argv=None):
    parser = argparse.ArgumentParser(description='Teacher-side cost of KD, PESF-KD (LoRA) and FT-KD on causal LMs')
    parser.add_argument('--arch', choices=('gpt2', 'qwen2', 'llama'), default='gpt2')
    parser.add_argument('--teacher_layers', type=int, default=4)
    parser.add_argument('--student_layers', type=int, default=2)
    parser.add_argument('--hidden', type=int, default=256, help='teacher hidden size')
    parser.add_argument('--student_hidden', type=int, default=128)
    parser.add_argument('--vocab', type=int, default=1024)
    parser.add_argument('--seq', type=int, default=128, help='tokens per sequence')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--steps', type=int, default=5, help='timed steps per method (after one warm-up step)')
    parser.add_argument('--lora_r', type=int, default=16)
    parser.add_argument('--last_layers', type=int, default=1, help='blocks adapted by pesfkd_lora_last')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', choices=('bf16',), help='autocast the forward passes')
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS))
    parser.add_argument('--record', metavar='JSON', help='also write the set-up, the machine and the figures here')
    parser.add_argument('--from_record', metavar='JSON', help='measure nothing: print the table of a --record file')
    parser.add_argument('--markdown', action='store_true', help='print a Markdown table (as in the README)')
    parser.add_argument('--teacher_shape', choices=sorted(memory.SHAPES),
                        help='a real model\'s shape (replaces --arch, --teacher_layers, --hidden, --vocab)')
    parser.add_argument('--student_shape', choices=sorted(memory.SHAPES),
                        help='a real model\'s shape (replaces --student_layers, --student_hidden)')
    parser.add_argument('--memory', action='store_true', help='measure nothing: print the analytic memory table at '
                        'the real pairs\' shapes (--batch sequences x --seq tokens per GPU)')
    parser.add_argument('--chunk_tokens', type=int, default=256, help='--memory: tokens per chunk of the loss')
    return parser.parse_args(argv)


def shape_config(shape):
    """A transformers config of a :class:`pesf_ext.lm.memory.Shape` (Qwen2 when it has q/k/v biases, else Llama)."""
    from transformers import LlamaConfig, Qwen2Config
    cls = Qwen2Config if shape.qkv_bias else LlamaConfig
    return cls(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
               num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
               tie_word_embeddings=shape.tied)


def build(arch, layers, hidden, vocab, seq, seed, shape=None):
    """A random model: of ``shape`` (a real model's, :data:`pesf_ext.lm.memory.SHAPES`) when given; else of
    ``arch`` with ``hidden // 64`` heads, a quarter as many key/value heads and a 4 x hidden MLP (a toy shape: Qwen2.5's
    MLP is about 5.8 x hidden, its heads 128 wide from 1.5B up)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config
    torch.manual_seed(seed)
    if shape is not None:
        return AutoModelForCausalLM.from_config(shape_config(memory.SHAPES[shape]))
    heads = max(hidden // 64, 2)
    if arch == 'gpt2':
        config = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=hidden, n_layer=layers, n_head=heads)
    else:
        cls = Qwen2Config if arch == 'qwen2' else LlamaConfig
        config = cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=max(heads // 4, 1), max_position_embeddings=seq,
                     tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config)


class SavedTensorMeter:
    """Bytes of the tensors autograd saves for backward (distinct storages, the given parameters' excluded)."""
    def __init__(self, parameters):
        self.skip = {p.untyped_storage().data_ptr() for p in parameters}
        self.seen, self.bytes = set(), 0

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.skip and key not in self.seen:
            self.seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def context(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def make_setup(method, args, teacher_base, student_base, device):
    teacher, student = copy.deepcopy(teacher_base), copy.deepcopy(student_base)
    update = {'kd': 'frozen', 'ftkd': 'full'}.get(method, 'adapters')
    if method == 'kd':
        teacher.requires_grad_(False).eval()
    elif method == 'ftkd':
        teacher.train()
    else:
        teacher = LoRATeacher(teacher, device, r=args.lora_r, lora_alpha=2 * args.lora_r,
                              last_layers=args.last_layers if method == 'pesfkd_lora_last' else None)
    teacher.to(device)
    student.to(device).train()
    params = [p for p in list(student.parameters()) + list(teacher.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = TokenKDLoss(alpha=0.5, beta=0.5, teacher_update=update)
    return teacher, student, optimizer, loss_fn


def step(teacher, student, optimizer, loss_fn, batch, amp, meter=None):
    ids = batch
    inputs = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    frozen = not any(p.requires_grad for p in teacher.parameters())
    with torch.autocast(ids.device.type, torch.bfloat16, enabled=amp == 'bf16'):
        with meter.context() if meter is not None else contextlib.nullcontext():
            with torch.no_grad() if frozen else torch.enable_grad():
                z_t = teacher(**inputs).logits
            z_s = student(**inputs).logits
            loss = loss_fn({'.': {'output': z_s}}, {'.': {'output': z_t}}, ids)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().item()


def measure(method, args, teacher_base, student_base, batches, device):
    teacher, student, optimizer, loss_fn = make_setup(method, args, teacher_base, student_base, device)
    meter = SavedTensorMeter(list(teacher.parameters()) + list(student.parameters()))
    step(teacher, student, optimizer, loss_fn, batches[0], args.amp, meter)  # warm-up; measures saved tensors
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for batch in batches[1:]:
        step(teacher, student, optimizer, loss_fn, batch, args.amp)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / max(len(batches) - 1, 1)
    trainable = sum(p.numel() for p in teacher.parameters() if p.requires_grad)
    result = {'method': method, 's_per_step': seconds, 'tokens_per_s': args.batch * args.seq / seconds,
              'saved_mib': meter.bytes / 2 ** 20, 'teacher_trainable': trainable,
              'teacher_state_mib': 12 * trainable / 2 ** 20,
              'cuda_peak_mib': torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None}
    del teacher, student, optimizer
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


def run(args):
    device = torch.device(args.device)
    teacher_base = build(args.arch, args.teacher_layers, args.hidden, args.vocab, args.seq, 0, args.teacher_shape)
    student_base = build(args.arch, args.student_layers, args.student_hidden, args.vocab, args.seq, 1,
                         args.student_shape)
    args.vocab = min(teacher_base.config.vocab_size, student_base.config.vocab_size)  # ids both output layers have
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
               for _ in range(args.steps + 1)]
    return [measure(method, args, teacher_base, student_base, batches, device) for method in args.methods]


def format_table(results, args):
    base = next((r for r in results if r['method'] == 'kd'), results[0])
    lines = [f'{args.arch}: teacher {args.teacher_layers} blocks x {args.hidden}, student {args.student_layers} x '
             f'{args.student_hidden}, vocab {args.vocab}, {args.batch} x {args.seq} tokens per step, {args.device}'
             f'{", " + args.amp if args.amp else ""}; ratios to {base["method"]}',
             f'{"method":<18}{"s/step":>9}{"x":>6}{"tokens/s":>10}{"saved MiB":>11}{"x":>6}'
             f'{"teacher trainable":>19}{"teacher state MiB":>19}' + (f'{"CUDA peak MiB":>15}{"x":>6}'
                                                                       if base['cuda_peak_mib'] else '')]
    for r in results:
        line = (f'{r["method"]:<18}{r["s_per_step"]:>9.4f}{r["s_per_step"] / base["s_per_step"]:>6.2f}'
                f'{r["tokens_per_s"]:>10,.0f}{r["saved_mib"]:>11.1f}{r["saved_mib"] / max(base["saved_mib"], 1e-9):>6.2f}'
                f'{r["teacher_trainable"]:>19,}{r["teacher_state_mib"]:>19.1f}')
        if base['cuda_peak_mib']:
            line += f'{r["cuda_peak_mib"]:>15,.0f}{r["cuda_peak_mib"] / base["cuda_peak_mib"]:>6.2f}'
        lines.append(line)
    return '\n'.join(lines)


SETUP_KEYS = ('arch', 'teacher_layers', 'student_layers', 'hidden', 'student_hidden', 'vocab', 'seq', 'batch', 'steps',
              'lora_r', 'last_layers', 'device', 'amp')
NAMES = {'kd': 'KD (frozen teacher)', 'pesfkd_lora_last': 'PESF-KD, LoRA on the last {blocks}',
         'pesfkd_lora_all': 'PESF-KD, LoRA on every block', 'ftkd': 'FT-KD (whole teacher trained)'}


def markdown_table(results, args, machine):
    """The README's cost table: every figure with its ratio to KD, and the set-up and machine under it."""
    base = next((r for r in results if r['method'] == 'kd'), results[0])
    cuda = bool(base['cuda_peak_mib'])
    blocks = 'block' if args.last_layers == 1 else f'{args.last_layers} blocks'
    lines = ['| method | tokens/s | × KD | saved activations (MiB) | × KD | teacher trainable parameters | '
             'teacher training state (MiB) |' + (' CUDA peak (MiB) | × KD |' if cuda else ''),
             '|' + '---|' * (9 if cuda else 7)]
    for r in results:
        line = (f'| {NAMES[r["method"]].format(blocks=blocks)} | {r["tokens_per_s"]:,.0f} | '
                f'{r["tokens_per_s"] / base["tokens_per_s"]:.2f} | {r["saved_mib"]:.1f} | '
                f'{r["saved_mib"] / max(base["saved_mib"], 1e-9):.2f} | {r["teacher_trainable"]:,} | '
                f'{r["teacher_state_mib"]:.1f} |')
        if cuda:
            line += f' {r["cuda_peak_mib"]:,.0f} | {r["cuda_peak_mib"] / base["cuda_peak_mib"]:.2f} |'
        lines.append(line)
    lines.append('')
    lines.append(f'{args.arch}-shaped models from configs: teacher {args.teacher_layers} blocks × {args.hidden}, '
                 f'student {args.student_layers} × {args.student_hidden}, vocabulary {args.vocab:,}, '
                 f'{args.batch} × {args.seq} '
                 f'tokens per step, LoRA r = {args.lora_r}, mean of {args.steps} steps after a warm-up; {machine}'
                 f'{", " + args.amp + " autocast" if args.amp else ""}. Saved activations: what autograd keeps for '
                 'backward (weights excluded); training state: gradients and AdamW moments in fp32.')
    return '\n'.join(lines)


def machine_text(device):
    if str(device).startswith('cuda'):
        return torch.cuda.get_device_name(device)
    from pesf_ext.engine.runner import cpu_model
    return f'{cpu_model()}, {torch.get_num_threads()} threads'


def main(argv=None):
    args = get_args(argv)
    if args.memory:
        table = memory.memory_table(batch=args.batch, seq=args.seq, r=args.lora_r, chunk_tokens=args.chunk_tokens)
        print(table)
        return table
    if args.from_record:
        with open(args.from_record) as f:
            record = json.load(f)
        args = argparse.Namespace(**{**vars(args), **record['setup']})
        results, machine = record['results'], record['machine']
    else:
        results, machine = run(args), machine_text(args.device)
        if args.record:
            with open(args.record, 'w') as f:
                json.dump({'setup': {key: getattr(args, key) for key in SETUP_KEYS}, 'machine': machine,
                           'results': results}, f, indent=2)
    print(markdown_table(results, args, machine) if args.markdown else format_table(results, args))
    return results


if __name__ == '__main__':
    main()
