"""LoRA PESF-KD on causal-LM teachers (tiny LLaMA / Qwen2 / GPT-2 built from configs, no download): identity at
initialisation, frozen base weights, gradient routing, no graph before the first adapter, the PEFT round trip."""
import copy

import pytest
import torch

pytest.importorskip('transformers')
pytest.importorskip('peft', reason='peft is not installed (pip install -e ".[lm]")')

from transformers import GPT2Config, LlamaConfig, Qwen2Config, AutoModelForCausalLM  # noqa: E402

from pesf_ext.lm.lora import LoRATeacher, default_target_modules  # noqa: E402
from pesf_ext.losses.divergences import TokenKDLoss  # noqa: E402

VOCAB = 97


def tiny(kind, layers=3, seed=0):
    torch.manual_seed(seed)
    if kind == 'gpt2':
        config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=layers, n_head=2)
    elif kind == 'llama':
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    else:
        config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                             tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config).eval()


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 10), generator=gen)
    labels = ids.clone()
    labels[0, :4] = -100
    return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}, labels


def wrap(model, **kwargs):
    return LoRATeacher(model, torch.device('cpu'), r=4, lora_alpha=8, **kwargs)


@pytest.mark.parametrize('kind', ['gpt2', 'llama', 'qwen2'])
def test_lora_teacher_starts_as_the_pretrained_one(kind):
    base = tiny(kind)
    inputs, _ = batch()
    with torch.no_grad():
        before = base(**inputs).logits
        teacher = wrap(base)
        after = teacher(**inputs).logits
    assert torch.equal(before, after)
    names = [n for n, p in teacher.named_parameters() if p.requires_grad]
    assert names and all('lora_' in n for n in names)
    targets = {n.split('.lora_')[0].rsplit('.', 1)[-1] for n in names}
    assert targets == set(default_target_modules(base))
    assert all(n.endswith('weight') for n in names)
    b_weights = [p for n, p in teacher.named_parameters() if 'lora_B' in n]
    assert all(torch.all(p == 0) for p in b_weights)  # B zero-initialised: the identity


def train_steps(teacher, student, steps=3, update='adapters'):
    params = [p for p in list(teacher.parameters()) + list(student.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    loss_fn = TokenKDLoss(temperature=2.0, alpha=0.5, beta=0.5, divergence='forward_kl', teacher_update=update)
    for step in range(steps):
        inputs, labels = batch(seed=10 + step)
        optimizer.zero_grad()
        loss = loss_fn({'.': {'output': student(**inputs)}}, {'.': {'output': teacher(**inputs)}}, labels)
        loss.backward()
        optimizer.step()
    return loss_fn


@pytest.mark.parametrize('kind', ['gpt2', 'llama'])
def test_base_weights_bit_identical_after_steps_and_adapters_move(kind):
    base = tiny(kind)
    frozen_copy = copy.deepcopy(base.state_dict())
    teacher = wrap(base)
    student = tiny(kind, layers=1, seed=3).train()
    train_steps(teacher, student)
    state = teacher.model.get_base_model().state_dict()
    for name, value in frozen_copy.items():
        peft_name = name.replace('.weight', '.base_layer.weight').replace('.bias', '.base_layer.bias')
        current = state[name] if name in state else state[peft_name]
        assert torch.equal(current, value), name
    assert any(torch.any(p != 0) for n, p in teacher.named_parameters() if 'lora_B' in n)


def test_gradient_routing_student_and_adapters_only():
    teacher = wrap(tiny('llama'))
    student = tiny('llama', layers=1, seed=3).train()
    inputs, labels = batch()
    loss = TokenKDLoss(alpha=0.5, teacher_update='adapters')(
        {'.': {'output': student(**inputs)}}, {'.': {'output': teacher(**inputs)}}, labels)
    loss.backward()
    for name, param in teacher.named_parameters():
        if 'lora_A' in name:  # B = 0 at init, so only A's gradient (through B) is 0; B's is not
            continue
        if 'lora_B' in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    assert all(p.grad is not None for p in student.parameters())


def test_student_gradient_does_not_depend_on_the_teacher_terms():
    """Adapters mode: the student's gradient equals that of a frozen-teacher loss with the same target."""
    teacher = wrap(tiny('gpt2'))
    student = tiny('gpt2', layers=1, seed=3)  # eval: no dropout, so both passes see the same network
    inputs, labels = batch()
    grads = []
    for update in ('adapters', 'frozen'):
        student.zero_grad()
        TokenKDLoss(alpha=0.3, beta=0.7, divergence='jsd', teacher_update=update)(
            {'.': {'output': student(**inputs)}}, {'.': {'output': teacher(**inputs)}}, labels).backward()
        grads.append([p.grad.clone() for p in student.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(*grads))


def test_full_teacher_gets_the_divergence_gradient():
    teacher = tiny('gpt2')
    student = tiny('gpt2', layers=1, seed=3).train()
    inputs, labels = batch()
    TokenKDLoss(alpha=0.5, teacher_update='full', teacher_alpha=0.0)(
        {'.': {'output': student(**inputs)}}, {'.': {'output': teacher(**inputs)}}, labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.parameters())


def record_requires_grad(model, module_names):
    seen = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda m, i, o, name=name: seen.__setitem__(name, (o[0] if isinstance(o, tuple) else o).requires_grad))
        for name in module_names]
    return seen, handles


@pytest.mark.parametrize('last_layers,first_graph_layer', [(None, 0), (1, 2)])
def test_frozen_base_builds_no_graph_before_the_first_adapter(last_layers, first_graph_layer):
    base = tiny('llama', layers=3)
    teacher = wrap(base, last_layers=last_layers)
    names = ['model.embed_tokens'] + [f'model.layers.{i}' for i in range(3)]
    inner = teacher.model.get_base_model()
    seen, handles = record_requires_grad(inner, names)
    inputs, _ = batch()
    out = teacher(**inputs).logits
    for handle in handles:
        handle.remove()
    assert out.requires_grad
    assert seen['model.embed_tokens'] is False
    for i in range(3):
        assert seen[f'model.layers.{i}'] is (i >= first_graph_layer), i
    if last_layers == 1:
        assert {n.split('.layers.')[1].split('.')[0] for n, p in teacher.named_parameters() if p.requires_grad} == {'2'}


def test_saved_adapter_round_trips_through_peft(tmp_path):
    from peft import PeftModel
    teacher = wrap(tiny('qwen2'))
    student = tiny('qwen2', layers=1, seed=3).train()
    train_steps(teacher, student)
    teacher.eval()
    inputs, _ = batch(seed=7)
    with torch.no_grad():
        expected = teacher(**inputs).logits
    teacher.save_adapter(str(tmp_path / 'adapter'))
    assert (tmp_path / 'adapter' / 'adapter_config.json').is_file()
    reloaded = PeftModel.from_pretrained(tiny('qwen2'), str(tmp_path / 'adapter')).eval()
    with torch.no_grad():
        got = reloaded(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(tiny('qwen2')(**inputs).logits, expected, atol=1e-4)  # the adapter changed it


@pytest.mark.parametrize('how', ['train', 'pre_epoch_rule'])
def test_frozen_base_never_drops_out(how):
    """Whether the box calls train() or the runner's pre-epoch rule (trainable parts in train mode), the frozen
    base's dropout is off: the adapted teacher in train mode gives the eval-mode logits."""
    from pesf_ext.procs import set_train_mode_where_trainable
    teacher = wrap(tiny('gpt2'))
    teacher.train() if how == 'train' else set_train_mode_where_trainable(teacher)
    inputs, _ = batch()
    with torch.no_grad():
        train_logits = teacher(**inputs).logits
        teacher.eval()
        assert torch.equal(train_logits, teacher(**inputs).logits)


def test_train_mode_only_on_adapters():
    teacher = wrap(tiny('gpt2'))
    teacher.train()
    modes = {n: m.training for n, m in teacher.named_modules()}
    assert any(v for n, v in modes.items() if 'lora_A' in n)
    assert not any(v for n, v in modes.items() if n.endswith('attn.attn_dropout') or n.endswith('.ln_1'))


@pytest.mark.parametrize('kwargs,match', [({'r': 0}, 'r: must'), ({'last_layers': 9}, 'last_layers'),
                                          ({'target_modules': None}, None)])
def test_bad_lora_options(kwargs, match):
    if match is None:
        with pytest.raises(ValueError, match='target_modules'):
            model = tiny('gpt2')
            model.config.model_type = 'unknown_arch'
            LoRATeacher(model, torch.device('cpu'))
        return
    with pytest.raises(ValueError, match=match):
        LoRATeacher(tiny('gpt2'), torch.device('cpu'), **kwargs)
