"""tools/compare.py builds its budget from the Fashion-MNIST configs: another family's config in --methods stops with
one line saying so (before anything is written or run), and a Fashion-MNIST config path is read as its method."""
import pytest

import compare


@pytest.mark.parametrize('method, family, advice', [
    ('configs/cifar100/resnet56_resnet20_kd.yaml', 'cifar100', 'tools/image_classification.py --config '
                                                                'configs/cifar100/<config>.yaml'),
    ('configs/imagenet/r50_r18_pesfkd.yaml', 'imagenet', 'configs/imagenet/<config>.yaml'),
    ('configs/glue_offline/rte/minilm_l6_minilm_l3_kd.yaml', 'glue', 'tools/glue_compare.py'),
    ('configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_kd.yaml', 'causal_lm', 'tools/lm_compare.py'),
])
def test_another_family_is_refused_in_one_line(method, family, advice, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        compare.main(['--methods', 'kd', method, '--out_dir', str(tmp_path / 'out')])
    message = str(done.value.code)
    assert message.startswith(f'--methods {method}: tools/compare.py runs the Fashion-MNIST configs only')
    assert f'for {family} use' in message and advice in message and '\n' not in message
    assert not (tmp_path / 'out').exists()


def test_fashion_mnist_config_paths_are_read_as_methods():
    assert compare.method_names(['configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml', 'kd',
                                 'configs/fashion_mnist/resnet20_student_ce.yaml']) == ['pesfkd', 'kd', 'student_ce']
