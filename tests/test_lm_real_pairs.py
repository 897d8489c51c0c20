"""What the shipped real LLM pairs need of the causal-LM runner, on tiny stand-ins built here: tokenizers that share
every id but not the end-of-text role (Qwen2.5 Instruct -> base), output layers padded past the tokenizer by
different amounts (Qwen2.5-7B: 152,064 rows, 0.5B: 151,936, over 151,665 ids), checkpoints stored in bf16 (trained
weights must be fp32), the PESF-KD teacher adapter under torchrun, and the student exported as a Hugging Face
model."""
import json
import logging
import os
import pickle
import subprocess
import sys

import pytest
import torch

pytest.importorskip('transformers')
pytest.importorskip('datasets')
pytest.importorskip('peft', reason='peft is not installed (pip install -e ".[lm]")')

import pesf_ext.lm  # noqa: E402,F401
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.engine.errors import ConfigError  # noqa: E402
from pesf_ext.lm import data as lm_data  # noqa: E402
from pesf_ext.lm.lora import LoRATeacher  # noqa: E402
from pesf_ext.lm.metrics import evaluate_lm  # noqa: E402
from pesf_ext.lm.models import build_causal_lm, check_shared_tokenizer, model_roles  # noqa: E402
from pesf_ext.lm.runner import get_lm_args, run_lm  # noqa: E402
from pesf_ext.losses.divergences import TokenKDLoss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN = 'configs/causal_lm/qwen2.5_1.5b_0.5b_dolly_{}.yaml'
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']


def round_up(n, multiple):
    return -(-n // multiple) * multiple


def bpe(path, specials=SPECIALS, eos='<|endoftext|>', extra=None, vocab_size=300):
    """A byte-level BPE tokenizer (as :func:`pesf_ext.lm.data.offline_tokenizer_path`) trained on a little of the
    standard library, with ``specials`` first (ids 0, 1, ...), ``eos`` as end of text, ``<|endoftext|>`` as padding
    (Qwen2.5's layout), and ``extra`` tokens added after training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    texts = []
    for name in lm_data.stdlib_source_files('train')[:4]:
        with open(name, encoding='utf-8', errors='replace') as f:
            texts.append(f.read()[:20_000])
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, pad_token='<|endoftext|>',
                                   unk_token='<|endoftext|>')
    if extra:
        fast.add_tokens(extra, special_tokens=True)
    fast.save_pretrained(path)
    return path


def qwen(path, tokenizer_dir, rows, hidden=32, layers=2, dtype=torch.float32, seed=0):
    """A tiny Qwen2 causal LM with ``rows`` output rows (``vocab_size``), saved in ``dtype`` with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(vocab_size=rows, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
    """Tokenizers and Qwen2-shaped models: base/instruct tokenizers that differ only in eos; a teacher with
    round_up(V, 64) + 64 rows and a student with round_up(V, 64), stored in bf16 (as the hub's Qwen/Llama) and in
    fp32; the text files the runs read."""
    root = tmp_path_factory.mktemp('pairs')
    dirs = {'base': bpe(str(root / 'tok_base')),
            'instruct': bpe(str(root / 'tok_instruct'), eos='<|im_end|>'),
            'swapped': bpe(str(root / 'tok_swapped'), specials=[SPECIALS[1], SPECIALS[0], SPECIALS[2]]),
            'extra': bpe(str(root / 'tok_extra'), extra=['<|tool_call|>'])}
    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(dirs['base']))
    dirs['V'], dirs['student_rows'], dirs['teacher_rows'] = vocab, round_up(vocab, 64), round_up(vocab, 64) + 64
    for dtype, tag in ((torch.bfloat16, 'bf16'), (torch.float32, 'fp32')):
        dirs[f'teacher_{tag}'] = qwen(str(root / f'teacher_{tag}'), dirs['instruct'], dirs['teacher_rows'],
                                      dtype=dtype, seed=1)
        dirs[f'student_{tag}'] = qwen(str(root / f'student_{tag}'), dirs['base'], dirs['student_rows'], hidden=16,
                                      layers=1, dtype=dtype, seed=2)
    texts = []
    for i, source in enumerate(lm_data.stdlib_source_files('validation')[:3]):
        with open(source) as f:
            text = f.read()[:2500]
        texts.append(str(root / f'doc{i}.txt'))
        with open(texts[-1], 'w') as f:
            f.write(text)
    dirs['texts'] = texts
    return dirs


def model_entry(path):
    return {'pretrained_model_name_or_path': path}


def tiny_config(method, dirs, tmp_path, teacher, student):
    """A shipped Qwen2.5 1.5B -> 0.5B config with the tiny models, small text files and checkpoints in tmp_path."""
    config = load_config(os.path.join(ROOT, QWEN.format(method)))
    spec = config['datasets']['lm']
    config['datasets']['lm'] = {'kind': 'text', 'data_files': {'train': dirs['texts'][:2], 'validation':
                                dirs['texts'][2:], 'test': dirs['texts'][2:]}, 'block_size': 32,
                                'max_samples': {'train': 8, 'validation': 4, 'test': 4},
                                'dataset_id_map': spec['dataset_id_map']}
    config.pop('speed', None)
    config['test'].pop('rouge_samples', None)
    for key, path in (('teacher_model', teacher), ('student_model', student)):
        model = config['models'][key]
        for kwargs in ('config_kwargs', 'tokenizer_kwargs', 'model_kwargs'):
            model[kwargs] = model_entry(path)
        model['src_ckpt'] = None
    student_model = config['models']['student_model']
    student_model['dst_ckpt'] = str(tmp_path / 'ckpt' / os.path.basename(student_model['dst_ckpt']))
    train = config['train']
    train['num_epochs'] = 1
    for loader in (train['train_data_loader'], train['val_data_loader'], config['test']['test_data_loader']):
        loader['kwargs'].update(batch_size=2, pin_memory=False)
    return config


def runner_args(tmp_path, *extra):
    return get_lm_args(['--config', 'unused.yaml', '--seed', '0', '--max_steps_per_epoch', '2', '--device', 'cpu',
                        '--cache_dir', str(tmp_path / 'cache'), '--summary_json', str(tmp_path / 'summary.json'),
                        *extra])


def two_step_run(method, pairs, tmp_path, teacher, student):
    """(results, summary JSON, config) of two runner steps of ``method`` on the given model folders."""
    config = tiny_config(method, pairs, tmp_path, teacher, student)
    results = run_lm(runner_args(tmp_path), config=config)
    with open(tmp_path / 'summary.json') as f:
        return results, json.load(f), config


@pytest.fixture(scope='module')
def kd_run(pairs, tmp_path_factory):
    """KD, Qwen2.5 style: an 'Instruct' teacher (eos <|im_end|>, 64 more padded rows) and a 'base' student, both
    stored in bf16; two steps through the runner."""
    return two_step_run('kd', pairs, tmp_path_factory.mktemp('kd'), pairs['teacher_bf16'], pairs['student_bf16'])


@pytest.fixture(scope='module')
def pesf_run(pairs, tmp_path_factory):
    """PESF-KD: LoRA on a bf16-stored teacher, an fp32-stored student; two steps through the runner."""
    return two_step_run('pesfkd', pairs, tmp_path_factory.mktemp('pesf'), pairs['teacher_bf16'],
                        pairs['student_fp32'])


# 1. tokenizers: same ids, different end-of-text roles

def test_tokenizers_differing_only_in_eos_are_shared(pairs):
    from transformers import AutoTokenizer
    teacher, student = (AutoTokenizer.from_pretrained(pairs[k]) for k in ('instruct', 'base'))
    assert teacher.eos_token == '<|im_end|>' and student.eos_token == '<|endoftext|>'
    assert teacher.get_vocab() == student.get_vocab()
    tokenizer, info = check_shared_tokenizer({'tokenizer_kwargs': model_entry(pairs['instruct'])},
                                             {'tokenizer_kwargs': model_entry(pairs['base'])})
    assert info['size'] == len(student) == pairs['V']
    assert (info['eos_id'], info['eos_token']) == (student.convert_tokens_to_ids('<|endoftext|>'), '<|endoftext|>')
    assert (info['teacher_eos_id'], info['teacher_eos_token']) == (teacher.convert_tokens_to_ids('<|im_end|>'),
                                                                   '<|im_end|>')
    assert info['eos_id'] != info['teacher_eos_id'] and tokenizer.eos_token_id == info['eos_id']


def test_eos_differing_pair_trains_two_steps_with_the_student_eos(kd_run, pairs):
    results, summary, _ = kd_run
    assert results['seconds_per_step'] > 0 and results['test']['tokens'] > 0
    vocabulary = summary['lm']['vocabulary']
    assert vocabulary['eos_token'] == '<|endoftext|>' and vocabulary['teacher_eos_token'] == '<|im_end|>'
    assert vocabulary['eos_id'] == SPECIALS.index('<|endoftext|>')
    assert vocabulary['teacher_eos_id'] == SPECIALS.index('<|im_end|>')
    assert vocabulary['size'] == pairs['V']


@pytest.mark.parametrize('teacher, student, first_id', [('swapped', 'base', 0), ('base', 'extra', None)])
def test_real_vocabulary_mismatch_stops_with_one_line(pairs, teacher, student, first_id, tmp_path):
    from transformers import AutoTokenizer
    first_id = len(AutoTokenizer.from_pretrained(pairs[teacher])) if first_id is None else first_id
    with pytest.raises(ConfigError) as error:
        check_shared_tokenizer({'tokenizer_kwargs': model_entry(pairs[teacher])},
                               {'tokenizer_kwargs': model_entry(pairs[student])})
    message = str(error.value)
    assert '\n' not in message and f'differ first at id {first_id} ' in message
    assert 'models.teacher_model.tokenizer_kwargs' in message and 'models.student_model.tokenizer_kwargs' in message
    assert pairs[teacher] in message and pairs[student] in message
    config = tiny_config('kd', pairs, tmp_path, pairs['teacher_fp32'], pairs['student_fp32'])
    config['models']['teacher_model']['tokenizer_kwargs'] = model_entry(pairs[teacher])
    config['models']['student_model']['tokenizer_kwargs'] = model_entry(pairs[student])
    with pytest.raises(ConfigError, match=f'differ first at id {first_id} '):  # before training, through the runner
        run_lm(runner_args(tmp_path), config=config)
    assert not os.path.exists(config['models']['student_model']['dst_ckpt'])


# 2. padded output layers

def hand_forward_kl_and_ce(z_s, z_t, labels, vocab, temperature):
    """tau^2 KL(p_t || p_s) and CE over the first ``vocab`` columns, shifted, averaged over labels != -100."""
    z_s, z_t, labels = z_s[:, :-1, :vocab].double(), z_t[:, :-1, :vocab].double(), labels[:, 1:]
    kl_sum, ce_sum, count = 0.0, 0.0, 0
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1]):
            if labels[b, i] == -100:
                continue
            log_p_t = torch.log_softmax(z_t[b, i] / temperature, -1)
            log_p_s = torch.log_softmax(z_s[b, i] / temperature, -1)
            kl_sum += float((log_p_t.exp() * (log_p_t - log_p_s)).sum()) * temperature ** 2
            ce_sum += -float(torch.log_softmax(z_s[b, i], -1)[labels[b, i]])
            count += 1
    return kl_sum / count, ce_sum / count


def test_padded_vocabularies_loss_is_over_the_shared_ids():
    vocab = 300
    student_rows, teacher_rows = round_up(vocab, 64), round_up(vocab, 64) + 64
    generator = torch.Generator().manual_seed(0)
    z_s = torch.randn(2, 6, student_rows, generator=generator, requires_grad=True)
    z_t = torch.randn(2, 6, teacher_rows, generator=generator) * 2
    with torch.no_grad():
        z_s[..., vocab:] += 5.0  # large padded logits: they would dominate a softmax over every row
        z_t[..., vocab:] += 5.0
    labels = torch.randint(0, vocab, (2, 6), generator=generator)
    labels[0, :3] = -100
    loss = TokenKDLoss(temperature=2.0, alpha=0.3, beta=0.7, divergence='forward_kl', vocab_size=vocab)
    value = loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)
    kl, ce = hand_forward_kl_and_ce(z_s.detach(), z_t, labels, vocab, 2.0)
    assert float(loss.last_terms['student_div']) == pytest.approx(kl, rel=1e-5)
    assert float(loss.last_terms['student_ce']) == pytest.approx(ce, rel=1e-5)
    assert float(value.detach()) == pytest.approx(0.3 * ce + 0.7 * kl, rel=1e-5)
    value.backward()
    assert torch.all(z_s.grad[..., vocab:] == 0) and z_s.grad[..., :vocab].abs().sum() > 0
    with pytest.raises(ValueError, match='different vocabularies'):  # today's behaviour without vocab_size
        TokenKDLoss(divergence='forward_kl')({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)
    with pytest.raises(ValueError, match='fewer than vocab_size'):
        TokenKDLoss(vocab_size=student_rows + 1)({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)


class Columns(torch.nn.Module):
    """A causal LM whose logits are cut to the first ``keep`` columns, and whose columns from ``boost_from`` on get
    +20 (padded rows that would win every argmax and hold most of the probability if they were counted)."""
    def __init__(self, model, keep=None, boost_from=None):
        super().__init__()
        self.model, self.keep, self.boost_from = model, keep, boost_from

    def forward(self, **kwargs):
        output = self.model(**kwargs)
        logits = output.logits[..., :self.keep] if self.keep else output.logits.clone()
        if self.boost_from is not None:
            logits[..., self.boost_from:] += 20.0
        output.logits = logits
        return output


def test_evaluate_lm_compares_the_shared_ids(pairs):
    from transformers import AutoModelForCausalLM
    teacher = AutoModelForCausalLM.from_pretrained(pairs['teacher_fp32'])
    student = Columns(AutoModelForCausalLM.from_pretrained(pairs['student_fp32']), boost_from=pairs['V'])
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, pairs['V'], (3, 12), generator=generator)
    labels = ids.clone()
    labels[1, :5] = -100
    loader = [{'input_ids': ids, 'attention_mask': torch.ones_like(ids), 'labels': labels}]
    vocab = pairs['V']
    got = evaluate_lm({'teacher': teacher, 'student': student}, loader, torch.device('cpu'), vocab_size=vocab)
    expected = evaluate_lm({'teacher': Columns(teacher, vocab), 'student': Columns(student.model, vocab)}, loader,
                           torch.device('cpu'))
    for key in ('agreement', 'kl', 'sharpness_gap', 'tokens'):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    for name in ('teacher', 'student'):
        assert got[name]['nll'] == pytest.approx(expected[name]['nll'], rel=1e-6)
    unsliced = evaluate_lm({'teacher': Columns(teacher, pairs['student_rows']), 'student': student}, loader,
                           torch.device('cpu'))
    assert unsliced['kl'] > got['kl'] + 1.0 and unsliced['agreement'] < got['agreement']


def test_padded_pair_trains_two_steps_through_the_runner(kd_run, pairs):
    results, summary, config = kd_run  # without vocab_size filled, the first step stops on a shape mismatch
    assert results['seconds_per_step'] > 0 and summary['lm']['vocabulary']['size'] == pairs['V']
    assert summary['test']['kl'] >= 0.0 and 0.0 <= summary['test']['agreement'] <= 100.0
    for name in ('teacher', 'student'):
        assert 1.0 < summary['test'][name]['perplexity'] < 10 * pairs['V']


def test_fill_vocab_size_fills_null_terms_only():
    from pesf_ext.engine.config import fill_vocab_size
    config = load_config(os.path.join(ROOT, QWEN.format('kd')))
    terms = config['train']['criterion']['kwargs']['sub_terms']
    terms['kept'] = {'criterion': {'key': 'TokenKDLoss', 'kwargs': {'vocab_size': 7}}, 'weight': 1.0}
    terms['empty'] = {'criterion': {'key': 'TokenKDLoss', 'kwargs': None}, 'weight': 1.0}
    terms['other'] = {'criterion': {'key': 'NextTokenLoss', 'kwargs': {}}, 'weight': 1.0}
    filled = fill_vocab_size(config, 151665)
    assert sorted(k.rsplit('.', 1)[-1] for k in filled) == ['empty', 'kd']
    assert {k: (t['criterion']['kwargs'] or {}).get('vocab_size') for k, t in terms.items()} == {
        'kd': 151665, 'kept': 7, 'empty': 151665, 'other': None}


def test_fewer_output_rows_than_the_tokenizer_stops_with_one_line(pairs, tmp_path):
    small = qwen(str(tmp_path / 'small'), pairs['base'], pairs['V'] - 4, hidden=16, layers=1)
    config = tiny_config('kd', pairs, tmp_path, pairs['teacher_fp32'], small)
    with pytest.raises(ConfigError) as error:
        run_lm(runner_args(tmp_path), config=config)
    message = str(error.value)
    assert '\n' not in message and message.startswith('models.student_model: its output layer has')
    assert f'fewer than the {pairs["V"]:,} ids' in message


# 3. precision

def test_roles_of_the_shipped_configs():
    roles = {method: model_roles(load_config(os.path.join(ROOT, QWEN.format(method))))
             for method in ('kd', 'pesfkd', 'ftkd')}
    assert {m: r['models.teacher_model'] for m, r in roles.items()} == {'kd': 'frozen', 'pesfkd': 'adapted',
                                                                        'ftkd': 'trained'}
    assert all(r['models.student_model'] == 'trained' for r in roles.values())
    student_ce = model_roles(load_config(os.path.join(ROOT, 'configs/causal_lm/qwen2.5_0.5b_dolly_student_ce.yaml')))
    assert student_ce == {'models.model': 'trained'}


def entry(path, **model_kwargs):
    return {'config_kwargs': model_entry(path), 'tokenizer_kwargs': model_entry(path),
            'model_kwargs': {**model_entry(path), **model_kwargs}}


def test_bf16_checkpoint_trains_fp32_weights_and_moments(pairs):
    cpu = torch.device('cpu')
    student = build_causal_lm(entry(pairs['student_bf16']), cpu, False, 'models.student_model', 'trained')
    assert {p.dtype for p in student.parameters()} == {torch.float32} and student.stored_dtype == 'bfloat16'
    frozen = build_causal_lm(entry(pairs['teacher_bf16']), cpu, False, 'models.teacher_model', 'frozen')
    assert {p.dtype for p in frozen.parameters()} == {torch.bfloat16}
    adapted = LoRATeacher(build_causal_lm(entry(pairs['teacher_bf16']), cpu, False, 'models.teacher_model',
                                          'adapted'), cpu, r=2, lora_alpha=4)
    dtypes = {('lora_' in n, p.dtype) for n, p in adapted.named_parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    # one AdamW step of lr 1e-5: Adam's first step moves each weight by about lr, far below bf16's spacing there
    weight = student.model.layers[0].mlp.down_proj.weight
    before = weight.detach().clone()
    optimizer = torch.optim.AdamW([weight], lr=1e-5, weight_decay=0.0)
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    assert {v.dtype for v in optimizer.state[weight].values() if v.is_floating_point() and v.dim()} == {
        torch.float32}
    changed = (weight.detach() != before).float().mean()
    assert changed > 0.99
    assert torch.allclose(weight.detach() - before, -1e-5 * torch.sign(weight.grad), atol=1e-7)
    lost = before.to(torch.bfloat16).requires_grad_()
    bf16_optimizer = torch.optim.AdamW([lost], lr=1e-5, weight_decay=0.0)
    lost.grad = weight.grad.to(torch.bfloat16)
    bf16_optimizer.step()
    assert (lost.detach() != before.to(torch.bfloat16)).float().mean() < 0.2  # what a bf16 student would lose


def test_explicit_dtype_is_honoured_with_a_warning(pairs, caplog):
    cpu = torch.device('cpu')
    with caplog.at_level(logging.WARNING, logger='pesf_ext.lm.models'):
        model = build_causal_lm(entry(pairs['student_fp32'], torch_dtype='bfloat16'), cpu, False,
                                'models.student_model', 'trained')
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert any('models.student_model.model_kwargs: dtype bfloat16' in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='pesf_ext.lm.models'):
        frozen = build_causal_lm(entry(pairs['teacher_bf16'], dtype='float32'), cpu, False, 'models.teacher_model',
                                 'frozen')
    assert {p.dtype for p in frozen.parameters()} == {torch.float32} and not caplog.records


def test_runs_report_what_each_model_ran_in(kd_run, pesf_run):
    assert kd_run[1]['lm']['precision'] == {'teacher': 'bf16 weights', 'student': 'fp32 weights'}
    assert pesf_run[1]['lm']['precision'] == {'teacher': 'bf16 base + fp32 LoRA', 'student': 'fp32 weights'}
    trainable, total = pesf_run[0]['counts']['teacher']
    assert 0 < trainable < total / 2
    assert os.path.isfile(os.path.join(pesf_run[0]['lm']['teacher_adapter_dir'], 'adapter_config.json'))


# 5. the student as a Hugging Face model

def checkpoint_logits(dst_ckpt, path, dtype, ids):
    """Logits of the student rebuilt from its stored folder with the torchdistill checkpoint loaded into it."""
    from torchdistill.common.main_util import load_ckpt
    model = build_causal_lm(entry(path), torch.device('cpu'), False, 'models.student_model', 'trained')
    load_ckpt(dst_ckpt, model=model, strict=True)
    with torch.no_grad():
        return model.to(dtype).eval()(input_ids=ids).logits


@pytest.mark.parametrize('run_name, stored', [('kd_run', 'bfloat16'), ('pesf_run', 'float32')])
def test_exported_student_round_trips(run_name, stored, request, pairs):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    results, summary, config = request.getfixturevalue(run_name)
    directory = summary['lm']['hf_dir']
    dst_ckpt = config['models']['student_model']['dst_ckpt']
    assert directory == os.path.splitext(dst_ckpt)[0] + '_hf'
    with open(os.path.join(directory, 'config.json')) as f:
        assert json.load(f)['dtype'] == stored
    exported = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert {p.dtype for p in exported.parameters()} == {getattr(torch, stored)}
    ids = torch.randint(0, pairs['V'], (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = exported(input_ids=ids).logits
    path = config['models']['student_model']['model_kwargs']['pretrained_model_name_or_path']
    assert torch.equal(got, checkpoint_logits(dst_ckpt, path, getattr(torch, stored), ids))
    assert AutoTokenizer.from_pretrained(directory).get_vocab() == AutoTokenizer.from_pretrained(
        pairs['base']).get_vocab()


# 4. torchrun: the PESF-KD teacher adapter

def test_torchrun_writes_the_teacher_adapter(pairs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    config = tiny_config('pesfkd', pairs, tmp_path, pairs['teacher_fp32'], pairs['student_fp32'])
    spec = tmp_path / 'spec.pkl'
    ids = torch.randint(0, pairs['V'], (2, 10), generator=torch.Generator().manual_seed(7))
    with open(spec, 'wb') as f:
        pickle.dump({'config': config, 'args': ['--config', 'unused.yaml', '--seed', '0', '--max_steps_per_epoch',
                                                '2', '--device', 'cpu', '--cache_dir', str(tmp_path / 'cache')],
                     'input_ids': ids, 'out': str(tmp_path / 'teacher_logits.pt')}, f)
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               os.path.join(ROOT, 'tests', '_lm_dist_worker.py'), str(spec)]
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                               env={**os.environ, 'OMP_NUM_THREADS': '1'}, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout[-4000:]
    stem = os.path.splitext(config['models']['student_model']['dst_ckpt'])[0]
    directory = stem + '_teacher_adapter'
    assert os.path.isfile(os.path.join(directory, 'adapter_config.json')), completed.stdout[-2000:]
    trained = torch.load(tmp_path / 'teacher_logits.pt')
    teacher = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pairs['teacher_fp32']), directory).eval()
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits
    base = AutoModelForCausalLM.from_pretrained(pairs['teacher_fp32']).eval()
    with torch.no_grad():
        untrained = base(input_ids=ids).logits
    assert not torch.allclose(untrained, trained)  # the adapters moved
    assert torch.allclose(logits, trained, atol=1e-5, rtol=1e-5)
    assert os.path.isfile(os.path.join(stem + '_hf', 'config.json'))
