"""speed.fsdp through the real causal-LM runner under torchrun (2 gloo processes): FSDP2 gives the DDP run's
per-step losses, validation and test figures, ROUGE-L and trained weights, for KD (frozen teacher), PESF-KD (LoRA
teacher, with gradient checkpointing too) and FT-KD (whole teacher trained), on tiny LLaMA- and Qwen2-shaped models,
with evaluation sets that do not divide over the ranks; -resume under FSDP continues the DDP run; the checkpoints
load in one process."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))

pytest.importorskip('transformers')
pytest.importorskip('datasets')
pytest.importorskip('peft')

from test_lm_configs import RECORDS, shrink  # noqa: E402
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.engine.errors import ConfigError  # noqa: E402
from pesf_ext.engine.files import load_model_checkpoint  # noqa: E402
from pesf_ext.lm import data as lm_data  # noqa: E402

WORKER = os.path.join(ROOT, 'tests', '_fsdp_worker.py')
METHODS = ('kd', 'pesfkd', 'ftkd')
HELD_OUT = 5  # 5 sequences over 2 ranks in batches of 2: rank 0 has 2 batches, rank 1 one


@pytest.fixture(scope='module')
def tiny_pairs(tmp_path_factory):
    """Tiny LLaMA and Qwen2 teachers and students over a small offline tokenizer, and a dolly-like file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config
    root = tmp_path_factory.mktemp('fsdp')
    tokenizer_dir = lm_data.offline_tokenizer_path(vocab_size=320, cache_dir=str(root / 'tok'), max_bytes=150_000)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(vocab_size=len(tokenizer), num_attention_heads=2, num_key_value_heads=1,
                  eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)  # as Qwen2.5-0.5B and Llama-3.2-1B
    shapes = {'teacher': dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
              'student': dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2)}
    dirs = {}
    for family, config_class in (('qwen2', Qwen2Config), ('llama', LlamaConfig)):
        for role, shape in shapes.items():
            torch.manual_seed(0)
            path = str(root / f'{family}_{role}')
            AutoModelForCausalLM.from_config(config_class(**common, **shape)).save_pretrained(path)
            tokenizer.save_pretrained(path)
            dirs[f'{family}_{role}'] = path
    with open(root / 'dolly.jsonl', 'w') as f:
        for record in RECORDS:
            f.write(json.dumps(record) + '\n')
    dirs['jsonl'] = str(root / 'dolly.jsonl')
    return dirs


def case_config(dirs, family, method, ckpt_dir, fsdp, epochs=1, checkpointing=False):
    path = os.path.join(ROOT, f'configs/causal_lm/qwen2.5_1.5b_0.5b_dolly_{method}.yaml')
    pair = {'qwen_teacher': dirs[f'{family}_teacher'], 'qwen_student': dirs[f'{family}_student'],
            'jsonl': dirs['jsonl']}
    config = shrink(load_config(path), pair, ckpt_dir)
    spec = config['datasets']['lm']
    spec['held_out'] = {'validation': HELD_OUT, 'test': HELD_OUT, 'seed': 0}
    spec['max_length'] = 256  # the prompt template alone is ~100 tokens of this small vocabulary
    spec['max_samples'] = {'train': 16, 'validation': HELD_OUT, 'test': HELD_OUT}
    config['test']['rouge_samples'] = 5  # over 2 ranks in batches of 2: rank 0 makes 2 generate calls, rank 1 one
    optimizer = config['train']['optimizer']
    for kwargs in [optimizer['kwargs']] + [entry['kwargs'] for entry in optimizer.get('module_wise_configs') or []]:
        kwargs['lr'] = 0.01  # steps large enough for the weight comparisons to tell
    optimizer['max_grad_norm'] = 0.01  # clipping scales every step (the norm over all shards; Adam's moments show it)
    config['train']['num_epochs'] = epochs
    config['train']['scheduler']['kwargs']['num_training_steps'] = 4  # 2 epochs of 2 steps, whatever num_epochs
    speed = {}
    if fsdp:
        speed['fsdp'] = ['student', 'teacher']
    if checkpointing:
        speed['gradient_checkpointing'] = ['student', 'teacher']
    if speed:
        config['speed'] = speed
    return config


def torchrun(cases, tmp_path):
    with open(tmp_path / 'cases.pkl', 'wb') as f:
        pickle.dump(cases, f)
    out = tmp_path / 'out'
    out.mkdir(exist_ok=True)
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', WORKER,
               str(tmp_path / 'cases.pkl'), str(out)]
    with open(tmp_path / 'log.txt', 'w') as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=300,
                                   env={**os.environ, 'OMP_NUM_THREADS': '1'}, cwd=ROOT)
    assert completed.returncode == 0, (tmp_path / 'log.txt').read_text()[-6000:]
    return {case['tag']: [json.load(open(out / f'{case["tag"]}_rank{rank}.json')) for rank in range(2)]
            for case in cases}


def run_args(cache, *extra):
    return ['--max_steps_per_epoch', '2', '--cache_dir', str(cache), '--max_new_tokens', '16', *extra]


@pytest.fixture(scope='module')
def runs(tiny_pairs, tmp_path_factory):
    """Every case in one torchrun: DDP and FSDP for each family and method, and FT-KD (Qwen2) over 2 epochs by DDP
    and by FSDP interrupted after the first (then -resume)."""
    tmp = tmp_path_factory.mktemp('runs')
    cache, cases, dirs = tmp / 'cache', [], {}
    for family in ('qwen2', 'llama'):
        for method in METHODS:
            for mode in ('ddp', 'fsdp'):
                tag = f'{family}_{method}_{mode}'
                dirs[tag] = tmp / tag
                config = case_config(tiny_pairs, family, method, dirs[tag], mode == 'fsdp',
                                     checkpointing=mode == 'fsdp' and method == 'pesfkd')
                cases.append({'tag': tag, 'config': config, 'args': run_args(cache)})
    dirs['ddp_2_epochs'] = tmp / 'ddp_2_epochs'
    cases.append({'tag': 'ddp_2_epochs', 'args': run_args(cache),
                  'config': case_config(tiny_pairs, 'qwen2', 'ftkd', dirs['ddp_2_epochs'], False, epochs=2)})
    dirs['fsdp_resumed'] = tmp / 'fsdp_resumed'  # a copy of the 1-epoch FSDP run's checkpoints, resumed
    resumed = case_config(tiny_pairs, 'qwen2', 'ftkd', dirs['fsdp_resumed'], True, epochs=2)
    cases.append({'tag': 'fsdp_resumed', 'config': resumed, 'args': run_args(cache, '-resume'),
                  'copy': (str(dirs['qwen2_ftkd_fsdp'] / 'ckpt'), str(dirs['fsdp_resumed'] / 'ckpt'))})
    return torchrun(cases, tmp), dirs, tiny_pairs


def close(a, b, rel=1e-4, abs_=1e-5):
    return a == pytest.approx(b, rel=rel, abs=abs_)


def assert_same_run(ddp, fsdp):
    gaps = [abs(a - b) / max(abs(a), 1e-12) for rank in range(2) for a, b in zip(ddp[rank]['losses'],
                                                                                fsdp[rank]['losses'])]
    print(f'FSDP vs DDP: largest relative difference of a step loss {max(gaps):.2e}')  # pytest -s shows it
    for rank in range(2):
        d, f = ddp[rank], fsdp[rank]
        assert len(d['losses']) == len(f['losses']) == 2 and close(d['losses'], f['losses']), (rank, d['losses'],
                                                                                               f['losses'])
        assert close(d['validation'], f['validation'])
        assert d['test']['tokens'] == f['test']['tokens']
        for name in ('teacher', 'student'):
            if name in d['test']:
                assert close(d['test'][name]['nll'], f['test'][name]['nll'])
                assert close(d['test'][name]['top1'], f['test'][name]['top1'])
        assert close(d['rouge_l'], f['rouge_l'])
        assert d['responses'] == f['responses'] and all(text for texts in d['responses'] for text in texts)
        assert d['counts'] == f['counts']


def student_weights(path, model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    load_model_checkpoint(path, model, 'dst_ckpt')  # one process, strict: the full state dict of a bare model
    return model.state_dict()


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize('family', ['qwen2', 'llama'])
@pytest.mark.parametrize('method', METHODS)
def test_fsdp_gives_the_ddp_run(runs, family, method):
    results, dirs, models = runs
    ddp, fsdp = results[f'{family}_{method}_ddp'], results[f'{family}_{method}_fsdp']
    assert ddp[0]['sharded'] == {'teacher': False, 'student': False}
    assert fsdp[0]['sharded'] == {'teacher': True, 'student': True}
    checkpointed = method == 'pesfkd'  # the frozen KD teacher has no graph: left alone
    assert fsdp[1]['checkpointing'] == {'teacher': checkpointed, 'student': checkpointed}
    assert_same_run(ddp, fsdp)
    held_out_tokens = ddp[0]['test']['tokens']
    assert held_out_tokens > 0 and fsdp[1]['test']['tokens'] == held_out_tokens  # every rank: all 5 sequences
    name = 'Qwen2.5-0.5B_from_Qwen2.5-1.5B-Instruct.pt'
    ddp_ckpt, fsdp_ckpt = (dirs[f'{family}_{method}_{mode}'] / 'ckpt' / name for mode in ('ddp', 'fsdp'))
    assert_same_tensors(student_weights(ddp_ckpt, models[f'{family}_student']),
                        student_weights(fsdp_ckpt, models[f'{family}_student']))
    ddp_state, fsdp_state = (torch.load(p, weights_only=False) for p in (ddp_ckpt, fsdp_ckpt))
    ddp_opt, fsdp_opt = ddp_state['optimizer'], fsdp_state['optimizer']
    assert ddp_opt['param_groups'] == fsdp_opt['param_groups']
    for index, entry in ddp_opt['state'].items():  # Adam moments gathered whole, in the one-process format
        for key, value in entry.items():
            assert torch.allclose(value, fsdp_opt['state'][index][key], rtol=1e-4, atol=1e-7), (index, key)
    if method != 'kd':  # the trained teacher side (adapters / whole teacher)
        teacher_name = name.replace('.pt', '_teacher.pt')
        assert_same_tensors(*(torch.load(d / 'ckpt' / teacher_name, weights_only=False)['teacher']
                              for d in (dirs[f'{family}_{method}_ddp'], dirs[f'{family}_{method}_fsdp'])))
    if method == 'pesfkd':  # the adapter directory written from the gathered shards reloads with PEFT
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        ids = torch.arange(12)[None]
        logits = []
        for result in (ddp, fsdp):
            base = AutoModelForCausalLM.from_pretrained(models[f'{family}_teacher'])
            with torch.no_grad():
                logits.append(PeftModel.from_pretrained(base, result[0]['teacher_adapter_dir'])(input_ids=ids).logits)
        assert torch.allclose(*logits, atol=1e-5)


def test_resume_under_fsdp_continues_the_ddp_run(runs):
    results, dirs, models = runs
    ddp, first, resumed = results['ddp_2_epochs'], results['qwen2_ftkd_fsdp'], results['fsdp_resumed']
    for rank in range(2):
        assert close(ddp[rank]['losses'], first[rank]['losses'] + resumed[rank]['losses'])
        assert close(ddp[rank]['test']['student']['nll'], resumed[rank]['test']['student']['nll'])
    last = 'Qwen2.5-0.5B_from_Qwen2.5-1.5B-Instruct_last.pt'
    ddp_last, fsdp_last = (torch.load(d / 'ckpt' / last, weights_only=False)
                           for d in (dirs['ddp_2_epochs'], dirs['fsdp_resumed']))
    assert ddp_last['epoch'] == fsdp_last['epoch'] == 1
    assert_same_tensors(ddp_last['student'], fsdp_last['student'])
    assert_same_tensors(ddp_last['teacher'], fsdp_last['teacher'])


def test_fsdp_bad_input_is_one_line():
    from pesf_ext.engine.speed import check_speed_fits, speed_options
    from pesf_ext.lm.runner import get_lm_args
    args = get_lm_args(['--config', 'x.yaml', '--fsdp', 'student', 'teacher', '--gradient_checkpointing', 'teacher'])
    options = speed_options({'speed': {'fsdp': ['student']}}, args)  # the command line wins over the YAML
    assert options.fsdp == ('student', 'teacher') and options.gradient_checkpointing == ('teacher',)
    with pytest.raises(ConfigError, match=r'^speed.fsdp: unknown model `teachers`'):
        speed_options({'speed': {'fsdp': ['teachers']}})
    with pytest.raises(ConfigError, match=r'^speed.fsdp: cannot be combined with speed.amp: fp16'):
        check_speed_fits(speed_options({'speed': {'fsdp': ['student'], 'amp': 'fp16'}}), {'train': {}})


def test_one_optimizer_cannot_mix_sharded_and_whole_weights():
    from torch import nn
    from pesf_ext.engine.fsdp import check_sides
    student, teacher, frozen = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match=r'^speed.fsdp: the teacher trains too'):
        check_sides({'student': student, 'teacher': teacher}, ('student',))
    check_sides({'student': student, 'teacher': frozen}, ('student',))  # a frozen teacher may stay whole
    check_sides({'student': student, 'teacher': frozen}, ('teacher',))  # or be sharded alone
