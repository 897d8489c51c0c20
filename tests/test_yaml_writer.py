"""tools/yaml_writer.py: what it writes reads back (as torchdistill reads YAML) to the data it was given, with named
anchors that conftest's set_anchor can rewrite, torchdistill tags, and comments where asked."""
import pytest
import yaml
from torchdistill.common import yaml_util

from conftest import set_anchor
from yaml_writer import alias, anchor, dump_config, import_call, import_get, join, note, tagged


class TagLoader(yaml.FullLoader):
    """PyYAML's FullLoader (torchdistill's) with every ``!tag`` kept as {'!tag': value} and ``!join`` joined."""
    # an own table: torchdistill's load_yaml_file adds its tag constructors to FullLoader's, which would run them
    yaml_constructors = {tag: constructor for tag, constructor in yaml.FullLoader.yaml_constructors.items()
                         if not (tag or '').startswith('!')}


def _tag(loader, suffix, node):
    if suffix == 'join':
        return yaml_util.yaml_join(loader, node)
    value = loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else \
        loader.construct_sequence(node, deep=True)
    return {'!' + suffix: value}


TagLoader.add_multi_constructor('!', _tag)


def load(text):
    return yaml.load(text, Loader=TagLoader)


def sample():
    return {
        'settings': {'ckpt_root': anchor('ckpt_root', './ckpt'), 'num_epochs': anchor('num_epochs', 30),
                     'num_samples': note(anchor('num_samples', None), 'null = all'), 'lr': 2e-5, 'eps': 1e-7,
                     'weight': 30000.0, 'flag': True},
        'datasets': {anchor('train', 'toy/train'): import_call('toy.Dataset', {
            'normalize': anchor('normalize', {'mean': [0.5, 0.25]}), 'to_tensor': import_call('ToTensor')})},
        'train': {'num_epochs': alias('num_epochs'), 'dataset_id': note(alias('train'), 'the train set', above=True),
                  'dst_ckpt': join(alias('ckpt_root'), '/x.pt'), 'normalize': alias('normalize'),
                  'sampler': import_get('torch.utils.data.RandomSampler'),
                  'weights': tagged('!getattr', [import_get('Weights'), 'V1']),
                  'hooks': {'input': [], 'output': ['avgpool']},
                  'groups': [{'module': 'fc', 'lr': 0.05}]},
    }


def test_reads_back_as_the_data_with_tags_and_aliases():
    loaded = load(dump_config(sample(), ['header']))
    assert loaded == {
        'settings': {'ckpt_root': './ckpt', 'num_epochs': 30, 'num_samples': None, 'lr': 2e-5, 'eps': 1e-7,
                     'weight': 30000.0, 'flag': True},
        'datasets': {'toy/train': {'!import_call': {'key': 'toy.Dataset', 'init': {'kwargs': {
            'normalize': {'mean': [0.5, 0.25]},
            'to_tensor': {'!import_call': {'key': 'ToTensor', 'init': None}}}}}}},
        'train': {'num_epochs': 30, 'dataset_id': 'toy/train', 'dst_ckpt': './ckpt/x.pt',
                  'normalize': {'mean': [0.5, 0.25]},
                  'sampler': {'!import_get': {'key': 'torch.utils.data.RandomSampler'}},
                  'weights': {'!getattr': [{'!import_get': {'key': 'Weights'}}, 'V1']},
                  'hooks': {'input': [], 'output': ['avgpool']}, 'groups': [{'module': 'fc', 'lr': 0.05}]},
    }
    assert isinstance(loaded['settings']['lr'], float) and isinstance(loaded['settings']['weight'], float)
    # an alias is the anchored object itself, as YAML defines it
    dataset_kwargs = loaded['datasets']['toy/train']['!import_call']['init']['kwargs']
    assert loaded['train']['normalize'] is dataset_kwargs['normalize']


def test_layout_anchors_comments():
    text = dump_config(sample(), ['what this is', 'how to run it'])
    lines = text.splitlines()
    assert lines[:3] == ['# what this is', '# how to run it', 'settings:']
    assert '  num_epochs: &num_epochs 30' in lines and '  num_epochs: *num_epochs' in lines
    assert '  lr: 0.00002' in lines and '  eps: 0.0000001' in lines       # YAML 1.1 reads '2e-05' as a string
    assert '  &train toy/train: !import_call' in lines and '  dataset_id: *train' in lines
    assert lines[lines.index('  dataset_id: *train') - 1] == '  # the train set'
    assert any(line.startswith('  num_samples: &num_samples null') and line.endswith('  # null = all')
               for line in lines)
    assert "  dst_ckpt: !join [*ckpt_root, '/x.pt']" in lines and "    output: ['avgpool']" in lines
    assert lines[lines.index('datasets:') - 1] == '' and lines[lines.index('train:') - 1] == ''


def test_anchored_scalars_can_be_rewritten_by_set_anchor():
    text = dump_config(sample())
    text = set_anchor(set_anchor(set_anchor(text, 'num_epochs', 2), 'num_samples', 8), 'ckpt_root', '/tmp/c')
    loaded = load(text)
    assert loaded['train']['num_epochs'] == 2 and loaded['settings']['num_samples'] == 8
    assert loaded['train']['dst_ckpt'] == '/tmp/c/x.pt'


@pytest.mark.parametrize('data, message', [
    ({'a': anchor('x', 1), 'b': anchor('x', 2)}, 'anchor &x defined twice'),
    ({'a': alias('x'), 'b': anchor('x', 1)}, 'no anchor &x before it'),
    ({'x': anchor('x', 1), 'a': note(alias('x'), 'c')}, 'an alias takes no end-of-line comment'),
])
def test_bad_data_is_refused(data, message):
    with pytest.raises(ValueError, match=message):
        dump_config(data)


def test_an_object_written_twice_needs_an_anchor():
    shared = {'mean': [0.5]}
    with pytest.raises(ValueError, match='appears twice'):
        dump_config({'a': shared, 'b': shared})


def test_comments_above_keys_sit_at_the_key_and_wrap_to_the_page_width():
    text = dump_config({'a': 1, 'b': note({'groups': [{'module': 'fc', 'lr': note(0.1, 'word ' * 40, above=True)}]},
                                          'about b', above=True)})
    lines = text.splitlines()
    assert lines[:4] == ['a: 1', '', '# about b', 'b:']
    comment = [line for line in lines if line.startswith('      # word')]
    assert len(comment) == 2 and all(len(line) <= 118 for line in comment)
    assert lines[-1] == '      lr: 0.1' and lines[lines.index(comment[0]) - 1] == "    - module: 'fc'"


def test_docstring_example_is_what_dump_config_writes():
    import yaml_writer
    doc = yaml_writer.__doc__
    example = doc[doc.index('Example::') + len('Example::'):doc.index('gives::')]
    expected = doc[doc.index('gives::') + len('gives::'):].strip('\n')
    written = eval(example.strip(), vars(yaml_writer))  # the example is one dump_config(...) call
    assert written == '\n'.join(line[4:] for line in expected.splitlines()) + '\n'
