"""tools/lm_benchmark.py measures what it says: the activations autograd keeps and the teacher's training state
order as PESF-KD's cost argument predicts (frozen teacher < LoRA on the last blocks < LoRA everywhere <= FT-KD).
Counts of bytes, not timings: the same on every machine."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
pytest.importorskip('transformers')
pytest.importorskip('peft', reason='peft is not installed (pip install -e ".[lm]")')

import lm_benchmark  # noqa: E402


@pytest.mark.parametrize('arch', ['gpt2', 'llama'])
def test_teacher_side_costs_are_ordered(arch, capsys):
    results = {r['method']: r for r in lm_benchmark.main([
        '--arch', arch, '--teacher_layers', '4', '--student_layers', '1', '--hidden', '64', '--student_hidden', '32',
        '--vocab', '128', '--seq', '16', '--batch', '2', '--steps', '1', '--lora_r', '4', '--last_layers', '1',
        '--device', 'cpu'])}
    saved = {m: r['saved_mib'] for m, r in results.items()}
    assert saved['kd'] < saved['pesfkd_lora_last'] < saved['pesfkd_lora_all'] <= saved['ftkd']
    state = {m: r['teacher_trainable'] for m, r in results.items()}
    assert state['kd'] == 0 < state['pesfkd_lora_last'] < state['pesfkd_lora_all'] < state['ftkd'] / 5
    assert all(r['s_per_step'] > 0 for r in results.values())
    table = capsys.readouterr().out
    assert 'ratios to kd' in table and table.count('\n') >= 5


def test_record_round_trip_gives_the_same_markdown_table(tmp_path, capsys):
    """--record keeps what was measured; --from_record prints the README's table from it without measuring."""
    record = tmp_path / 'bench.json'
    argv = ['--teacher_layers', '2', '--student_layers', '1', '--hidden', '32', '--student_hidden', '16', '--vocab',
            '64', '--seq', '8', '--batch', '2', '--steps', '1', '--lora_r', '2', '--last_layers', '1',
            '--device', 'cpu', '--markdown']
    measured = lm_benchmark.main(argv + ['--record', str(record)])
    first = capsys.readouterr().out
    assert lm_benchmark.main(['--from_record', str(record), '--markdown']) == measured
    again = capsys.readouterr().out
    assert again == first
    rows = [line for line in first.splitlines() if line.startswith('| ')]
    assert len(rows) == 1 + len(lm_benchmark.METHODS)
    kd_row = next(row for row in rows if row.startswith('| KD'))
    assert kd_row.split(' | ')[2] == '1.00' and kd_row.split(' | ')[4] == '1.00'  # ratios to itself
    assert 'teacher 2 blocks × 32' in first and 'LoRA on the last block |' in first


# ---- the analytic memory table (pesf_ext.lm.memory) against built models and autograd's saved tensors ----

from pesf_ext.lm import memory  # noqa: E402

TINY = {  # the four relations of the real models: Qwen2 (q/k/v biases) tied and untied, Llama tied and untied
    'qwen_tied': memory.Shape('q', 32, 88, 2, 4, 2, 300, 280, True, True),
    'qwen_untied': memory.Shape('q7', 48, 136, 3, 4, 1, 320, 280, False, True),
    'llama_tied': memory.Shape('l1', 32, 64, 2, 4, 2, 256, 256, True, False),
    'llama_untied': memory.Shape('l8', 64, 176, 2, 4, 2, 256, 256, False, False),
}


def tiny_model(shape, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(lm_benchmark.shape_config(shape)).to(dtype).train()


@pytest.mark.parametrize('name', sorted(TINY))
def test_parameter_counts_match_the_built_models(name):
    shape = TINY[name]
    assert memory.parameters(shape) == sum(p.numel() for p in tiny_model(shape).parameters())


def test_real_shapes_give_the_published_sizes():
    """Qwen2.5 0.5B/1.5B/7B have 0.49/1.54/7.6 B parameters, Llama 3.2 1B 1.24 B, Llama 3.1 8B 8.03 B (model cards)."""
    sizes = {name: round(memory.parameters(shape) / 1e9, 2) for name, shape in memory.SHAPES.items()}
    assert sizes == {'Qwen2.5-0.5B': 0.49, 'Qwen2.5-1.5B': 1.54, 'Qwen2.5-7B': 7.62, 'Llama-3.2-1B': 1.24,
                     'Llama-3.1-8B': 8.03}
    assert memory.SHAPES['Qwen2.5-7B'].vocab > memory.SHAPES['Qwen2.5-0.5B'].vocab > \
        memory.SHAPES['Qwen2.5-0.5B'].tokenizer


@pytest.mark.parametrize('last_layers', [None, 1])
def test_lora_counts_match_the_lora_teacher(last_layers):
    from pesf_ext.lm.lora import LoRATeacher
    shape = TINY['qwen_untied']
    teacher = LoRATeacher(tiny_model(shape), 'cpu', r=4, lora_alpha=8, last_layers=last_layers)
    trainable = sum(p.numel() for p in teacher.parameters() if p.requires_grad)
    assert trainable == memory.lora_parameters(shape, 4, last_layers)


def saved_bytes(model, tokens=(2, 16)):
    """What autograd saves in one bf16-autocast forward (parameters' own storages excluded)."""
    meter = lm_benchmark.SavedTensorMeter(list(model.parameters()))
    ids = torch.randint(0, 200, tokens, generator=torch.Generator().manual_seed(0))
    with torch.autocast('cpu', torch.bfloat16), meter.context():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return meter.bytes


def weight_copies(model):
    """autocast's bf16 copies of the trained linear weights (2 bytes each), saved for backward once per step."""
    return 2 * sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and p.dim() == 2
                   and 'embed' not in n)


@pytest.mark.parametrize('name', ['qwen_untied', 'llama_untied'])
def test_trained_block_activations_match_saved_tensors(name):
    """One more trained block adds exactly trained_block_bytes per token (plus its weights' bf16 copies); the whole
    model is within 3% of activation_bytes (RoPE's per-position cos/sin tables are not counted); with gradient
    checkpointing a block keeps its fp32 input, 4h bytes per token."""
    import dataclasses
    shape, tokens = TINY[name], 32
    one, two = (tiny_model(dataclasses.replace(shape, layers=n)) for n in (1, 2))
    per_block = saved_bytes(two) - weight_copies(two) - (saved_bytes(one) - weight_copies(one))
    assert per_block == memory.trained_block_bytes(shape) * tokens
    whole = saved_bytes(two) - weight_copies(two)
    expected = memory.activation_bytes(dataclasses.replace(shape, layers=2), tokens, 'trained')
    assert abs(whole - expected) / expected < 0.03
    for model in (one, two):
        if hasattr(model, 'activation_checkpointing_enable'):  # transformers >= 5.x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={'use_reentrant': False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    kept = saved_bytes(two) - saved_bytes(one)
    assert kept == 4 * shape.hidden * tokens


def test_lora_block_activations_match_saved_tensors():
    """A bf16 base with fp32 PEFT adapters on all seven linears: one more adapted block adds lora_block_bytes per
    token plus the adapters' bf16 copies."""
    import dataclasses
    from peft import LoraConfig, get_peft_model
    from pesf_ext.lm.lora import LLAMA_TARGETS
    shape, tokens, r = TINY['llama_untied'], 32, 4

    def adapted(layers):
        model = get_peft_model(tiny_model(dataclasses.replace(shape, layers=layers), torch.bfloat16),
                               LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(LLAMA_TARGETS)))
        for name, p in model.named_parameters():
            if 'lora_' in name:
                p.data = p.data.float()
        return model
    two, three = adapted(2), adapted(3)
    per_block = saved_bytes(three) - saved_bytes(two)
    assert per_block == memory.lora_block_bytes(shape, r) * tokens + 2 * memory.lora_parameters(shape, r, 1)


@pytest.mark.parametrize('update,role', [('frozen', 'frozen'), ('adapters', 'lora'), ('full', 'trained')])
def test_loss_path_saved_bytes_match_the_count(update, role):
    """TokenKDLoss on fp32 logits saves LOSS_SAVED[role] bytes per token and output row (within 1%: the masks and
    per-token sums are O(tokens))."""
    from pesf_ext.losses.divergences import TokenKDLoss
    batch, seq, vocab = 2, 33, 500
    z_s = torch.randn(batch, seq, vocab, requires_grad=True)
    z_t = torch.randn(batch, seq, vocab, requires_grad=update != 'frozen')
    labels = torch.randint(0, vocab, (batch, seq))
    meter = lm_benchmark.SavedTensorMeter([z_s, z_t])
    with meter.context():
        TokenKDLoss(alpha=0.5, beta=0.5, teacher_update=update)({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)
    expected = memory.LOSS_SAVED[role] * vocab * batch * (seq - 1)
    assert abs(meter.bytes - expected) / expected < 0.01


@pytest.mark.parametrize('update,role', [('frozen', 'frozen'), ('adapters', 'lora'), ('full', 'trained')])
def test_chunked_loss_path_matches_the_count(update, role):
    """Chunked TokenKDLoss on bf16 logits keeps one bf16 gradient per learning side (exactly), and its forward's
    working set stays within CHUNK_WORKING bytes per chunk token and row on top of those gradients."""
    from pesf_ext.losses.divergences import TokenKDLoss
    from pesf_ext.losses.memory import loss_memory, token_kd_inputs
    tokens, vocab, chunk = 512, 512, 32
    z_s, z_t, labels = token_kd_inputs(tokens, vocab, update, dtype=torch.bfloat16)
    loss = TokenKDLoss(alpha=0.5, beta=0.5, teacher_update=update, chunk_tokens=chunk)
    report = loss_memory(lambda s, t: loss({'.': {'output': s}}, {'.': {'output': t}}, labels), z_s, z_t)
    gradients = memory.BF16 * memory.LEARNING_SIDES[role] * vocab * tokens  # over the shifted positions
    assert report['saved_bytes'] == gradients
    assert report['forward_peak_bytes'] <= gradients + memory.CHUNK_WORKING[role] * vocab * chunk
    for real_tokens in (2048, 8192):  # the table's 4 x 512 tokens per GPU, and a longer batch, in chunks of 256
        assert memory.loss_bytes(vocab, real_tokens, role, 256) < memory.loss_bytes(vocab, real_tokens, role) / 2


def test_memory_table_orders_the_methods_and_is_current_in_the_docs():
    teacher, student = memory.SHAPES['Qwen2.5-7B'], memory.SHAPES['Qwen2.5-0.5B']
    m = {k: memory.method_memory(teacher, student, k, 2048) for k in memory.METHODS}
    assert m['kd']['states'] < m['pesfkd_last2']['states'] < m['pesfkd']['states'] < m['ftkd']['states']
    assert m['kd']['activations'] < m['pesfkd_last2']['activations'] < m['pesfkd']['activations'] < \
        m['ftkd']['activations']
    assert m['ftkd']['one_gpu_lean'] > 80e9 > m['ftkd']['fsdp_per_gpu']
    assert memory.verdict(m['ftkd']) == 'FSDP over 8' and memory.verdict(m['kd']) == 'one GPU'
    import refresh_docs
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs/causal_lm.md')) as f:
        _, count, changed = refresh_docs.refresh(f.read(), only='--memory')
    assert count >= 1 and not changed, 'run: python tools/refresh_docs.py docs/causal_lm.md'
