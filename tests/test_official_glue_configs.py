"""torchdistill's official GLUE configs (configs/official/glue/yoshitomo-matsubara/nlp-oss2023/<task>/{ce,mse,kd}/ in
its repository) run through tools/text_classification.py unchanged apart from the model paths and data files.

The fixtures below keep the structure of those YAMLs (read from torchdistill's repository): the same sections, keys
and tags (``!join``, ``!import_get``), the ``dependencies: [{name: 'custom'}]`` entry, the model-loss criterion of
the CE / MSE configs (``func2extract_model_loss: 'extract_transformers_loss'`` with ``model_term``), the KD configs'
``KDLoss`` on the hooked ``classifier`` outputs (STS-B: ``MSELoss`` in a ``SimpleLossWrapper`` plus the model
loss), MNLI's matched / mismatched splits and its ``glue_ax`` entry, and the ``private`` (leaderboard) section.
Only the model path, ``num_labels`` placement and the data files are set for a tiny BERT and tiny data.

These runs have no ``custom`` package on the path (the runner's empty stand-in takes its place and this project's
registrations serve); tests/test_glue_example_package.py runs the same shapes with a stand-in that behaves like
torchdistill's package.
"""
import math
import os

import pytest
import torch

from glue_fixtures import sentence, write_glue_task, write_tiny_bert

TASKS = {  # task: (folder, num_labels, header, row function)
    'cola': ('CoLA', 2, ('source', 'label', 'mark', 'sentence'), lambda r, i: ('src', i % 2, '', sentence(r))),
    'sst2': ('SST-2', 2, ('sentence', 'label'), lambda r, i: (sentence(r), i % 2)),
    'mrpc': ('MRPC', 2, ('Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'),
             lambda r, i: (i % 2, i, i + 100, sentence(r), sentence(r))),
    'stsb': ('STS-B', 1, ('sentence1', 'sentence2', 'score'),
             lambda r, i: (sentence(r), sentence(r), round(r.uniform(0, 5), 2))),
    'qqp': ('QQP', 2, ('id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'),
            lambda r, i: (i, i, i + 1, sentence(r), sentence(r), i % 2)),
    'mnli': ('MNLI', 3, ('premise', 'hypothesis', 'label'),
             lambda r, i: (sentence(r), sentence(r), ('entailment', 'neutral', 'contradiction')[i % 3])),
    'qnli': ('QNLI', 2, ('index', 'question', 'sentence', 'label'),
             lambda r, i: (i, sentence(r), sentence(r), ('entailment', 'not_entailment')[i % 2])),
    'rte': ('RTE', 2, ('sentence1', 'sentence2', 'label'),
            lambda r, i: (sentence(r), sentence(r), ('entailment', 'not_entailment')[i % 2])),
    'wnli': ('WNLI', 2, ('sentence1', 'sentence2', 'label'), lambda r, i: (sentence(r), sentence(r), i % 2)),
}


def write_data(data_dir, task):
    folder, _, header, rows = TASKS[task]
    write_glue_task(data_dir, folder, rows, header, num_train=24, num_dev=12)
    if task == 'mnli':  # GLUE's MNLI has dev_matched and dev_mismatched, no dev
        base = os.path.join(data_dir, folder)
        os.rename(os.path.join(base, 'dev.tsv'), os.path.join(base, 'dev_matched.tsv'))
        write_glue_task(str(data_dir) + '_mm', folder, rows, header, num_train=1, num_dev=8, seed=1)
        os.rename(os.path.join(str(data_dir) + '_mm', folder, 'dev.tsv'), os.path.join(base, 'dev_mismatched.tsv'))


def model_entry(role, key, path, num_labels, experiment):
    """A ``models`` entry as the official configs write it (MNLI / STS-B put num_labels at the top, the others in
    config_kwargs)."""
    top = f'    num_labels: {num_labels}\n' if num_labels != 2 else ''
    in_config = f'      num_labels: {num_labels}\n' if num_labels == 2 else ''
    return (f"  {role}:\n    key: &{role}_key '{key}'\n    model_name_or_path: &{role}_path '{path}'\n{top}"
            f"    config_kwargs:\n      pretrained_model_name_or_path: *{role}_path\n{in_config}"
            f"    tokenizer_kwargs:\n      pretrained_model_name_or_path: *{role}_path\n      do_lower: True\n"
            f"      use_fast: True\n    model_kwargs:\n      pretrained_model_name_or_path: *{role}_path\n"
            + (f"    _experiment: &student_experiment !join [*dataset_name, '-', *{role}_key]\n    src_ckpt:\n"
               f"    dst_ckpt: !join ['{experiment}/', *student_experiment]\n" if role == 'student_model' else ''))


LOADER = """    sampler:{sampler}
      class_or_func: !import_get
        key: 'torch.utils.data.{kind}Sampler'
      kwargs:
    kwargs:
      batch_size: {batch_size}
      num_workers: 0
      pin_memory: True
      drop_last: False
    collate_fn: 'DataCollatorWithPadding'
"""


def side(name, hooked):
    hook = "    forward_hook:\n      input: []\n      output: ['classifier']\n" if hooked else ''
    return (f"  {name}:\n    forward_proc: 'forward_batch_as_kwargs'\n    adaptations:\n    sequential: []\n"
            f"{hook}    wrapper:\n    requires_grad: {name != 'teacher'}\n    frozen_modules: []\n")


def criterion(shape):
    if shape in ('ce', 'mse'):
        return ("  criterion:\n    key: 'WeightedSumLoss'\n    func2extract_model_loss: 'extract_transformers_loss'\n"
                "    kwargs:\n      model_term:\n        weight: 1.0\n")
    if shape == 'kd_stsb':
        return ("  criterion:\n    key: 'WeightedSumLoss'\n    func2extract_model_loss: 'extract_transformers_loss'\n"
                "    kwargs:\n      model_term:\n        weight: 1.0\n      sub_terms:\n        mse:\n"
                "          criterion:\n"
                "            key: 'MSELoss'\n            kwargs:\n              reduction: 'sum'\n"
                "          criterion_wrapper:\n            key: 'SimpleLossWrapper'\n            kwargs:\n"
                "              input:\n                is_from_teacher: False\n"
                "                module_path: 'classifier'\n"
                "                io: 'output'\n              target:\n                is_from_teacher: True\n"
                "                module_path: 'classifier'\n                io: 'output'\n          weight: 1.0\n")
    return ("  criterion:\n    key: 'WeightedSumLoss'\n    kwargs:\n      sub_terms:\n        kd:\n"
            "          criterion:\n"
            "            key: 'KDLoss'\n            kwargs:\n              student_module_path: 'classifier'\n"
            "              student_module_io: 'output'\n              teacher_module_path: 'classifier'\n"
            "              teacher_module_io: 'output'\n              temperature: 5.0\n              alpha: 0.9\n"
            "              reduction: 'batchmean'\n          weight: 1.0\n")


def official_config(task, shape, teacher_dir, student_dir, ckpt_dir):
    """YAML text with the structure of torchdistill's official GLUE config ``<task>/<ce|mse|kd>/...yaml``."""
    _, num_labels, _, _ = TASKS[task]
    kd = shape.startswith('kd')
    if task == 'mnli':
        id_map = ("      train: &glue_train !join [*dataset_name, '/train']\n"
                  "      validation_matched: &glue_val !join [*dataset_name, '/val_m']\n"
                  "      test_matched: &glue_test !join [*dataset_name, '/test_m']\n"
                  "      validation_mismatched: &glue_val_mm !join [*dataset_name, '/val_mm']\n"
                  "      test_mismatched: &glue_test_mm !join [*dataset_name, '/test_mm']\n"
                  "  glue_ax:\n    key: &ax_dataset_key 'ax'\n    base_split_name: 'test'\n    raw_data_kwargs:\n"
                  "      train_file_path:\n      valid_file_path:\n    dataset_id_map:\n"
                  "      test: &glue_test_ax !join [*ax_dataset_key, '/test_ax']\n")
    else:
        id_map = ("      train: &glue_train !join [*dataset_name, '/train']\n"
                  "      validation: &glue_val !join [*dataset_name, '/val']\n"
                  "      test: &glue_test !join [*dataset_name, '/test']\n")
    models = (model_entry('teacher_model', 'bert-large-uncased', teacher_dir, num_labels, ckpt_dir) if kd else '') \
        + model_entry('student_model', 'bert-base-uncased', student_dir, num_labels, ckpt_dir)
    sides = side('teacher', True) + side('student', True) if kd else side('model', False)
    return (f"dependencies:\n  - name: 'custom'\n\ndatasets:\n  glue:\n    name: &dataset_name '{task}'\n"
            f"    raw_data_kwargs:\n      train_file_path:\n      valid_file_path:\n    dataset_id_map:\n{id_map}\n"
            f"models:\n{models}\n"
            f"train:\n  log_freq: 50\n  num_epochs: 1\n  train_data_loader:\n    dataset_id: *glue_train\n"
            + LOADER.format(sampler='', kind='Random', batch_size=8) + "    requires_supp: False\n"
            + "  val_data_loader:\n    dataset_id: *glue_val\n"
            + LOADER.format(sampler=' &val_sampler', kind='Sequential', batch_size=8) + "    requires_supp: False\n"
            + sides
            + "  optimizer:\n    key: 'optimizer_no_decay'\n    kwargs:\n      optimizer_key: 'AdamW'\n"
              "      lr: 1.0e-4\n      weight_decay: 0.0\n    filters_params: False\n    max_grad_norm: 1.0\n"
              "    grad_accum_step: 1\n"
              "  scheduler:\n    key: 'get_linear_schedule_with_warmup'\n    kwargs:\n      num_warmup_steps: 0\n"
              "      num_training_steps:\n    scheduling_step: 1\n"
            + criterion(shape)
            + "\ntest:\n  test_data_loader:\n    dataset_id: *glue_val\n    sampler: *val_sampler\n    kwargs:\n"
              "      batch_size: 8\n      num_workers: 0\n      pin_memory: True\n      drop_last: False\n"
              "    collate_fn: 'DataCollatorWithPadding'\n\n"
              f"private:\n  - private_data_loader:\n      dataset_id: *glue_test\n      task_name: {task}\n"
              "      sampler: *val_sampler\n      kwargs:\n        batch_size: 8\n"
              "      collate_fn: 'DataCollatorWithPadding'\n"
              f"    idx2str: True\n    pred_output: '{task.upper()}.tsv'\n")


# one config per shape: CE on a single-sentence and on a pair task, STS-B's MSE (regression through the model loss),
# KD on a pair task, STS-B's KD (MSE to the teacher + model loss), MNLI's KD (three classes, two dev sets, AX)
SHAPES = [('cola', 'ce'), ('rte', 'ce'), ('stsb', 'mse'), ('rte', 'kd'), ('stsb', 'kd_stsb'), ('mnli', 'kd')]
ALL_TASK_SHAPES = [(task, 'mse' if task == 'stsb' else 'ce') for task in TASKS] \
    + [(task, 'kd_stsb' if task == 'stsb' else 'kd') for task in TASKS]


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory):
    pytest.importorskip('transformers')
    root = tmp_path_factory.mktemp('official_models')
    return write_tiny_bert(str(root / 'teacher'), num_layers=2), write_tiny_bert(str(root / 'student'), num_layers=1)


def run_official(task, shape, tiny_models, tmp_path):
    from pesf_ext.nlp.runner import get_text_args, run_text
    data_dir = tmp_path / 'glue'
    write_data(str(data_dir), task)
    path = tmp_path / f'{task}_{shape}.yaml'
    path.write_text(official_config(task, shape, *tiny_models, str(tmp_path / 'ckpt')))
    args = get_text_args(['--config', str(path), '--data_dir', str(data_dir), '--device', 'cpu', '--seed', '0',
                          '--max_steps_per_epoch', '2'])
    return run_text(args)


@pytest.mark.parametrize('task,shape', SHAPES, ids=[f'{t}-{s}' for t, s in SHAPES])
def test_official_config_shape_trains_and_tests(task, shape, tiny_models, tmp_path):
    results = run_official(task, shape, tiny_models, tmp_path)
    from pesf_ext.data.glue import GLUE_TASKS
    for name in GLUE_TASKS[task].metrics:
        assert math.isfinite(results['test']['student'][name])
    assert ('teacher' in results['test']) == shape.startswith('kd')


@pytest.mark.parametrize('task,shape', ALL_TASK_SHAPES, ids=[f'{t}-{s}' for t, s in ALL_TASK_SHAPES])
def test_official_config_parses_for_every_task(task, shape, tiny_models, tmp_path):
    """Every task's CE/MSE and KD config passes the runner's checks (files found, keys known) before training."""
    from pesf_ext.engine.config import load_config
    from pesf_ext.nlp.runner import GlueData, apply_command_line, get_text_args
    data_dir = tmp_path / 'glue'
    write_data(str(data_dir), task)
    path = tmp_path / 'c.yaml'
    path.write_text(official_config(task, shape, *tiny_models, str(tmp_path / 'ckpt')))
    args = get_text_args(['--config', str(path), '--data_dir', str(data_dir)])
    config = apply_command_line(load_config(str(path)), args)
    GlueData().check(config)


def kd_box_inputs(seed=0, rows=6, classes=3):
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(rows, classes, generator=g) * 3, torch.randn(rows, classes, generator=g) * 3
    labels = torch.randint(classes, (rows,), generator=g)
    io_dict = {'student': {'classifier': {'output': student}}, 'teacher': {'classifier': {'output': teacher}}}
    return io_dict, student, teacher, labels


def official_kd_criterion():
    return {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {'kd': {'criterion': {'key': 'KDLoss', 'kwargs': {
        'student_module_path': 'classifier', 'student_module_io': 'output', 'teacher_module_path': 'classifier',
        'teacher_module_io': 'output', 'temperature': 5.0, 'alpha': 0.9, 'reduction': 'batchmean'}},
        'weight': 1.0}}}}


@pytest.mark.parametrize('targets_key', [None, 'labels'])
def test_official_kd_objective_is_the_soft_kl_alone_unless_labels_are_asked_for(targets_key):
    """torchdistill's GLUE script calls the criterion with targets=None, so its KDLoss (alpha 0.9, T 5) is the
    unscaled KL alone; ``criterion_targets: 'labels'`` (this project's configs) gives 0.9 CE + 0.1 T^2 KL."""
    from torchdistill.losses.registry import get_high_level_loss
    import pesf_ext.nlp  # noqa: F401  (registers CriterionWithoutTargets)
    from pesf_ext.nlp.runner import apply_criterion_targets
    config = {'train': {'criterion': official_kd_criterion()}}
    if targets_key:
        config['train']['criterion_targets'] = targets_key
    apply_criterion_targets(config)
    assert 'criterion_targets' not in config['train']
    criterion = get_high_level_loss(config['train']['criterion'])
    io_dict, student, teacher, labels = kd_box_inputs()
    value = criterion(io_dict, {}, labels)
    p_t = torch.softmax(teacher / 5.0, dim=1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / 5.0, dim=1))).sum() / student.shape[0]
    expected = kl if targets_key is None else 0.9 * torch.nn.functional.cross_entropy(student, labels) \
        + 0.1 * 25.0 * kl
    torch.testing.assert_close(value, expected)


def test_model_loss_reaches_the_criterion():
    """The CE config's model_term: the labels go to the model, whose own loss extract_transformers_loss hands over
    (the runner stripped them before, so Hugging Face returned loss None and the sum raised a TypeError)."""
    from transformers import BertConfig, BertForSequenceClassification
    from torchdistill.core.interfaces.registry import get_forward_proc_func
    from torchdistill.losses.registry import get_func2extract_model_output
    import pesf_ext.nlp  # noqa: F401
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16, num_labels=2))
    batch = {'input_ids': torch.randint(5, 30, (4, 7)), 'attention_mask': torch.ones(4, 7, dtype=torch.long)}
    labels = torch.tensor([0, 1, 1, 0])
    outputs = get_forward_proc_func('forward_batch_as_kwargs')(model, batch, labels)
    loss = get_func2extract_model_output('extract_transformers_loss')(outputs, labels)['loss']
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(outputs.logits, labels))


def test_mnli_matched_and_mismatched_dev_sets(tiny_models, tmp_path):
    from transformers import AutoTokenizer
    from pesf_ext.data.glue import build_glue_datasets
    write_data(str(tmp_path / 'glue'), 'mnli')
    spec = {'name': 'mnli', 'raw_data_kwargs': {'data_dir': str(tmp_path / 'glue')},
            'dataset_id_map': {'train': 't', 'validation_matched': 'vm', 'test_matched': 'tm',
                               'validation_mismatched': 'vmm', 'test_mismatched': 'tmm'}}
    out = build_glue_datasets(spec, AutoTokenizer.from_pretrained(tiny_models[1]))
    assert {k: len(v) for k, v in out.items()} == {'t': 24, 'vm': 12, 'tm': 12, 'vmm': 8, 'tmm': 8}
