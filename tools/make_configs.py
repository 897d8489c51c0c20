"""Writes every YAML under configs/ from one table of set-ups, so all methods share the same data, schedule and
models (a fair comparison is the point). ``python tools/make_configs.py`` rewrites them;
``tests/test_configs.py`` checks that the committed files are what this script writes.

Layout: ``Dataset`` (data, schedule), ``Pair`` (teacher -> student), ``Method`` (loss terms and what the teacher side
trains); a method's terms are small functions of a ``Context`` (dataset, pair, method) that return one
``WeightedSumLoss`` sub-term, so the same term (e.g. CRD) serves alone and on top of PESF-KD. The representation
losses (PKT, RKD, CRD) also decide the forward hooks and, for CRD, the ``Linear4CRD`` wrappers and the
``CRDDatasetWrapper``.

The YAML files are plain torchdistill 1.x configs: edit a generated file by hand if you like, but then the sync
test will remind you to move the change here.
"""
import functools
import os
import sys
import textwrap
from dataclasses import dataclass

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
    train_size: int                     # images in the train split (CRD's memory has one row per image)
    teacher_from_training: bool = True  # teacher weights from our own CE run (else: pretrained kwargs)
    dkd_warmup_epochs: int = 20         # DKD: linear warm-up of its KD terms (authors: 20 of 240 CIFAR epochs)


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    teacher_kwargs: str = ''            # extra YAML kwargs of the teacher (e.g. torchvision weights)
    adapter_modules: tuple = ()         # bottleneck-adapter targets on the teacher (PESF-KD eq. 6)
    name: str = ''
    dkd_beta: float = 8.0               # DKD's NCKD weight (mdistiller: 8 by default, tuned per CIFAR pair)

    @property
    def tag(self):
        return self.name or f'{self.teacher}_{self.student}'


@dataclass(frozen=True)
class Method:
    name: str
    terms: tuple                        # functions Context -> YAML of one WeightedSumLoss sub-term
    teacher_side: str = 'frozen'        # frozen | adapters (PESF-KD) | full (FT-KD, DML, KDCL)
    features: str = ''                  # representation loss among the terms: '' | 'pkt' | 'rkd' | 'crd'

    @property
    def crd(self):
        return self.features == 'crd'


@dataclass(frozen=True)
class Features:
    """Where a network's penultimate feature is."""
    pool: str                           # module whose output is the pooled feature (N, d, 1, 1): RKD, CRD flatten it
    head: str                           # the classifier, whose input is the flat feature (N, d): PKT
    dim: int


CIFAR_RESNET_FEATURES = Features('avgpool', 'fc', 64)
FEATURES = {
    'resnet20': CIFAR_RESNET_FEATURES, 'resnet32': CIFAR_RESNET_FEATURES, 'resnet56': CIFAR_RESNET_FEATURES,
    'resnet110': CIFAR_RESNET_FEATURES, 'vgg8': Features('pool4', 'classifier', 512),
    'vgg13': Features('pool4', 'classifier', 512), 'resnet18': Features('avgpool', 'fc', 512),
    'resnet50': Features('avgpool', 'fc', 2048),
}


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
        num_samples: &num_val_samples null     # null = all 5,000
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
    lr=0.05, weight_decay=5e-4, num_epochs=30, num_workers=2, log_freq=100, train_size=55000,
    dkd_warmup_epochs=3,                # the DKD authors' 20 of 240 epochs, scaled to this 30-epoch schedule
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
      gamma: 0.1""", ckpt_root='./resource/ckpt/cifar100', train_size=50000)
IMAGENET = Dataset(
    name='ilsvrc2012', num_classes=1000, input_shape=(1, 3, 224, 224), blocks=IMAGENET_BLOCK, batch_size=256,
    lr=0.1, weight_decay=1e-4, num_epochs=100, num_workers=16, log_freq=1000,
    scheduler="""    key: 'StepLR'
    kwargs:
      step_size: 30
      gamma: 0.1""", ckpt_root='./resource/ckpt/ilsvrc2012', train_size=1281167,
    teacher_from_training=False)

FTKD_TEACHER_LR = 1e-3                  # PESF-KD paper: the fine-tuned teacher's learning rate
ADAPTER_LR = 2e-5   # PESF-KD authors' code: --adapter_lr default (1170300319/PESF-KD cv/train_student_DDP.py); at
                    # the student's lr the adapters drag the teacher to the untrained student (docs/results_*.md)
# One eq.-6 bottleneck adapter on the output of the teacher's last block (the feature its classifier pools), the
# place the authors' released code adapts (their 'head' adapter reads the same feature). Autograd then differentiates
# only pooling and classifier of the teacher, so PESF-KD costs ~1.02x KD; adapters in every block of the last stage
# (e.g. 'layer3.?' on ResNet-56, 9 adapters) cost ~1.3x KD on CPU (tools/benchmark.py, README).
PAIRS_CIFAR = (
    Pair('resnet56', 'resnet20', adapter_modules=('layer3.8',), dkd_beta=2.0),
    Pair('resnet110', 'resnet32', adapter_modules=('layer3.17',)),
    Pair('vgg13', 'vgg8', adapter_modules=('block4',), dkd_beta=6.0),
    Pair('resnet56', 'vgg8', adapter_modules=('layer3.8',)),
)
PAIR_IMAGENET = Pair(
    'resnet50', 'resnet18', name='r50_r18', adapter_modules=('layer4.2',),
    teacher_kwargs="""      num_classes: 1000
      weights: !getattr [!import_get {key: 'torchvision.models.ResNet50_Weights'}, 'IMAGENET1K_V1']
""")
# Sources of the baselines' settings (cited in the YAML comments):
MDISTILLER_CFG = 'sunshangquan/logit-standardization-KD mdistiller/engine/cfg.py'   # = mdistiller's defaults
ZSCORE_TRAIN = 'sunshangquan/logit-standardization-KD tools/train.py'               # --logit-stand rules
DKD_PAIR_CFG = 'megvii-research/mdistiller configs/cifar100/dkd/'                   # per-pair DKD beta


def comment(text, indent=14, width=118):
    """``text`` as YAML comment lines at ``indent`` spaces, wrapped to ``width`` columns."""
    pad = ' ' * indent
    return ''.join(f'{pad}# {line}\n' for line in textwrap.wrap(text, width - indent - 2, break_on_hyphens=False))


@dataclass(frozen=True)
class Context:
    """What a loss term or a model block needs to know about the config being written."""
    data: Dataset
    pair: Pair
    method: Method

    @property
    def teacher_wrapped(self):
        return self.method.teacher_side == 'adapters' or self.method.crd

    @property
    def student_wrapped(self):
        return self.method.crd

    def path(self, side, module):
        """Module path as the box sees it: inside an auxiliary wrapper the network is ``model``."""
        wrapped = self.teacher_wrapped if side == 'teacher' else self.student_wrapped
        return f'model.{module}' if wrapped else module

    def features(self, side):
        return FEATURES[self.pair.teacher if side == 'teacher' else self.pair.student]


LOGITS = """              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
"""


# ---- loss terms: each returns the YAML of one WeightedSumLoss sub-term ----

def kd_term(ctx):
    return f"""        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
{LOGITS}              temperature: 4.0
              alpha: 0.1        # torchdistill: alpha weights CE; the paper's alpha (KL weight) is beta = 0.9
              beta: 0.9
              reduction: 'batchmean'
          weight: 1.0
"""


def pesfkd_term(temperature=4.0, beta=0.9, zscore=False):
    def term(ctx):
        return f"""        pesfkd:
          criterion:
            key: 'PESFKDLoss'
            kwargs:
{LOGITS}              temperature: {temperature}
              alpha: 0.1        # CE weight; the paper's alpha (KL weight) is beta
              beta: {beta}
              teacher_kl: 'reverse'   # eq. 8; 'shared' = the authors' released code
              logit_standardization: {zscore}
              reduction: 'batchmean'
          weight: 1.0
"""
    return term


def ftkd_term(temperature=4.0, beta=0.9, zscore=False):
    def term(ctx):
        return f"""        ftkd:
          criterion:
            key: 'FTKDLoss'
            kwargs:
{LOGITS}              temperature: {temperature}
              alpha: 0.1
              beta: {beta}
              teacher_ce_weight: 1.0
              logit_standardization: {zscore}
              reduction: 'batchmean'
          weight: 1.0
"""
    return term


def zscore_term(ctx):
    return f"""        zscore:
          criterion:
            key: 'ZScoreKDLoss'
            kwargs:
{LOGITS}              temperature: 2.0  # Z-score paper: base temperature 2, lambda_CE 0.1, lambda_KD 9
              alpha: 0.1
              beta: 9.0
              std: 'unbiased'
              reduction: 'batchmean'
          weight: 1.0
"""


ONLINE_TEACHER_NOTE = comment(
    f'Online KD: the whole teacher trains with the student, from its pretrained checkpoint, at the FT-KD teacher lr '
    f'{FTKD_TEACHER_LR} (PESF-KD paper), so DML, KDCL and FT-KD differ only in the loss. (The DML and KDCL papers '
    "train both networks from scratch at one lr; the PESF-KD authors' released code trains a pretrained teacher at "
    'its own lr, 1e-4, whenever the teacher has a loss: 1170300319/PESF-KD cv/train_student_DDP.py.)')


def dml_term(ctx):
    return f"""        dml:
          criterion:
            key: 'DMLLoss'
            kwargs:
{ONLINE_TEACHER_NOTE}{LOGITS}              temperature: 1.0  # DML paper: plain softmax, CE + KL(other || self) each
              alpha: 1.0
              beta: 1.0
              reduction: 'batchmean'
          weight: 1.0
"""


def kdcl_term(target):
    def term(ctx):
        return f"""        kdcl:
          criterion:
            key: 'KDCLLoss'
            kwargs:
{ONLINE_TEACHER_NOTE}{LOGITS}              temperature: 2.0
              alpha: 1.0
              beta: 1.0
              target: '{target}'   # 'min_logit' = KDCL-MinLogit (default here), 'naive' = mean of the two logits
              reduction: 'batchmean'
          weight: 1.0
"""
    return term


def dkd_term(zscore):
    def term(ctx):
        beta, warmup = ctx.pair.dkd_beta, ctx.data.dkd_warmup_epochs
        if zscore:
            weights = comment(f'DKD + Z-score as its authors run it ({ZSCORE_TRAIN} with --logit-stand --base-temp 2 '
                              "--kd-weight 9): DKD's alpha and beta times 9, temperature 2") + f"""\
              alpha: 9.0
              beta: {9 * beta}        # 9 x this pair's DKD beta ({beta})
              temperature: 2.0
"""
        else:
            weights = f"""\
              alpha: 1.0        # TCKD weight (DKD's alpha, not a CE weight)
              beta: {beta}         # NCKD weight
              temperature: 4.0
"""
        return f"""        dkd:
          criterion:
            key: 'DKDLoss'
            kwargs:
{LOGITS}{comment(f'DKD defaults: CE 1, alpha 1, beta 8, T 4, warm-up 20 of 240 epochs ({MDISTILLER_CFG}); beta per '
                  f'CIFAR pair: 2 in {DKD_PAIR_CFG}res56_res20.yaml, 6 in vgg13_vgg8.yaml. The warm-up epoch is set by '
                  f'distillation_pre_epoch_process; here {warmup} of {ctx.data.num_epochs} epochs.')}\
              ce_weight: 1.0
{weights}              warmup_epochs: {warmup}
              logit_standardization: {zscore}
              std: 'unbiased'   # as the Z-score authors' mdistiller/distillers/DKD.py normalize()
          weight: 1.0
"""
    return term


def ce_term(ctx):
    return """        ce:
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


def pkt_term(ctx):
    return f"""        pkt:
          criterion:
            key: 'PKTLoss'
            kwargs:
{comment(f'PKT weight 30000 (alone: with CE 1), as RepDistiller ({MDISTILLER_CFG})')}\
              student_module_path: '{ctx.path('student', ctx.features('student').head)}'
              student_module_io: 'input'   # the classifier's input: the penultimate feature
              teacher_module_path: '{ctx.path('teacher', ctx.features('teacher').head)}'
              teacher_module_io: 'input'
              eps: 0.0000001
          weight: 30000.0
"""


def rkd_term(ctx):
    return f"""        rkd:
          criterion:
            key: 'RKDLoss'
            kwargs:
{comment(f'distance 25, angle 50, weight 1 (alone: with CE 1), as RepDistiller ({MDISTILLER_CFG}); on the pooled '
          'penultimate feature (RKDLoss flattens it)')}\
              student_output_path: '{ctx.path('student', ctx.features('student').pool)}'
              teacher_output_path: '{ctx.path('teacher', ctx.features('teacher').pool)}'
              dist_factor: 25.0
              angle_factor: 50.0
              reduction: 'mean'
          weight: 1.0
"""


def crd_term(ctx):
    return f"""        crd:
          criterion:
            key: 'CRDLoss'
            kwargs:
{comment(f'NCE temperature 0.07, momentum 0.5, K 16384, embedding 128, weight 0.8 (alone: with CE 1), as RepDistiller '
          f'({MDISTILLER_CFG})')}\
              teacher_norm_module_path: 'normalizer'
              student_norm_module_path: 'normalizer'
              student_empty_module_path: 'empty'
              input_size: *crd_feature_dim
              output_size: *crd_num_samples
              num_negative_samples: *crd_num_negative_samples
              num_samples: *crd_num_samples
              temperature: 0.07
              momentum: 0.5
              eps: 0.0000001
          weight: 0.8
"""


CE_ONLY = (ce_term,)
METHODS = {m.name: m for m in (
    Method('kd', (kd_term,)),
    Method('pesfkd', (pesfkd_term(),), teacher_side='adapters'),
    Method('ftkd', (ftkd_term(),), teacher_side='full'),
    Method('zscore', (zscore_term,)),
    Method('pesfkd_zscore', (pesfkd_term(temperature=2.0, beta=9.0, zscore=True),), teacher_side='adapters'),
    Method('ftkd_zscore', (ftkd_term(temperature=2.0, beta=9.0, zscore=True),), teacher_side='full'),
    Method('dml', (dml_term,), teacher_side='full'),
    Method('kdcl', (kdcl_term('min_logit'),), teacher_side='full'),
    Method('kdcl_naive', (kdcl_term('naive'),), teacher_side='full'),
    Method('dkd', (dkd_term(zscore=False),)),
    Method('dkd_zscore', (dkd_term(zscore=True),)),
    # representation methods as in CRD / RepDistiller: CE + weight * loss; with PESF-KD: the PESF-KD loss + the same
    Method('pkt', CE_ONLY + (pkt_term,), features='pkt'),
    Method('rkd', CE_ONLY + (rkd_term,), features='rkd'),
    Method('crd', CE_ONLY + (crd_term,), features='crd'),
    Method('pesfkd_pkt', (pesfkd_term(), pkt_term), teacher_side='adapters', features='pkt'),
    Method('pesfkd_rkd', (pesfkd_term(), rkd_term), teacher_side='adapters', features='rkd'),
    Method('pesfkd_crd', (pesfkd_term(), crd_term), teacher_side='adapters', features='crd'),
)}


# ---- model, data and optimizer blocks ----

def yaml_list(items):
    return '[' + ', '.join(f"'{item}'" for item in items) + ']'


@functools.lru_cache(maxsize=None)
def trainable_children(model_key, num_classes):
    """Names of the direct children that hold parameters (for module_wise_configs)."""
    import pesf_ext  # noqa: F401
    from pesf_ext.engine.models import build_model
    import torch
    model = build_model({'key': model_key, 'kwargs': {'num_classes': num_classes}}, torch.device('cpu'), False,
                        'models')
    return tuple(name for name, child in model.named_children() if any(True for _ in child.parameters()))


def yaml_decimal(value):
    """A float as YAML reads it back as a float: '0.00002', not '2e-05' (a string to PyYAML's YAML 1.1)."""
    return f'{value:.10f}'.rstrip('0').rstrip('.') or '0'


def param_group(module, lr, weight_decay, is_teacher=False):
    return f"""      - module: '{module}'
        is_teacher: {is_teacher}
        kwargs:
          lr: {yaml_decimal(lr)}
          momentum: 0.9
          weight_decay: {weight_decay}"""


def module_wise(model_key, num_classes, lr, weight_decay, is_teacher=False, prefix=''):
    return '\n'.join(param_group(prefix + name, lr, weight_decay, is_teacher)
                     for name in trainable_children(model_key, num_classes))


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


CRD_DATASET_WRAPPER = """    dataset_wrapper:           # CRD: each sample also brings its index and K negative indices
      key: 'CRDDatasetWrapper'
      kwargs:
        num_negative_samples: *crd_num_negative_samples
        mode: 'exact'
        ratio: 1.0
"""


def loader_block(data, dataset_anchor, train, wrapper=''):
    sampler = 'RandomSampler' if train else 'SequentialSampler'
    return f"""    dataset_id: *{dataset_anchor}
{wrapper}    sampler:
      class_or_func: !import_get
        key: 'torch.utils.data.{sampler}'
      kwargs:
    kwargs:
      batch_size: {data.batch_size if train else 2 * data.batch_size}
      num_workers: *num_workers
      pin_memory: True
      drop_last: False
"""


def hooks(ctx, side):
    """(input, output) forward-hook paths that the representation loss reads on ``side``."""
    features = ctx.features(side)
    if ctx.method.features == 'pkt':
        return [ctx.path(side, features.head)], []
    if ctx.method.features == 'rkd':
        return [], [ctx.path(side, features.pool)]
    if ctx.method.crd:
        return ['empty'] if side == 'student' else [], [ctx.path(side, features.pool), 'normalizer']
    return [], []


def linear4crd_kwargs(ctx, side, indent):
    """kwargs of torchdistill's Linear4CRD: an embedding head ('normalizer') on the pooled feature."""
    pad = ' ' * indent
    return (f"{pad}input_module_path: 'model.{ctx.features(side).pool}'\n"
            f"{pad}linear_kwargs:\n"
            f"{pad}  in_features: {ctx.features(side).dim}\n"
            f"{pad}  out_features: *crd_feature_dim\n"
            f"{pad}  bias: True\n"
            f"{pad}power: 2\n")


def side_block(ctx, side, wrapper, requires_grad, frozen_modules=(), note=''):
    """``train.teacher`` / ``train.student``: ``wrapper`` is the YAML of an auxiliary model wrapper (or '')."""
    forward_proc = 'forward_batch_supp_dict' if ctx.method.crd else 'forward_batch_only'
    inputs, outputs = hooks(ctx, side)
    return f"""  {side}:
    forward_proc: '{forward_proc}'
    sequential: []
{wrapper}    forward_hook:
      input: {yaml_list(inputs)}
      output: {yaml_list(outputs)}
    requires_grad: {requires_grad}{f'          # {note}' if note else ''}
    frozen_modules: {yaml_list(frozen_modules)}
"""


def teacher_block(ctx):
    data, pair, method = ctx.data, ctx.pair, ctx.method
    if method.teacher_side == 'adapters':
        inner = ''
        if method.crd:
            inner = ("        wrapper:                 # CRD's embedding head on the adapted teacher (trains too)\n"
                     "          key: 'Linear4CRD'\n          kwargs:\n" + linear4crd_kwargs(ctx, 'teacher', 12))
        if method.features in ('pkt', 'crd'):  # RKDLoss computes its teacher side under no_grad
            inner += comment(f"The {method.features.upper()} loss reads the adapted teacher's features with grad, "
                             'so its gradient reaches the adapters too (the released PESF-KD code adapts the logits '
                             'only).', indent=8)
        wrapper = f"""    auxiliary_model_wrapper:
      key: 'AdapterTeacher'
      kwargs:
        adapters:
          - modules: [{', '.join(f"'{m}'" for m in pair.adapter_modules)}]
            kind: 'bottleneck'   # PESF-KD eq. 6: h + relu(h W_down) W_up, W_up zero-initialised
            bottleneck: 32
        input_shape: {list(data.input_shape)}
{inner}"""
        trained = 'the adapters and the CRD head train' if method.crd else 'only the adapters train'
        return side_block(ctx, 'teacher', wrapper, True, note=f'the teacher forward runs with grad, {trained}')
    if method.crd:
        wrapper = ("    auxiliary_model_wrapper:   # CRD trains the teacher's embedding head ('normalizer') only\n"
                   "      key: 'Linear4CRD'\n      kwargs:\n" + linear4crd_kwargs(ctx, 'teacher', 8))
        return side_block(ctx, 'teacher', wrapper, True, frozen_modules=['model'])
    return side_block(ctx, 'teacher', '', method.teacher_side == 'full')


def student_block(ctx):
    wrapper = ''
    if ctx.method.crd:
        wrapper = ("    auxiliary_model_wrapper:\n      key: 'Linear4CRD'\n      kwargs:\n"
                   + linear4crd_kwargs(ctx, 'student', 8))
    return side_block(ctx, 'student', wrapper, True)


def optimizer_block(ctx):
    data, pair, method = ctx.data, ctx.pair, ctx.method
    groups = [module_wise(pair.student, data.num_classes, data.lr, data.weight_decay,
                          prefix=ctx.path('student', ''))]
    if method.crd:
        groups.append(param_group('normalizer', data.lr, data.weight_decay))
    if method.teacher_side == 'adapters':
        groups.append(param_group('adapters', ADAPTER_LR, data.weight_decay, is_teacher=True))
    elif method.teacher_side == 'full':
        groups.append(module_wise(pair.teacher, data.num_classes, FTKD_TEACHER_LR, data.weight_decay,
                                  is_teacher=True, prefix=ctx.path('teacher', '')))
    if method.crd:
        groups.append(param_group('normalizer', data.lr, data.weight_decay, is_teacher=True))
    return f"""  optimizer:
    key: 'SGD'
    kwargs:
      lr: {data.lr}
      momentum: 0.9
      weight_decay: {data.weight_decay}
    module_wise_configs:
{chr(10).join(groups)}
"""


def header(data, description, settings=''):
    return f"""# {description}
# Generated by tools/make_configs.py; run with
#   python tools/image_classification.py --config <this file>
dependencies:
  - name: 'pesf_ext'

settings:
  ckpt_root: &ckpt_root '{data.ckpt_root}'
  num_workers: &num_workers {data.num_workers}
  num_epochs: &num_epochs {data.num_epochs}
{settings}
datasets:
{data.blocks}
"""


def crd_settings(data):
    return f"""  # CRD memory: one row per train image, so crd_num_samples must equal the train set size (change it
  # together with num_train_samples); K negatives per sample and embedding size as in CRD (Tian et al., 2020)
  crd_num_samples: &crd_num_samples {data.train_size}
  crd_num_negative_samples: &crd_num_negative_samples 16384
  crd_feature_dim: &crd_feature_dim 128
"""


def test_block(data):
    anchor = 'test' if '&test ' in data.blocks else 'val'
    return f"""
test:
  test_data_loader:
{loader_block(data, anchor, train=False)}"""


def distillation_config(data, pair, method):
    ctx = Context(data, pair, method)
    experiment = f'{data.name}-{pair.student}_from_{pair.teacher}'
    text = header(data, f'{method.name} on {data.name}: {pair.teacher} -> {pair.student}',
                  crd_settings(data) if method.crd else '')
    text += models_block(data, pair, method.name, experiment)
    text += f"""
train:
  log_freq: {data.log_freq}
  num_epochs: *num_epochs
  pre_epoch_process: 'distillation_pre_epoch_process'   # teacher eval where frozen, train where trainable
  train_data_loader:
{loader_block(data, 'train', train=True, wrapper=CRD_DATASET_WRAPPER if method.crd else '')}  val_data_loader:
{loader_block(data, 'val', train=False)}{teacher_block(ctx)}{student_block(ctx)}{optimizer_block(ctx)}  scheduler:
{data.scheduler}
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
{''.join(term(ctx) for term in method.terms)}"""
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
{ce_term(None)}"""
    return text + test_block(data)


# ---- which configs exist ----
FASHION_MNIST_METHODS = tuple(METHODS)                   # every method and combination
CIFAR_METHODS = ('kd', 'pesfkd', 'ftkd', 'zscore', 'dml', 'kdcl')  # every pair (PESF-KD Table I, DML/KDCL rows)
CIFAR_EXTRA_METHODS = {                                  # PESF-KD Table IV (representation KD +- PESF-KD); DKD
    'resnet56_resnet20': ('pkt', 'crd', 'rkd', 'pesfkd_pkt', 'pesfkd_crd', 'pesfkd_rkd', 'dkd', 'dkd_zscore'),
    'vgg13_vgg8': ('dkd', 'dkd_zscore'),
}
IMAGENET_METHODS = ('kd', 'pkt', 'crd', 'rkd', 'kdcl', 'dml', 'ftkd', 'pesfkd', 'zscore', 'pesfkd_crd')  # Table II


def all_configs():
    """Maps a path under configs/ to its YAML text."""
    configs = {}
    fm_pair = PAIRS_CIFAR[0]
    configs['fashion_mnist/resnet56_teacher_ce.yaml'] = training_config(FASHION_MNIST, fm_pair.teacher, 'teacher')
    configs['fashion_mnist/resnet20_student_ce.yaml'] = training_config(FASHION_MNIST, fm_pair.student, 'student')
    for name in FASHION_MNIST_METHODS:
        configs[f'fashion_mnist/{fm_pair.tag}_{name}.yaml'] = distillation_config(FASHION_MNIST, fm_pair, METHODS[name])
    teachers = []
    for pair in PAIRS_CIFAR:
        if pair.teacher not in teachers:
            teachers.append(pair.teacher)
            configs[f'cifar100/{pair.teacher}_teacher_ce.yaml'] = training_config(CIFAR100, pair.teacher, 'teacher')
        for name in CIFAR_METHODS + CIFAR_EXTRA_METHODS.get(pair.tag, ()):
            configs[f'cifar100/{pair.tag}_{name}.yaml'] = distillation_config(CIFAR100, pair, METHODS[name])
    for name in IMAGENET_METHODS:
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
