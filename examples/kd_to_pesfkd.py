"""The minimal change that turns a torchdistill KD config into PESF-KD or Z-score KD, as code.

    python examples/kd_to_pesfkd.py configs/fashion_mnist/resnet56_resnet20_kd.yaml --method pesfkd

prints the three sections of ``train`` that change (``teacher``, ``optimizer``, ``criterion``) as YAML to paste over
yours. The KD config is read without running its tags (``!import_call`` and friends are kept as they are), so
nothing is built. tests/test_examples.py checks that these functions turn the shipped
``configs/fashion_mnist/resnet56_resnet20_kd.yaml`` into the shipped
``configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml`` and ``configs/fashion_mnist/resnet56_resnet20_zscore.yaml``.
"""
import argparse
import copy

import yaml

DEFAULT_ADAPTERS = [{'modules': ['layer3.8'], 'kind': 'bottleneck', 'bottleneck': 32}]


class Tagged(tuple):
    """A YAML tag and its value, read and written back unchanged."""


class KeepTags(yaml.SafeLoader):
    pass


def keep_tag(loader, suffix, node):
    if isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged(('!' + suffix, value))


KeepTags.add_multi_constructor('!', keep_tag)


def load_config(path):
    with open(path) as f:
        return yaml.load(f, Loader=KeepTags)


def kd_term(config):
    """(name, sub-term) of the KD loss in ``train.criterion`` (a ``WeightedSumLoss`` with one KD sub-term)."""
    sub_terms = config['train']['criterion']['kwargs']['sub_terms']
    names = [name for name, term in sub_terms.items() if term['criterion']['key'] in ('KDLoss', 'LogitKDLoss')]
    if len(names) != 1:
        raise ValueError(f'expected one KDLoss sub-term in train.criterion.kwargs.sub_terms, found {names}')
    return names[0], sub_terms


def to_pesfkd(config, adapters=DEFAULT_ADAPTERS, input_shape=(1, 3, 32, 32), adapter_lr=2e-5):
    """PESF-KD: adapters on the teacher (``AdapterTeacher``), its forward with grad, an optimizer group of their
    own, and ``PESFKDLoss`` in place of ``KDLoss`` (same temperature and weights)."""
    config = copy.deepcopy(config)
    train = config['train']
    wrapper = {'adapters': copy.deepcopy(adapters)}
    if input_shape is not None:
        wrapper['input_shape'] = list(input_shape)
    teacher = {}
    for key, value in train['teacher'].items():   # the wrapper goes where the shipped configs put it
        teacher[key] = value
        if key == 'sequential':
            teacher['auxiliary_model_wrapper'] = {'key': 'AdapterTeacher', 'kwargs': wrapper}
    teacher.setdefault('auxiliary_model_wrapper', {'key': 'AdapterTeacher', 'kwargs': wrapper})
    teacher['requires_grad'] = True            # only the adapters have trainable parameters on that side
    train['teacher'] = teacher
    optimizer = train['optimizer']
    groups = optimizer.get('module_wise_configs') or []
    if not groups:
        # a non-empty list trains ONLY the modules it names: list the student too. '*' (every student module not
        # listed) is this project's runner's shorthand; with torchdistill's own scripts, list the modules by name.
        groups = [{'module': '*', 'is_teacher': False}]
    groups.append({'module': 'adapters', 'is_teacher': True, 'kwargs': {**optimizer['kwargs'], 'lr': adapter_lr}})
    optimizer['module_wise_configs'] = groups
    name, sub_terms = kd_term(config)
    term = sub_terms.pop(name)
    term['criterion']['key'] = 'PESFKDLoss'
    term['criterion']['kwargs']['teacher_kl'] = 'reverse'     # paper eq. 8
    sub_terms['pesfkd'] = term
    return config


def to_zscore(config, temperature=2.0, ce_weight=0.1, kd_weight=9.0):
    """Z-score KD: ``ZScoreKDLoss`` in place of ``KDLoss`` with the Z-score paper's tau, lambda_CE and lambda_KD;
    the teacher stays frozen, nothing else changes."""
    config = copy.deepcopy(config)
    name, sub_terms = kd_term(config)
    term = sub_terms.pop(name)
    kwargs = term['criterion']['kwargs']
    term['criterion']['key'] = 'ZScoreKDLoss'
    kwargs.update(temperature=temperature, alpha=ce_weight, beta=kd_weight, std='unbiased')
    sub_terms['zscore'] = term
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('kd_config', help='a torchdistill KD config (a WeightedSumLoss with one KDLoss sub-term)')
    parser.add_argument('--method', default='pesfkd', choices=('pesfkd', 'zscore'))
    args = parser.parse_args(argv)
    config = load_config(args.kd_config)
    new = (to_pesfkd if args.method == 'pesfkd' else to_zscore)(config)
    sections = {key: new['train'][key] for key in ('teacher', 'optimizer', 'criterion')
                if new['train'][key] != config['train'][key]}
    text = yaml.safe_dump({'train': sections}, sort_keys=False, default_flow_style=False)
    print(text, end='')
    return text


if __name__ == '__main__':
    main()
