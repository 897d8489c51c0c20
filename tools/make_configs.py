"""Writes every YAML under configs/ from one table of set-ups, so all methods share the same data, schedule and
models (a fair comparison is the point). ``python tools/make_configs.py`` rewrites them;
``tests/test_configs.py`` checks that the committed files are what this script writes.

The YAML files are plain torchdistill 1.x configs: edit a generated file by hand if you like, but then the sync
test will remind you to move the change here.
"""
import os
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@dataclass(frozen=True)
class Dataset:
    name: str
    num_classes: int
    input_shape: tuple
    blocks: str                         # YAML of the three datasets, defining anchors &train, &val, &test
    batch_size: int
    lr: float
    weight_decay: float
    num_epochs: int
    scheduler: str                      # YAML of the scheduler
    num_workers: int
    log_freq: int
    ckpt_root: str
    teacher_from_training: bool = True  # teacher weights from our own CE run (else: pretrained kwargs)


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    teacher_kwargs: str = ''            # extra YAML kwargs of the teacher (e.g. torchvision weights)
    adapter_modules: tuple = ()         # bottleneck-adapter targets on the teacher (PESF-KD eq. 6)
    name: str = ''

    @property
    def tag(self):
        return self.name or f'{self.teacher}_{self.student}'


@dataclass(frozen=True)
class Method:
    name: str
    criterion: str                      # YAML of sub_terms, with {placeholders}
    teacher_side: str = 'frozen'        # frozen | adapters | full
    extra: dict = field(default_factory=dict)


FASHION_MNIST_BLOCK = """\
  &train fashion_mnist/train: !import_call
    key: 'pesf_ext.data.fashion_mnist'
    init:
      kwargs:
        root: &root_dir './resource/dataset/fashion_mnist'
        split: 'train'
        num_samples: &num_train_samples null   # null = all 55,000 (5,000 of the 60,000 are held out for val)
        transform: !import_call
          key: 'pesf_ext.data.fashion_mnist_transform'
          init:
            kwargs:
              train: True
  &val fashion_mnist/val: !import_call
    key: 'pesf_ext.data.fashion_mnist'
    init:
      kwargs:
        root: *root_dir
        split: 'val'
        transform: &eval_transform !import_call
          key: 'pesf_ext.data.fashion_mnist_transform'
          init:
            kwargs:
              train: False
  &test fashion_mnist/test: !import_call
    key: 'pesf_ext.data.fashion_mnist'
    init:
      kwargs:
        root: *root_dir
        split: 'test'
        num_samples: &num_test_samples null    # null = all 10,000
        transform: *eval_transform
"""

CIFAR100_BLOCK = """\
  &train cifar100/train: !import_call
    key: 'torchvision.datasets.CIFAR100'
    init:
      kwargs:
        root: &root_dir './resource/dataset/cifar100'
        train: True
        download: True
        transform: !import_call
          key: 'torchvision.transforms.Compose'
          init:
            kwargs:
              transforms:
                - !import_call
                  key: 'torchvision.transforms.RandomCrop'
                  init:
                    kwargs:
                      size: 32
                      padding: 4
                - !import_call
                  key: 'torchvision.transforms.RandomHorizontalFlip'
                  init:
                    kwargs:
                      p: 0.5
                - !import_call
                  key: 'torchvision.transforms.ToTensor'
                  init:
                - !import_call
                  key: 'torchvision.transforms.Normalize'
                  init:
                    kwargs: &normalize_kwargs
                      mean: [0.5071, 0.4865, 0.4409]
                      std: [0.2673, 0.2564, 0.2762]
  &val cifar100/test: !import_call
    key: 'torchvision.datasets.CIFAR100'
    init:
      kwargs:
        root: *root_dir
        train: False
        download: True
        transform: !import_call
          key: 'torchvision.transforms.Compose'
          init:
            kwargs:
              transforms:
                - !import_call
                  key: 'torchvision.transforms.ToTensor'
                  init:
                - !import_call
                  key: 'torchvision.transforms.Normalize'
                  init:
                    kwargs: *normalize_kwargs
"""

IMAGENET_BLOCK = """\
  &train ilsvrc2012/train: !import_call
    key: 'torchvision.datasets.ImageFolder'
    init:
      kwargs:
        root: !join [&root_dir '~/datasets/ilsvrc2012', '/train']
        transform: !import_call
          key: 'torchvision.transforms.Compose'
          init:
            kwargs:
              transforms:
                - !import_call
                  key: 'torchvision.transforms.RandomResizedCrop'
                  init:
                    kwargs:
                      size: &input_size [224, 224]
                - !import_call
                  key: 'torchvision.transforms.RandomHorizontalFlip'
                  init:
                    kwargs:
                      p: 0.5
                - !import_call
                  key: 'torchvision.transforms.ToTensor'
                  init:
                - !import_call
                  key: 'torchvision.transforms.Normalize'
                  init:
                    kwargs: &normalize_kwargs
                      mean: [0.485, 0.456, 0.406]
                      std: [0.229, 0.224, 0.225]
  &val ilsvrc2012/val: !import_call
    key: 'torchvision.datasets.ImageFolder'
    init:
      kwargs:
        root: !join [*root_dir, '/val']
        transform: !import_call
          key: 'torchvision.transforms.Compose'
          init:
            kwargs:
              transforms:
                - !import_call
                  key: 'torchvision.transforms.Resize'
                  init:
                    kwargs:
                      size: 256
                - !import_call
                  key: 'torchvision.transforms.CenterCrop'
                  init:
                    kwargs:
                      size: *input_size
                - !import_call
                  key: 'torchvision.transforms.ToTensor'
                  init:
                - !import_call
                  key: 'torchvision.transforms.Normalize'
                  init:
                    kwargs: *normalize_kwargs
"""

FASHION_MNIST = Dataset(
    name='fashion_mnist', num_classes=10, input_shape=(1, 3, 32, 32), blocks=FASHION_MNIST_BLOCK, batch_size=64,
    lr=0.05, weight_decay=5e-4, num_epochs=30, num_workers=2, log_freq=100,
    scheduler="""    key: 'MultiStepLR'
    kwargs:
      milestones: [15, 25]
      gamma: 0.1""", ckpt_root='./resource/ckpt/fashion_mnist')
CIFAR100 = Dataset(
    name='cifar100', num_classes=100, input_shape=(1, 3, 32, 32), blocks=CIFAR100_BLOCK, batch_size=64, lr=0.05,
    weight_decay=5e-4, num_epochs=240, num_workers=8, log_freq=100,
    scheduler="""    key: 'MultiStepLR'
    kwargs:
      milestones: [150, 180, 210]
      gamma: 0.1""", ckpt_root='./resource/ckpt/cifar100')
IMAGENET = Dataset(
    name='ilsvrc2012', num_classes=1000, input_shape=(1, 3, 224, 224), blocks=IMAGENET_BLOCK, batch_size=256,
    lr=0.1, weight_decay=1e-4, num_epochs=100, num_workers=16, log_freq=1000,
    scheduler="""    key: 'StepLR'
    kwargs:
      step_size: 30
      gamma: 0.1""", ckpt_root='./resource/ckpt/ilsvrc2012', teacher_from_training=False)

FTKD_TEACHER_LR = 1e-3                  # PESF-KD paper: the fine-tuned teacher's learning rate
RESNET_CIFAR_ADAPTERS = ('layer3.?',)   # every block of the last stage; pattern '?' = one character
PAIRS_CIFAR = (
    Pair('resnet56', 'resnet20', adapter_modules=RESNET_CIFAR_ADAPTERS),
    Pair('resnet110', 'resnet32', adapter_modules=('layer3.?', 'layer3.1?')),
    Pair('vgg13', 'vgg8', adapter_modules=('block4',)),
    Pair('resnet56', 'vgg8', adapter_modules=RESNET_CIFAR_ADAPTERS),
)
PAIR_IMAGENET = Pair(
    'resnet50', 'resnet18', name='r50_r18', adapter_modules=('layer4.?',),
    teacher_kwargs="""      num_classes: 1000
      weights: !getattr [!import_get {key: 'torchvision.models.ResNet50_Weights'}, 'IMAGENET1K_V1']
""")

KD = """        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
{logits}              temperature: 4.0
              alpha: 0.1        # torchdistill: alpha weights CE; the paper's alpha (KL weight) is beta = 0.9
              beta: 0.9
              reduction: 'batchmean'
          weight: 1.0
"""
PESFKD = """        pesfkd:
          criterion:
            key: 'PESFKDLoss'
            kwargs:
{logits}              temperature: {temperature}
              alpha: 0.1        # CE weight; the paper's alpha (KL weight) is beta
              beta: {beta}
              teacher_kl: 'reverse'   # eq. 8; 'shared' = the authors' released code
              logit_standardization: {zscore}
              reduction: 'batchmean'
          weight: 1.0
"""
FTKD = """        ftkd:
          criterion:
            key: 'FTKDLoss'
            kwargs:
{logits}              temperature: 4.0
              alpha: 0.1
              beta: 0.9
              teacher_ce_weight: 1.0
              logit_standardization: {zscore}
              reduction: 'batchmean'
          weight: 1.0
"""
ZSCORE = """        zscore:
          criterion:
            key: 'ZScoreKDLoss'
            kwargs:
{logits}              temperature: 2.0  # Z-score paper: base temperature 2, lambda_CE 0.1, lambda_KD 9
              alpha: 0.1
              beta: 9.0
              std: 'unbiased'
              reduction: 'batchmean'
          weight: 1.0
"""
CE_STUDENT = """        ce:
          criterion:
            key: 'CrossEntropyLoss'
            kwargs:
              reduction: 'mean'
          criterion_wrapper:
            key: 'SimpleLossWrapper'
            kwargs:
              input:
                is_from_teacher: False
                module_path: '.'
                io: 'output'
              target:
                uses_label: True
          weight: 1.0
"""
LOGITS = """              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
"""

METHODS = {
    'kd': Method('kd', KD),
    'pesfkd': Method('pesfkd', PESFKD.format(logits='{logits}', temperature=4.0, beta=0.9, zscore=False),
                     teacher_side='adapters'),
    'ftkd': Method('ftkd', FTKD.replace('{zscore}', 'False'), teacher_side='full'),
    'zscore': Method('zscore', ZSCORE),
    'pesfkd_zscore': Method('pesfkd_zscore', PESFKD.format(logits='{logits}', temperature=2.0, beta=9.0,
                                                           zscore=True), teacher_side='adapters'),
}


def trainable_children(model_key, num_classes):
    """Names of the direct children that hold parameters (for module_wise_configs)."""
    import pesf_ext  # noqa: F401
    from pesf_ext.engine.models import build_model
    import torch
    model = build_model({'key': model_key, 'kwargs': {'num_classes': num_classes}}, torch.device('cpu'), False,
                        'models')
    return [name for name, child in model.named_children() if any(True for _ in child.parameters())]


def module_wise(model_key, num_classes, lr, weight_decay, is_teacher=False):
    lines = []
    for name in trainable_children(model_key, num_classes):
        lines.append(f"""      - module: '{name}'
        is_teacher: {is_teacher}
        kwargs:
          lr: {lr}
          momentum: 0.9
          weight_decay: {weight_decay}""")
    return '\n'.join(lines)


def models_block(data, pair, ckpt_dir, experiment):
    teacher_kwargs = pair.teacher_kwargs or f"""      num_classes: {data.num_classes}
"""
    if data.teacher_from_training:
        teacher_ckpt = f"!join [*ckpt_root, '/ce/{data.name}-{pair.teacher}.pt']"
    else:
        teacher_ckpt = ''
    return f"""models:
  teacher_model:
    key: '{pair.teacher}'
    kwargs:
{teacher_kwargs}    src_ckpt: {teacher_ckpt}
  student_model:
    key: '{pair.student}'
    kwargs:
      num_classes: {data.num_classes}
    src_ckpt:
    dst_ckpt: !join [*ckpt_root, '/{ckpt_dir}/{experiment}.pt']
"""


def loader_block(data, dataset_anchor, train):
    sampler = 'RandomSampler' if train else 'SequentialSampler'
    return f"""    dataset_id: *{dataset_anchor}
    sampler:
      class_or_func: !import_get
        key: 'torch.utils.data.{sampler}'
      kwargs:
    kwargs:
      batch_size: {data.batch_size if train else 2 * data.batch_size}
      num_workers: *num_workers
      pin_memory: True
      drop_last: False
"""


def teacher_block(data, pair, method):
    if method.teacher_side == 'adapters':
        modules = ', '.join(f"'{m}'" for m in pair.adapter_modules)
        shape = list(data.input_shape)
        return f"""  teacher:
    forward_proc: 'forward_batch_only'
    sequential: []
    auxiliary_model_wrapper:
      key: 'AdapterTeacher'
      kwargs:
        adapters:
          - modules: [{modules}]
            kind: 'bottleneck'   # PESF-KD eq. 6: h + relu(h W_down) W_up, W_up zero-initialised
            bottleneck: 32
        input_shape: {shape}
    forward_hook:
      input: []
      output: []
    requires_grad: True          # the teacher forward runs with grad, only the adapters train
    frozen_modules: []
"""
    return f"""  teacher:
    forward_proc: 'forward_batch_only'
    sequential: []
    forward_hook:
      input: []
      output: []
    requires_grad: {method.teacher_side == 'full'}
    frozen_modules: []
"""


def optimizer_block(data, pair, method):
    groups = [module_wise(pair.student, data.num_classes, data.lr, data.weight_decay)]
    if method.teacher_side == 'adapters':
        groups.append(f"""      - module: 'adapters'
        is_teacher: True
        kwargs:
          lr: {data.lr}
          momentum: 0.9
          weight_decay: {data.weight_decay}""")
    elif method.teacher_side == 'full':
        groups.append(module_wise(pair.teacher, data.num_classes, FTKD_TEACHER_LR, data.weight_decay,
                                  is_teacher=True))
    return f"""  optimizer:
    key: 'SGD'
    kwargs:
      lr: {data.lr}
      momentum: 0.9
      weight_decay: {data.weight_decay}
    module_wise_configs:
{chr(10).join(groups)}
"""


def header(data, description):
    return f"""# {description}
# Generated by tools/make_configs.py; run with
#   python tools/image_classification.py --config <this file>
dependencies:
  - name: 'pesf_ext'

settings:
  ckpt_root: &ckpt_root '{data.ckpt_root}'
  num_workers: &num_workers {data.num_workers}
  num_epochs: &num_epochs {data.num_epochs}

datasets:
{data.blocks}
"""


def test_block(data):
    anchor = 'test' if '&test ' in data.blocks else 'val'
    return f"""
test:
  test_data_loader:
{loader_block(data, anchor, train=False)}"""


def distillation_config(data, pair, method):
    experiment = f'{data.name}-{pair.student}_from_{pair.teacher}'
    text = header(data, f'{method.name} on {data.name}: {pair.teacher} -> {pair.student}')
    text += models_block(data, pair, method.name, experiment)
    text += f"""
train:
  log_freq: {data.log_freq}
  num_epochs: *num_epochs
  pre_epoch_process: 'distillation_pre_epoch_process'   # teacher eval where frozen, train where trainable
  train_data_loader:
{loader_block(data, 'train', train=True)}  val_data_loader:
{loader_block(data, 'val', train=False)}{teacher_block(data, pair, method)}  student:
    forward_proc: 'forward_batch_only'
    sequential: []
    forward_hook:
      input: []
      output: []
    requires_grad: True
    frozen_modules: []
{optimizer_block(data, pair, method)}  scheduler:
{data.scheduler}
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
{method.criterion.replace('{logits}', LOGITS)}"""
    return text + test_block(data)


def training_config(data, model_key, role):
    text = header(data, f'cross-entropy training of the {role} ({model_key}) on {data.name}')
    text += f"""models:
  model:
    key: '{model_key}'
    kwargs:
      num_classes: {data.num_classes}
    src_ckpt:
    dst_ckpt: !join [*ckpt_root, '/ce/{data.name}-{model_key}.pt']

train:
  log_freq: {data.log_freq}
  num_epochs: *num_epochs
  train_data_loader:
{loader_block(data, 'train', train=True)}  val_data_loader:
{loader_block(data, 'val', train=False)}  model:
    forward_proc: 'forward_batch_only'
    sequential: []
    forward_hook:
      input: []
      output: []
    requires_grad: True
    frozen_modules: []
  optimizer:
    key: 'SGD'
    kwargs:
      lr: {data.lr}
      momentum: 0.9
      weight_decay: {data.weight_decay}
  scheduler:
{data.scheduler}
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
{CE_STUDENT}"""
    return text + test_block(data)


def all_configs():
    """Maps a path under configs/ to its YAML text."""
    configs = {}
    fm_pair = PAIRS_CIFAR[0]
    configs['fashion_mnist/resnet56_teacher_ce.yaml'] = training_config(FASHION_MNIST, fm_pair.teacher, 'teacher')
    configs['fashion_mnist/resnet20_student_ce.yaml'] = training_config(FASHION_MNIST, fm_pair.student, 'student')
    for name in ('kd', 'pesfkd', 'ftkd', 'zscore', 'pesfkd_zscore'):
        configs[f'fashion_mnist/{fm_pair.tag}_{name}.yaml'] = distillation_config(FASHION_MNIST, fm_pair, METHODS[name])
    teachers = []
    for pair in PAIRS_CIFAR:
        if pair.teacher not in teachers:
            teachers.append(pair.teacher)
            configs[f'cifar100/{pair.teacher}_teacher_ce.yaml'] = training_config(CIFAR100, pair.teacher, 'teacher')
        for name in ('kd', 'pesfkd', 'ftkd', 'zscore'):
            configs[f'cifar100/{pair.tag}_{name}.yaml'] = distillation_config(CIFAR100, pair, METHODS[name])
    for name in ('kd', 'pesfkd', 'ftkd', 'zscore'):
        configs[f'imagenet/{PAIR_IMAGENET.tag}_{name}.yaml'] = distillation_config(IMAGENET, PAIR_IMAGENET,
                                                                                 METHODS[name])
    return configs


def main():
    for rel_path, text in all_configs().items():
        path = os.path.join(ROOT, 'configs', rel_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(text)
        print(path)


if __name__ == '__main__':
    main()
