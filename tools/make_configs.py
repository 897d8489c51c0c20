"""Writes every YAML under configs/ from one table of set-ups, so all methods share the same data, schedule and
models (a fair comparison is the point). ``python tools/make_configs.py`` rewrites them;
``tests/test_configs.py`` checks that the committed files are what this script writes.

Layout: ``Dataset`` (data, schedule), ``Pair`` (teacher -> student), ``Method`` (loss terms and what the teacher side
trains); a method's terms are small functions of a ``Context`` (dataset, pair, method) that return one
``WeightedSumLoss`` sub-term as a dict, so the same term (e.g. CRD) serves alone and on top of PESF-KD. The
representation losses (PKT, RKD, CRD) also decide the forward hooks and, for CRD, the ``Linear4CRD`` wrappers and the
``CRDDatasetWrapper``. Each config is built as Python data and written by ``yaml_writer.dump_config`` (ruamel.yaml).

A family of configs is a function returning {path under configs/: YAML text}; ``FAMILIES`` lists them, so another
family (e.g. GLUE) is one import and one entry there.

The YAML files are plain torchdistill 1.x configs: edit a generated file by hand if you like, but then the sync
test will remind you to move the change here.
"""
import dataclasses
import functools
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))

from yaml_writer import alias, anchor, dump_config, import_call, import_get, join, note, tagged  # noqa: E402


@dataclass(frozen=True)
class Dataset:
    name: str
    num_classes: int
    input_shape: tuple
    datasets: dict                      # the three (or two) datasets, with anchors &train, &val (and &test) on keys
    batch_size: int
    lr: float
    weight_decay: float
    num_epochs: int
    scheduler: dict
    num_workers: int
    log_freq: int
    ckpt_root: str
    train_size: int                     # images in the train split (CRD's memory has one row per image)
    test_split: str = 'val'             # anchor of the dataset the test loader reads
    teacher_from_training: bool = True  # teacher weights from our own CE run (else: pretrained kwargs)
    dkd_warmup_epochs: int = 20         # DKD: linear warm-up of its KD terms (authors: 20 of 240 CIFAR epochs)
    epoch_metrics: bool = False         # per-epoch analysis metrics (epoch_metrics_post_epoch_process) on
    two_view_datasets: dict = None      # ``datasets`` with a weak/strong TwoViews train transform (MLKD)
    mlkd_max_grad_norm: float = None    # MLKD gradient clipping (not in the reference; see FASHION_MNIST)
    rco_anchor_epochs: tuple = ()       # RCO: epochs after which the teacher's route is saved (evenly spaced)
    init_epochs: int = 30               # AB, FT, FSP: epochs of the init stage (RepDistiller --init_epochs 30)
    zscore_temperature: tuple = (2.0, "the Z-score authors' base temperature 2")  # (tau, why) of the Z-score plug-ins
    zscore_ce_weight: tuple = (0.1, 'Z-score paper: lambda_CE 0.1')  # (CE weight, why) of Z-score KD
    zscore_kd_weight: tuple = (9.0, 'Z-score paper: lambda_KD 9')     # (KD weight, why) of Z-score KD


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    teacher_kwargs: dict = None         # kwargs of the teacher (default: num_classes only)
    adapter_modules: tuple = ()         # bottleneck-adapter targets on the teacher (PESF-KD eq. 6)
    name: str = ''
    dkd_beta: float = 8.0               # DKD's NCKD weight (mdistiller: 8 by default, tuned per CIFAR pair)
    assistant: str = ''                 # TAKD's teacher assistant, between teacher and student in size

    @property
    def tag(self):
        return self.name or f'{self.teacher}_{self.student}'


@dataclass(frozen=True)
class Method:
    name: str
    terms: tuple                        # functions Context -> {name: WeightedSumLoss sub-term}
    teacher_side: str = 'frozen'        # frozen | adapters (PESF-KD) | head (PESF-KD, head adapter) |
    #                                     released (PESF-KD, released code) | full
    features: str = ''                  # representation loss among the terms: '' | 'pkt' | 'rkd' | 'crd' | ...

    @property
    def staged(self):
        """AB, FT and FSP train an init stage first (RepDistiller's ``init``): ``train.stage1``, ``train.stage2``."""
        return self.features in INIT_STAGES
    learned_temperature: bool = False   # CTKD: the student is wrapped with CurriculumTemperature
    two_views: bool = False             # MLKD: weak/strong views of each image (TwoViews, forward_two_views)
    chain: str = ''                     # TAKD: 'assistant' (teacher -> assistant) | 'student' (assistant -> student)
    rco: bool = False                   # RCO: the teacher steps along its saved training route

    @property
    def crd(self):
        return self.features == 'crd'


@dataclass(frozen=True)
class Features:
    """Where a network's penultimate feature is."""
    pool: str                           # module whose output is the pooled feature (N, d, 1, 1): RKD, CRD flatten it
    head: str                           # the classifier, whose input is the flat feature (N, d): PKT
    dim: int
    stages: tuple = ()                  # RepDistiller's feat[1:-1]: the stages' (post-ReLU) outputs (N, C, H, W): AT
    stage_channels: tuple = ()          # their channels (FitNet's regressor)
    stage_sizes: tuple = ()             # their heights on 32x32 inputs (FitNet's ConvReg; AT / VID pool if they differ)
    stage_blocks: int = 0               # residual blocks per stage (AB reads the last one's pre-activation)
    stem: str = 'relu'                  # module whose output is the stem's feature map (FSP's first map)
    preacts: tuple = ()                 # AB: modules whose *output* is the stage's pre-activation (else: stage_blocks)


CIFAR_RESNET_FEATURES = Features('avgpool', 'fc', 64, ('layer1', 'layer2', 'layer3'), (16, 32, 64), (32, 16, 8))
# RepDistiller's VGG: feat = [f0, f1, f2, f3, f4, pooled], f_i = relu(block_i) (pesf_ext.models.cifar_vgg: relu<i>),
# f_i_pre = block_i's output (AB); four stage features where a CIFAR ResNet has three
CIFAR_VGG_FEATURES = Features('pool4', 'classifier', 512, ('relu1', 'relu2', 'relu3', 'relu4'), (128, 256, 512, 512),
                              (16, 8, 4, 4), stem='relu0', preacts=('block1', 'block2', 'block3', 'block4'))
FEATURES = {
    **{f'resnet{6 * n + 2}': dataclasses.replace(CIFAR_RESNET_FEATURES, stage_blocks=n) for n in (3, 5, 9, 18)},
    'vgg8': CIFAR_VGG_FEATURES,
    'vgg13': CIFAR_VGG_FEATURES, 'resnet18': Features('avgpool', 'fc', 512),
    'resnet50': Features('avgpool', 'fc', 2048),
}


# ---- datasets ----

def transforms(*steps):
    """torchvision ``Compose`` of (key, kwargs) steps."""
    return import_call('torchvision.transforms.Compose', {'transforms': [
        import_call(f'torchvision.transforms.{key}', kwargs) for key, kwargs in steps]})


def fashion_mnist_split(split, root, size_note, transform):
    return import_call('pesf_ext.data.fashion_mnist', {
        'root': root, 'split': split, 'num_samples': note(anchor(f'num_{split}_samples', None), size_note),
        'transform': transform})


def two_views(weak, strong):
    return note(import_call('pesf_ext.data.TwoViews', {'weak': weak, 'strong': strong}),
                'MLKD: a weak and a strong (RandAugment) view of each image', above=True)


def fashion_mnist_datasets(train_transform):
    return {anchor('train', 'fashion_mnist/train'): fashion_mnist_split(
        'train', anchor('root_dir', './resource/dataset/fashion_mnist'),
        'null = all 55,000 (5,000 of the 60,000 are held out for val)', train_transform), **FASHION_MNIST_EVAL_DATASETS}


FASHION_MNIST_EVAL_DATASETS = {
    anchor('val', 'fashion_mnist/val'): fashion_mnist_split(
        'val', alias('root_dir'), 'null = all 5,000',
        anchor('eval_transform', import_call('pesf_ext.data.fashion_mnist_transform', {'train': False}))),
    anchor('test', 'fashion_mnist/test'): fashion_mnist_split(
        'test', alias('root_dir'), 'null = all 10,000', alias('eval_transform')),
}
FASHION_MNIST_TRAIN_TRANSFORM = import_call('pesf_ext.data.fashion_mnist_transform', {'train': True})
FASHION_MNIST_DATASETS = fashion_mnist_datasets(FASHION_MNIST_TRAIN_TRANSFORM)
FASHION_MNIST_TWO_VIEW_DATASETS = fashion_mnist_datasets(two_views(
    FASHION_MNIST_TRAIN_TRANSFORM, import_call('pesf_ext.data.fashion_mnist_transform', {'train': True, 'strong': True})))
CIFAR100_NORMALIZE = {'mean': [0.5071, 0.4865, 0.4409], 'std': [0.2673, 0.2564, 0.2762]}
def cifar100_crop_flip():
    return ('RandomCrop', {'size': 32, 'padding': 4}), ('RandomHorizontalFlip', {'p': 0.5})


def cifar100_datasets(two_view=False):
    weak = transforms(*cifar100_crop_flip(), ('ToTensor', None),
                      ('Normalize', anchor('normalize_kwargs', CIFAR100_NORMALIZE)))
    strong = transforms(*cifar100_crop_flip(), ('RandAugment', {'num_ops': 2, 'magnitude': 10}), ('ToTensor', None),
                        ('Normalize', alias('normalize_kwargs')))
    return {
        anchor('train', 'cifar100/train'): import_call('torchvision.datasets.CIFAR100', {
            'root': anchor('root_dir', './resource/dataset/cifar100'), 'train': True, 'download': True,
            'transform': two_views(weak, strong) if two_view else weak}),
        anchor('val', 'cifar100/test'): import_call('torchvision.datasets.CIFAR100', {
            'root': alias('root_dir'), 'train': False, 'download': True,
            'transform': transforms(('ToTensor', None), ('Normalize', alias('normalize_kwargs')))}),
    }


CIFAR100_DATASETS = cifar100_datasets()
IMAGENET_NORMALIZE = {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}
IMAGENET_DATASETS = {
    anchor('train', 'ilsvrc2012/train'): import_call('torchvision.datasets.ImageFolder', {
        'root': join(anchor('root_dir', '~/datasets/ilsvrc2012'), '/train'),
        'transform': transforms(('RandomResizedCrop', {'size': anchor('input_size', [224, 224])}),
                                ('RandomHorizontalFlip', {'p': 0.5}), ('ToTensor', None),
                                ('Normalize', anchor('normalize_kwargs', IMAGENET_NORMALIZE)))}),
    anchor('val', 'ilsvrc2012/val'): import_call('torchvision.datasets.ImageFolder', {
        'root': join(alias('root_dir'), '/val'),
        'transform': transforms(('Resize', {'size': 256}), ('CenterCrop', {'size': alias('input_size')}),
                                ('ToTensor', None), ('Normalize', alias('normalize_kwargs')))}),
}

FASHION_MNIST = Dataset(
    name='fashion_mnist', num_classes=10, input_shape=(1, 3, 32, 32), datasets=FASHION_MNIST_DATASETS, batch_size=64,
    lr=0.05, weight_decay=5e-4, num_epochs=30, num_workers=2, log_freq=100, train_size=55000, test_split='test',
    dkd_warmup_epochs=3,                # the DKD authors' 20 of 240 epochs, scaled to this 30-epoch schedule
    scheduler={'key': 'MultiStepLR', 'kwargs': {'milestones': [15, 25], 'gamma': 0.1}},
    ckpt_root='./resource/ckpt/fashion_mnist', epoch_metrics=True, two_view_datasets=FASHION_MNIST_TWO_VIEW_DATASETS,
    # MLKD's class-level term ||P_t^T P_t - P_s^T P_s||^2 / K grows like (N / K)^2: on 10 classes it is ~100x its
    # CIFAR-100 size, and the students diverged within 4 steps at lr 0.05 (logit std 1e21) without clipping
    mlkd_max_grad_norm=5.0, rco_anchor_epochs=(5, 10, 20),
    init_epochs=4,                      # RepDistiller's 30 init epochs of 240, scaled to this 30-epoch schedule
    zscore_temperature=(2.0, "the Z-score authors' base temperature (Z-score KD here: 0.5, 1 and 3 did no better "
                             'at any KD weight, CE weight 0.1 or 1, and worse at KD weight 9, docs/RESULTS.md '
                             'question 3)'),
    zscore_ce_weight=(0.1, 'Z-score paper: lambda_CE 0.1; kept, though CE weight 1 did better here on one machine '
                           '(docs/RESULTS.md question 3, second machine)'),
    zscore_kd_weight=(9.0, 'Z-score paper: lambda_KD 9; kept, though 3 was above 9 at every base temperature at CE '
                           'weight 0.1 on one machine (by 0.6 to 1.9 points) and no weight beat KD (docs/RESULTS.md '
                           'question 3)'))
CIFAR100 = Dataset(
    name='cifar100', num_classes=100, input_shape=(1, 3, 32, 32), datasets=CIFAR100_DATASETS, batch_size=64,
    lr=0.05, weight_decay=5e-4, num_epochs=240, num_workers=8, log_freq=100,
    scheduler={'key': 'MultiStepLR', 'kwargs': {'milestones': [150, 180, 210], 'gamma': 0.1}},
    ckpt_root='./resource/ckpt/cifar100', train_size=50000, two_view_datasets=cifar100_datasets(two_view=True),
    rco_anchor_epochs=(60, 120, 180))
IMAGENET = Dataset(
    name='ilsvrc2012', num_classes=1000, input_shape=(1, 3, 224, 224), datasets=IMAGENET_DATASETS, batch_size=256,
    lr=0.1, weight_decay=1e-4, num_epochs=100, num_workers=16, log_freq=1000,
    scheduler={'key': 'StepLR', 'kwargs': {'step_size': 30, 'gamma': 0.1}},
    ckpt_root='./resource/ckpt/ilsvrc2012', train_size=1281167, teacher_from_training=False)

FTKD_TEACHER_LR = 1e-3                  # PESF-KD paper: the fine-tuned teacher's learning rate
ADAPTER_LR = 2e-5   # PESF-KD authors' code: --adapter_lr default (1170300319/PESF-KD cv/train_student_DDP.py)
ADAPTER_LR_NOTE = ("the authors' --adapter_lr; on Fashion-MNIST 2e-4 changed nothing, 2e-3 and 2e-2 smoothed the "
                   'teacher and cost the student accuracy (docs/RESULTS.md, question 2)')
# One eq.-6 bottleneck adapter on the output of the teacher's last block (the feature its classifier pools), the
# place the authors' released code adapts (their 'head' adapter reads the same feature). Autograd then differentiates
# only pooling and classifier of the teacher, so PESF-KD costs ~1.02x KD; adapters in every block of the last stage
# (e.g. 'layer3.?' on ResNet-56, 9 adapters) cost ~1.3x KD on CPU (tools/benchmark.py, README).
PAIRS_CIFAR = (
    Pair('resnet56', 'resnet20', adapter_modules=('layer3.8',), dkd_beta=2.0, assistant='resnet32'),
    Pair('resnet110', 'resnet32', adapter_modules=('layer3.17',)),
    Pair('vgg13', 'vgg8', adapter_modules=('block4',), dkd_beta=6.0),
    Pair('resnet56', 'vgg8', adapter_modules=('layer3.8',)),
)
PAIR_IMAGENET = Pair('resnet50', 'resnet18', name='r50_r18', adapter_modules=('layer4.2',), teacher_kwargs={
    'num_classes': 1000,
    'weights': tagged('!getattr', [import_get('torchvision.models.ResNet50_Weights'), 'IMAGENET1K_V1'])})
# Sources of the baselines' settings (cited in the YAML comments):
MDISTILLER_CFG = 'sunshangquan/logit-standardization-KD mdistiller/engine/cfg.py'   # = mdistiller's defaults
ZSCORE_TRAIN = 'sunshangquan/logit-standardization-KD tools/train.py'               # --logit-stand rules
DKD_PAIR_CFG = 'megvii-research/mdistiller configs/cifar100/dkd/'                   # per-pair DKD beta


@dataclass(frozen=True)
class Context:
    """What a loss term or a model block needs to know about the config being written."""
    data: Dataset
    pair: Pair
    method: Method

    @property
    def teacher_wrapped(self):
        return self.method.teacher_side in ('adapters', 'head', 'released') or self.method.crd or \
            self.method.features in ('cc', 'ft')

    @property
    def student_wrapped(self):
        return self.method.crd or self.method.learned_temperature or \
            self.method.features in ('fitnet', 'vid', 'cc', 'ft')

    def path(self, side, module):
        """Module path as the box sees it: inside an auxiliary wrapper the network is ``model`` (``student_model`` in
        torchdistill's VID wrapper)."""
        wrapped = self.teacher_wrapped if side == 'teacher' else self.student_wrapped
        if not wrapped:
            return module
        keeps_student_model = self.method.features in ('vid', 'ft')   # torchdistill's VID / FT student wrappers
        return f'student_model.{module}' if side == 'student' and keeps_student_model else f'model.{module}'

    def features(self, side):
        return FEATURES[self.pair.teacher if side == 'teacher' else self.pair.student]

    def stage_pairs(self):
        """(student, teacher) stage indices as RepDistiller pairs feat_s[1:-1] with feat_t[1:-1]: ``zip``, so the
        shorter list decides (ResNet-56 -> VGG-8: the teacher's 3 stages with the student's first 3 of 4)."""
        return list(zip(range(len(self.features('student').stages)), range(len(self.features('teacher').stages))))

    def stage_sizes_differ(self):
        student, teacher = self.features('student'), self.features('teacher')
        return any(student.stage_sizes[s] != teacher.stage_sizes[t] for s, t in self.stage_pairs())


# ---- loss terms: each returns {name: one WeightedSumLoss sub-term} ----

def sub_term(name, key, kwargs, weight=1.0, about=None):
    criterion = {'key': key, 'kwargs': kwargs}
    return {name: {'criterion': note(criterion, about, above=True) if about else criterion, 'weight': weight}}


def logits(**kwargs):
    """Both models' outputs (the logits), then ``kwargs``."""
    return {'student_module_path': '.', 'student_module_io': 'output', 'teacher_module_path': '.',
            'teacher_module_io': 'output', **kwargs}


def kd_term(ctx):
    return sub_term('kd', 'KDLoss', logits(
        temperature=4.0,
        alpha=note(0.1, "torchdistill: alpha weights CE; the paper's alpha (KL weight) is beta = 0.9"),
        beta=0.9, reduction='batchmean'))


def zscore_temperature(ctx):
    """The base temperature of every Z-score plug-in on ``ctx.data``, with the comment that says why."""
    return note(*ctx.data.zscore_temperature)


def pesfkd_term(temperature=4.0, beta=0.9, zscore=False):
    def term(ctx):
        return sub_term('pesfkd', 'PESFKDLoss', logits(
            temperature=zscore_temperature(ctx) if zscore else temperature,
            alpha=note(0.1, "CE weight; the paper's alpha (KL weight) is beta"), beta=beta,
            teacher_kl=note('reverse', "eq. 8; 'released' = the authors' released code (pesfkd_released.yaml)"),
            logit_standardization=zscore, reduction='batchmean'))
    return term


RELEASED_ACCUMULATION = 4   # released CV code: optimizer.step() every 4 batches on the SUM of their gradients


def pesfkd_released_term(ctx):
    head = ctx.features('teacher').head
    return sub_term('pesfkd', 'PESFKDLoss', logits(
        temperature=note(4.0, "the paper's tau (this project's choice); the released --kd_T defaults to 6"),
        alpha=note(1.0, "released code: gamma (-r, CE weight) defaults to 1"),
        beta=note(0.9, "the paper's alpha (this project's choice); released -a has no default, its README uses -a 1"),
        teacher_alpha=note(1.0, 'released code: CE(y, z_ta) added with weight 1'), teacher_beta=0.9,
        teacher_kl=note('released', 'student learns from the pre-adapter teacher; DistillKL(z_s_cor, z_ta) for the '
                                    'adapter (1170300319/PESF-KD cv/helper/loops.py train_distill)'),
        target_correction=note('swap', "the released code's label correction (logit_t_cor, logit_s_cor)"),
        delta_module_path=note(f'adapters.{head}', "the head adapter's output, the delta it adds to the logits"),
        reduction='batchmean'),
        weight=note(float(RELEASED_ACCUMULATION), f'x{RELEASED_ACCUMULATION} with grad_accum_step '
                                                   f'{RELEASED_ACCUMULATION}: the released code sums the gradients '
                                                   'of 4 batches, torchdistill averages them'))


def dist_term(zscore):
    def term(ctx):
        return sub_term('dist', 'LogitDISTLoss', logits(
            temperature=note(1.0, "DIST's ImageNet setting (torchdistill's DISTLoss example: beta = gamma = tau = 1)"),
            alpha=1.0, inter_weight=1.0, intra_weight=1.0,
            logit_standardization=note(zscore, 'the Z-score plug-in on DIST: logits standardized before softmax')))
    return term


MLKD_CODE = 'sunshangquan/logit-standardization-KD mdistiller/distillers/MLKD.py'


def mlkd_term(zscore):
    def term(ctx):
        return sub_term('mlkd', 'MLKDLoss', logits(
            temperature=zscore_temperature(ctx) if zscore else note(4.0, 'mdistiller cfg KD.TEMPERATURE 4'),
            extra_temperatures=[3.0, 5.0, 2.0, 6.0],
            strong_view_temperatures=note(3, "as the reference: its strong-view KD evaluates T = 2, 6 on the weak view"),
            alpha=note(1.0, 'CE weight (Z-score repository cfg KD.LOSS.CE_WEIGHT 1)'),
            beta=note(9.0, 'KD weight (KD.LOSS.KD_WEIGHT 9; --kd-weight 9 with logit standardization)'),
            logit_standardization=zscore),
            about=f'MLKD as {MLKD_CODE} computes it (docs/baselines.md); the reference trains 480 epochs at lr 0.025, '
                  'this family keeps one schedule for every row')
    return term


CTKD_SCRIPT = 'sunshangquan/logit-standardization-KD CTKD/scripts/run_cifar_distill.sh'


def ctkd_term(zscore):
    def term(ctx):
        weights = ("Z-score authors' CTKD: -r 0.1 -a 9, their DistillKL Z-scores both logits" if zscore else
                   "CTKD: -r 0.1 -a 0.9 (the KD setting)")
        return sub_term('ctkd', 'CTKDLoss', logits(
            temperature_module_path='temperature', temperature_module_io='output',
            alpha=note(0.1, weights), beta=9.0 if zscore else 0.9, logit_standardization=zscore,
            reduction='batchmean'))
    return term


def curriculum_temperature():
    return note({'key': 'CurriculumTemperature', 'kwargs': {
        'init': 1.0, 't_start': 1.0, 't_range': 20.0, 'curriculum_start': 0.0, 'curriculum_end': -1.0,
        'curriculum_epochs': 10}},
        f'CTKD global temperature 1 + 20 sigmoid(GRL(t)), reversal weight cosine 0 -> -1 over 10 epochs ({CTKD_SCRIPT})')


def ftkd_term(temperature=4.0, beta=0.9, zscore=False):
    def term(ctx):
        return sub_term('ftkd', 'FTKDLoss', logits(
            temperature=zscore_temperature(ctx) if zscore else temperature, alpha=0.1, beta=beta,
            teacher_ce_weight=1.0, logit_standardization=zscore,
            reduction='batchmean'))
    return term


def zscore_term(ctx):
    return sub_term('zscore', 'ZScoreKDLoss', logits(
        temperature=zscore_temperature(ctx),
        alpha=note(*ctx.data.zscore_ce_weight), beta=note(*ctx.data.zscore_kd_weight), std='unbiased',
        reduction='batchmean'))


DIVERGENCES = {   # the LM divergences of TokenKDLoss on [N, K] logits: name -> (divergence, its own options, source)
    'rkl': ('reverse_kl', {}, 'MiniLLM (Gu et al., ICLR 2024), the reverse KL KL(p_s || p_t)'),
    'jsd': ('jsd', {'jsd_beta': 0.5}, "GKD (Agarwal et al., ICLR 2024), generalized JSD, TRL's beta 0.5"),
    'skew_kl': ('skew_forward_kl', {'skew': 0.1}, 'DistiLLM (Ko et al., ICML 2024), skew KL, lambda 0.1'),
    'skew_rkl': ('skew_reverse_kl', {'skew': 0.1}, 'DistiLLM (Ko et al., ICML 2024), skew reverse KL, lambda 0.1'),
    'tv': ('tv', {}, 'total variation distance'),
    'taid': ('taid', {'taid': {'t_start': 0.4, 't_end': 1.0, 'rate': 0.0005, 'momentum_decay': 0.99,
                               'total_steps': None}},
             "TAID (Shing et al., ICLR 2025), SakanaAI/TAID's defaults; total_steps null: filled from the data"),
}


def divergence_term(name, zscore=False):
    """KD with another divergence in place of KL(p_t || p_s): KD's temperature and weights, so the divergence is
    the only change. With ``zscore``: Z-score KD's standardization, temperature and weights, so the divergence is
    the only change from Z-score KD."""
    divergence, options, source = DIVERGENCES[name]

    def term(ctx):
        if zscore:
            weights = dict(temperature=zscore_temperature(ctx), alpha=note(*ctx.data.zscore_ce_weight),
                           beta=note(*ctx.data.zscore_kd_weight), logit_standardization=True, std='unbiased')
        else:
            weights = dict(temperature=4.0, alpha=note(0.1, 'CE weight, as KD'), beta=0.9)
        return sub_term(name, 'TokenKDLoss', logits(**weights, divergence=divergence, **options), about=source)
    return term


ONLINE_TEACHER_NOTE = (
    f'Online KD: the whole teacher trains with the student, from its pretrained checkpoint, at the FT-KD teacher lr '
    f'{FTKD_TEACHER_LR} (PESF-KD paper), so DML, KDCL and FT-KD differ only in the loss. (The DML and KDCL papers '
    "train both networks from scratch at one lr; the PESF-KD authors' released code trains a pretrained teacher at "
    'its own lr, 1e-4, whenever the teacher has a loss: 1170300319/PESF-KD cv/train_student_DDP.py.)')


def dml_term(ctx):
    return sub_term('dml', 'DMLLoss', logits(
        temperature=note(1.0, 'DML paper: plain softmax, CE + KL(other || self) each'),
        alpha=1.0, beta=1.0, reduction='batchmean'), about=ONLINE_TEACHER_NOTE)


def kdcl_term(target):
    def term(ctx):
        return sub_term('kdcl', 'KDCLLoss', logits(
            temperature=2.0, alpha=1.0, beta=1.0,
            target=note(target, "'min_logit' = KDCL-MinLogit (default here), 'naive' = mean of the two logits"),
            reduction='batchmean'), about=ONLINE_TEACHER_NOTE)
    return term


def dkd_term(zscore):
    def term(ctx):
        beta, warmup = ctx.pair.dkd_beta, ctx.data.dkd_warmup_epochs
        if zscore:
            weights = {'alpha': note(9.0, f'DKD + Z-score as its authors run it ({ZSCORE_TRAIN} with --logit-stand '
                                          "--base-temp 2 --kd-weight 9): DKD's alpha and beta times 9, temperature 2",
                                     above=True),
                       'beta': note(9 * beta, f"9 x this pair's DKD beta ({beta})"),
                       'temperature': zscore_temperature(ctx)}
        else:
            weights = {'alpha': note(1.0, "TCKD weight (DKD's alpha, not a CE weight)"),
                       'beta': note(beta, 'NCKD weight'), 'temperature': 4.0}
        sources = (f'DKD defaults: CE 1, alpha 1, beta 8, T 4, warm-up 20 of 240 epochs ({MDISTILLER_CFG}); beta per '
                   f'CIFAR pair: 2 in {DKD_PAIR_CFG}res56_res20.yaml, 6 in vgg13_vgg8.yaml. The warm-up epoch is set '
                   f'by distillation_pre_epoch_process; here {warmup} of {ctx.data.num_epochs} epochs.')
        return sub_term('dkd', 'DKDLoss', logits(
            ce_weight=1.0, **weights, warmup_epochs=warmup, logit_standardization=zscore,
            std=note('unbiased', "as the Z-score authors' mdistiller/distillers/DKD.py normalize()")), about=sources)
    return term


TTM_README = 'zkxufo/TTM README.md'
TTM_WEIGHTS = {   # (gamma, CE weight, TTM weight, source) per teacher -> student tag; CIFAR-100 unless noted
    'vgg13_vgg8': (0.1, 1.0, 45.0, f'{TTM_README}: --ttm_l 0.1 -r 1 -b 45 for VGG13 -> VGG8'),
}
TTM_DEFAULT = (0.1, 1.0, 45.0, f'{TTM_README} VGG13 -> VGG8 example (--ttm_l 0.1 -r 1 -b 45); the per-pair values '
                               'of the paper (its appendix A.4) were not found, so every other pair uses these')


def ttm_term(weighted, zscore):
    def term(ctx):
        gamma, ce_weight, weight, source = TTM_WEIGHTS.get(ctx.pair.tag, TTM_DEFAULT)
        if ctx.data.name != 'cifar100':
            source += f'; CIFAR-100 values, not tuned for {ctx.data.name}'
        kwargs = logits(
            gamma=note(gamma, f"power of the teacher transform (paper's gamma, authors' --ttm_l): T = {1 / gamma:g}"),
            alpha=note(ce_weight, "CE weight (the authors' -r / --gamma)"),
            beta=note(weight, "TTM weight (the authors' -b)"), reduction='batchmean')
        if zscore:
            kwargs['logit_standardization'] = note(True, "Z-score of the teacher's logits before the power transform")
        name = 'wttm' if weighted else 'ttm'
        return sub_term(name, 'WTTMLoss' if weighted else 'TTMLoss', kwargs, about=source)
    return term


LUMINET_CFG = 'ismail31416/LumiNet'
LUMINET_WEIGHTS = {   # (CE weight, the authors' ALPHA, T, source) per teacher -> student tag
    'vgg13_vgg8': (1.3, 11.0, 2.0, f'{LUMINET_CFG} configs/cifar100/luminet/vgg13_vgg8.yaml'),
}
LUMINET_DEFAULT = (2.0, 31.0, 4.0, f'{LUMINET_CFG} mdistiller/engine/cfg.py defaults (the repository has no config '
                                   'for this pair)')


def luminet_term(ctx):
    ce_weight, alpha, temperature, source = LUMINET_WEIGHTS.get(ctx.pair.tag, LUMINET_DEFAULT)
    if ctx.data.name != 'cifar100':
        source += f'; CIFAR-100 values, not tuned for {ctx.data.name}'
    return sub_term('luminet', 'LumiNetLoss', logits(
        temperature=temperature, alpha=note(ce_weight, "CE weight (the authors' SOLVER.CE_WEIGHT)"),
        beta=note(alpha ** 2, f"the authors' SOLVER.ALPHA {alpha:g}, squared: their KL has no T^2 but ALPHA^2"),
        warmup_epochs=note(ctx.data.dkd_warmup_epochs, "the authors' LUMINET.WARMUP 20 of 240 epochs, scaled to "
                                                       'this schedule' if ctx.data.dkd_warmup_epochs != 20 else
                                                       "the authors' LUMINET.WARMUP"),
        batch_statistics=note('local', "per-process batch statistics, as the authors' single-GPU / DataParallel "
                                       'runs'),
        reduction='batchmean'), about=source)


def ce_term(ctx):
    return {'ce': {
        'criterion': {'key': 'CrossEntropyLoss', 'kwargs': {'reduction': 'mean'}},
        'criterion_wrapper': {'key': 'SimpleLossWrapper', 'kwargs': {
            'input': {'is_from_teacher': False, 'module_path': '.', 'io': 'output'},
            'target': {'uses_label': True}}},
        'weight': 1.0}}


def pkt_term(ctx):
    return sub_term('pkt', 'PKTLoss', {
        'student_module_path': ctx.path('student', ctx.features('student').head),
        'student_module_io': note('input', "the classifier's input: the penultimate feature"),
        'teacher_module_path': ctx.path('teacher', ctx.features('teacher').head),
        'teacher_module_io': 'input',
        'eps': 1e-7}, weight=30000.0, about=f'PKT weight 30000 (alone: with CE 1), as RepDistiller ({MDISTILLER_CFG})')


POOLED_NOTE = ('the larger map of each pair average-pooled to the smaller one first, as RepDistiller (student and '
               'teacher maps differ in size here)')


def at_term(ctx):
    student, teacher = ctx.features('student'), ctx.features('teacher')
    pooled = ctx.stage_sizes_differ()
    about = f'AT on every stage output, weight 1000 (with CE 1), as RepDistiller ({MDISTILLER_CFG})'
    return sub_term('at', 'PooledATLoss' if pooled else 'ATLoss', {'at_pairs': {
        f'stage{i}': {'student': {'path': ctx.path('student', student.stages[s]), 'io': 'output'},
                      'teacher': {'path': ctx.path('teacher', teacher.stages[t]), 'io': 'output'}, 'weight': 1}
        for i, (s, t) in enumerate(ctx.stage_pairs(), 1)}, 'mode': note('code', "RepDistiller's implementation (mean "
                                                                              'over channels, squared difference '
                                                                              'averaged)')},
        weight=1000.0, about=f'{about}; {POOLED_NOTE}' if pooled else about)


FITNET_HINT = 1   # index into Features.stages: layer2, mdistiller's FITNET.HINT_LAYER 2 (feats[2], after the stem)


def fitnet_term(ctx):
    return {'fitnet': {
        'criterion': {'key': 'MSELoss', 'kwargs': {'reduction': 'mean'}},
        'criterion_wrapper': {'key': 'SimpleLossWrapper', 'kwargs': {
            'input': {'is_from_teacher': False, 'module_path': 'regressor', 'io': 'output'},
            'target': {'is_from_teacher': True, 'module_path': ctx.features('teacher').stages[FITNET_HINT],
                       'io': 'output'}}},
        'weight': note(100.0, f'FitNet hint MSE weight 100 (with CE 1), hint layer 2, as mdistiller ({MDISTILLER_CFG})')}}


def hint_regressor(ctx):
    student, teacher = ctx.features('student'), ctx.features('teacher')
    kwargs = {'hint_module_path': student.stages[FITNET_HINT], 'in_channels': student.stage_channels[FITNET_HINT],
              'out_channels': teacher.stage_channels[FITNET_HINT]}
    s_size, t_size = student.stage_sizes[FITNET_HINT], teacher.stage_sizes[FITNET_HINT]
    kwargs.update(in_size=s_size, out_size=t_size)
    conv = 'ConvTranspose4x4 stride 2' if 2 * s_size == t_size else 'Conv3x3 stride 2' if s_size == 2 * t_size else \
        f'Conv{1 + s_size - t_size}x{1 + s_size - t_size}'
    return note({'key': 'HintRegressor', 'kwargs': kwargs},
                f"FitNet: RepDistiller's ConvReg ({conv}-BN-ReLU, student {s_size}x{s_size} -> teacher "
                f"{t_size}x{t_size}) from the student's hint layer (trains with the student)")


def vid_term(ctx):
    teacher = ctx.features('teacher')
    pooled = ctx.stage_sizes_differ()
    about = f'VID on every stage output, weight 1 (with CE 1), as RepDistiller ({MDISTILLER_CFG})'
    return sub_term('vid', 'PooledVIDLoss' if pooled else 'VIDLoss', {'feature_pairs': {
        f'stage{i}': {'student': {'path': f'regressor_dict.stage{i}', 'io': 'output'},
                      'teacher': {'path': ctx.path('teacher', teacher.stages[t]), 'io': 'output'}, 'weight': 1}
        for i, (_, t) in enumerate(ctx.stage_pairs(), 1)}},
        weight=1.0, about=f"{about}; the teacher's map average-pooled to the student's size, as RepDistiller" if pooled
        else about)


def vid_distributor(ctx):
    student, teacher = ctx.features('student'), ctx.features('teacher')
    return note({'key': 'VariationalDistributor4VID', 'kwargs': {'regressors': {
        f'stage{i}': {'io': 'output', 'path': ctx.path('student', student.stages[s]), 'kwargs': {
            'in_channels': student.stage_channels[s], 'middle_channels': teacher.stage_channels[t],
            'out_channels': teacher.stage_channels[t], 'eps': 1.0e-5, 'init_pred_var': 5.0}}
        for i, (s, t) in enumerate(ctx.stage_pairs(), 1)
    }}}, "torchdistill's VID regressors (mean and variance of the teacher's stage from the student's), RepDistiller's "
         'sizes: middle = out = teacher channels, eps 1e-5, initial variance 5')


def sp_term(ctx):
    return sub_term('sp', 'SimilarityPreservingLoss', {
        'student_module_path': ctx.path('student', ctx.features('student').stages[-1]),
        'teacher_module_path': ctx.path('teacher', ctx.features('teacher').stages[-1])},
        weight=3000.0, about=f'SP on the last stage output, weight 3000 (with CE 1), as RepDistiller ({MDISTILLER_CFG})')


REPDISTILLER_SCRIPT = 'HobbitLong/RepDistiller scripts/run_cifar_distill.sh'   # -r 1 -a 0 -b <weight> per method
REPDISTILLER_INIT = 'HobbitLong/RepDistiller helper/pretrain.py'          # AB, FT, FSP init stage
CC_EMBED_DIM = 128                      # RepDistiller --feat_dim


def cc_term(ctx):
    return sub_term(
        'cc', 'CorrelationCongruenceLoss', {'student_module_path': 'linear', 'teacher_module_path': 'linear'},
        weight=0.02, about="CC as RepDistiller computes it (its Correlation, not the paper's kernel matrices: "
                           'docs/baselines.md) on 128-d linear embeddings of the pooled features, weight 0.02 (with '
                           f'CE 1, no KD: -a 0 -b 0.02 in {REPDISTILLER_SCRIPT})')


def linear4cckd(ctx, side):
    """torchdistill's Linear4CCKD: a linear embedding ('linear') of the pooled feature (RepDistiller's LinearEmbed)."""
    features = ctx.features(side)
    return {'key': 'Linear4CCKD', 'kwargs': {
        'input_module': {'path': f'model.{features.pool}', 'io': 'output'},
        'linear_kwargs': {'in_features': features.dim, 'out_features': CC_EMBED_DIM, 'bias': True}}}


def ft_term(ctx):
    return sub_term('ft', 'FactorTransferLoss', {
        'student_module_path': 'translator', 'teacher_module_path': 'paraphraser', 'p': 2, 'q': 1},
        weight=200.0, about="FT as RepDistiller computes it (L1 of L2-normalised channel means of the squared factors; "
                            "torchdistill's FTLoss is the paper's form: docs/baselines.md), weight 200 (with CE 1, no "
                            f'KD: -a 0 -b 200 in {REPDISTILLER_SCRIPT})')


FT_RATE = 0.5                           # paraphrase rate k: factor channels = k x teacher channels (RepDistiller)


def paraphraser_teacher(ctx, uses_decoder):
    teacher = ctx.features('teacher')
    kwargs = {'k': FT_RATE, 'num_input_channels': teacher.stage_channels[-1], 'kernel_size': 3, 'stride': 1,
              'padding': 1, 'uses_bn': False}
    return {'key': 'ParaphraserTeacher', 'kwargs': {
        'input_module_path': f'model.{teacher.stages[-1]}',
        'paraphraser_kwargs': anchor('paraphraser_kwargs', kwargs) if uses_decoder else alias('paraphraser_kwargs'),
        'uses_decoder': note(uses_decoder, 'stage 1: auto-encoder trained to reconstruct the last stage' if uses_decoder
                             else "stage 2: the encoder's factor, no grad (stage 1's paraphraser, kept in memory)")}}


def student4ft(ctx):
    student, teacher = ctx.features('student'), ctx.features('teacher')
    return note({'key': 'Student4FactorTransfer', 'kwargs': {
        'input_module_path': f'student_model.{student.stages[-1]}',
        'translator_kwargs': {'num_input_channels': student.stage_channels[-1],
                              'num_output_channels': int(teacher.stage_channels[-1] * FT_RATE), 'kernel_size': 3,
                              'stride': 1, 'padding': 1, 'uses_bn': True}}},
        "torchdistill's FT translator (3 Conv-BN-LeakyReLU, RepDistiller's Translator), trains with the student")


def stage_side(outputs, wrapper=None, requires_grad=True, frozen_modules=()):
    """``teacher`` / ``student`` of an init stage: forward hooks on ``outputs``."""
    block = {'forward_proc': 'forward_batch_only', 'sequential': []}
    if wrapper:
        block['auxiliary_model_wrapper'] = wrapper
    return {**block, 'forward_hook': {'input': [], 'output': list(outputs)}, 'requires_grad': requires_grad,
            'frozen_modules': list(frozen_modules)}


def feature_groups(ctx, prefix=''):
    """The student's parameter groups without its classifier (RepDistiller's ``get_feat_modules``)."""
    data, head = ctx.data, ctx.features('student').head
    return [g for g in module_wise(ctx.pair.student, data.num_classes, data.lr, data.weight_decay, prefix=prefix)
            if g['module'] != prefix + head]


def init_stage(ctx, teacher, student, groups, terms, lr=None):
    """``train.stage1``: RepDistiller's init: SGD at a constant lr on ``terms`` alone, for ``init_epochs``."""
    data = ctx.data
    config = optimizer(data, groups)
    if lr is not None:
        config['kwargs']['lr'] = lr
    return {'num_epochs': alias('init_epochs'), 'train_data_loader': loader(data, 'train', train=True),
            'val_data_loader': loader(data, 'val', train=False), 'teacher': teacher, 'student': student,
            'optimizer': config, 'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': terms}}}


AB_SCALE = 0.003                        # RepDistiller's ABLoss: / 1000 * 3


def ab_init_stage(ctx):
    student, teacher = ctx.features('student'), ctx.features('teacher')
    if len(student.stages) != len(teacher.stages) or ctx.stage_sizes_differ():
        raise ValueError(f'AB for {ctx.pair.tag}: RepDistiller\'s Connector needs as many stage features on both sides '
                         f'(asserts it) and builds Conv1x1 connectors for equal map sizes only')
    pairs = list(enumerate(zip(student.stages, student.stage_channels, teacher.stages, teacher.stage_channels), 1))
    if student.preacts:
        connectors = {f'stage{i}': {'path': path, 'in_channels': s_ch, 'out_channels': t_ch, 'reads': 'output'}
                      for path, (i, (_, s_ch, _, t_ch)) in zip(student.preacts, pairs)}
        where = "each block's output, before the ReLU that follows it (RepDistiller's preact=True: f_i_pre)"
    else:
        connectors = {f'stage{i}': {'path': f'{s}.{student.stage_blocks - 1}', 'in_channels': s_ch,
                                    'out_channels': t_ch} for i, (s, s_ch, t, t_ch) in pairs}
        where = "the last block of each stage before its ReLU (RepDistiller's preact=True)"
    wrapper = note({'key': 'PreActivationConnector', 'kwargs': {'connectors': connectors}},
                   f'AB: {where}; identity connectors where the channels match, else Conv1x1-BN')
    groups = feature_groups(ctx, 'model.')
    if any(s_ch != t_ch for _, (_, s_ch, _, t_ch) in pairs):
        groups.append(param_group('connectors', ctx.data.lr, ctx.data.weight_decay))
    terms = sub_term('ab', 'AltActTransferLoss', {'feature_pairs': {
        f'stage{i}': {'student': {'path': f'connectors.stage{i}', 'io': 'output'},
                      'teacher': {'path': t, 'io': 'output'}, 'weight': 2.0 ** (i - len(pairs))}
        for i, (_, _, t, _) in pairs},
        'margin': 1.0, 'reduction': note('mean', 'sum over elements / batch size')},
        weight=note(AB_SCALE, f"RepDistiller's ABLoss: stage weights 2^(i-{len(pairs)}), sum / batch / 1000 * 3"),
        about=f'AB alone, margin 1; the teacher side enters through t > 0 only, the same before or after its ReLU '
              f'({REPDISTILLER_INIT}; the main stage is CE only, -a 0)')
    return init_stage(ctx, stage_side(teacher.stages, requires_grad=False),
                      stage_side([f'connectors.stage{i}' for i, _ in pairs], wrapper), groups, terms)


FT_INIT_LR = 0.01                       # RepDistiller's init lr for FT with ResNet / WRN students (else the main lr)


def ft_init_lr(ctx):
    """RepDistiller's helper/pretrain.py: 0.01 for CIFAR ResNet / WRN students, else the main lr (VGG: 0.05)."""
    if ctx.pair.student.startswith(('resnet', 'wrn')):
        return FT_INIT_LR, "RepDistiller's init lr for FT with ResNet students"
    return ctx.data.lr, "RepDistiller's init lr for FT with a non-ResNet student: the main lr"


def ft_init_stage(ctx):
    teacher = ctx.features('teacher')
    feature = f'model.{teacher.stages[-1]}'
    terms = {'reconstruction': {
        'criterion': note({'key': 'MSELoss', 'kwargs': {'reduction': 'mean'}}, "FT stage 1: the paraphraser learns to "
                          f"reconstruct the teacher's last stage ({REPDISTILLER_INIT})", above=True),
        'criterion_wrapper': {'key': 'SimpleLossWrapper', 'kwargs': {
            'input': {'is_from_teacher': True, 'module_path': 'paraphraser', 'io': 'output'},
            'target': {'is_from_teacher': True, 'module_path': feature, 'io': 'output'}}},
        'weight': 1.0}}
    teacher_side = stage_side([feature, 'paraphraser'], paraphraser_teacher(ctx, True), frozen_modules=['model'])
    lr, lr_note = ft_init_lr(ctx)
    return init_stage(ctx, teacher_side, stage_side([], requires_grad=note(False, 'the student waits for stage 2')),
                      [param_group('paraphraser', lr, ctx.data.weight_decay, is_teacher=True)], terms,
                      lr=note(lr, lr_note))


def fsp_init_stage(ctx):
    student, teacher = ctx.features('student'), ctx.features('teacher')
    s_maps, t_maps = [student.stem, *student.stages], [teacher.stem, *teacher.stages]
    if len(s_maps) != len(t_maps) or student.stage_channels != teacher.stage_channels:
        raise ValueError(f'FSP for {ctx.pair.tag}: RepDistiller\'s FSP needs as many maps on both sides (asserts it) '
                         'and equal channels (raises ValueError)')
    terms = sub_term('fsp', 'FSPMatrixLoss', {'student_paths': s_maps, 'teacher_paths': t_maps},
                     about="FSP alone on the stem and stage outputs, RepDistiller's form (torchdistill's FSPLoss pairs "
                           "a block's input and output and takes unsquared norms: docs/baselines.md) "
                           f'({REPDISTILLER_INIT}; the main stage is CE only: -b 50 is never used, its loss_kd is 0 '
                           'for FSP)')
    return init_stage(ctx, stage_side(t_maps, requires_grad=False), stage_side(s_maps), feature_groups(ctx), terms)


INIT_STAGES = {'ab': ab_init_stage, 'ft': ft_init_stage, 'fsp': fsp_init_stage}


def rkd_term(ctx):
    return sub_term('rkd', 'RKDLoss', {
        'student_output_path': ctx.path('student', ctx.features('student').pool),
        'teacher_output_path': ctx.path('teacher', ctx.features('teacher').pool),
        'dist_factor': 25.0, 'angle_factor': 50.0, 'reduction': 'mean'},
        about=f'distance 25, angle 50, weight 1 (alone: with CE 1), as RepDistiller ({MDISTILLER_CFG}); on the pooled '
              'penultimate feature (RKDLoss flattens it)')


def crd_term(ctx):
    return sub_term('crd', 'CRDLoss', {
        'teacher_norm_module_path': 'normalizer', 'student_norm_module_path': 'normalizer',
        'student_empty_module_path': 'empty', 'input_size': alias('crd_feature_dim'),
        'output_size': alias('crd_num_samples'), 'num_negative_samples': alias('crd_num_negative_samples'),
        'num_samples': alias('crd_num_samples'), 'temperature': 0.07, 'momentum': 0.5, 'eps': 1e-7},
        weight=0.8, about=f'NCE temperature 0.07, momentum 0.5, K 16384, embedding 128, weight 0.8 (alone: with CE 1), '
                          f'as RepDistiller ({MDISTILLER_CFG})')


CE_ONLY = (ce_term,)
METHODS = {m.name: m for m in (
    Method('kd', (kd_term,)),
    Method('pesfkd', (pesfkd_term(),), teacher_side='adapters'),
    Method('pesfkd_head', (pesfkd_term(),), teacher_side='head'),
    Method('pesfkd_released', (pesfkd_released_term,), teacher_side='released'),
    Method('ftkd', (ftkd_term(),), teacher_side='full'),
    Method('zscore', (zscore_term,)),
    Method('pesfkd_zscore', (pesfkd_term(beta=9.0, zscore=True),), teacher_side='adapters'),
    Method('ftkd_zscore', (ftkd_term(beta=9.0, zscore=True),), teacher_side='full'),
    Method('dml', (dml_term,), teacher_side='full'),
    Method('kdcl', (kdcl_term('min_logit'),), teacher_side='full'),
    Method('kdcl_naive', (kdcl_term('naive'),), teacher_side='full'),
    Method('dkd', (dkd_term(zscore=False),)),
    Method('dkd_zscore', (dkd_term(zscore=True),)),
    Method('takd_assistant', (kd_term,), chain='assistant'),
    Method('takd', (kd_term,), chain='student'),
    Method('rco', (kd_term,), rco=True),
    Method('dist', (dist_term(zscore=False),)),
    Method('dist_zscore', (dist_term(zscore=True),)),
    Method('mlkd', (mlkd_term(zscore=False),), two_views=True),
    Method('mlkd_zscore', (mlkd_term(zscore=True),), two_views=True),
    Method('ctkd', (ctkd_term(zscore=False),), learned_temperature=True),
    Method('ctkd_zscore', (ctkd_term(zscore=True),), learned_temperature=True),
    Method('ttm', (ttm_term(weighted=False, zscore=False),)),
    Method('wttm', (ttm_term(weighted=True, zscore=False),)),
    Method('ttm_zscore', (ttm_term(weighted=False, zscore=True),)),
    Method('wttm_zscore', (ttm_term(weighted=True, zscore=True),)),
    Method('luminet', (luminet_term,)),
    *(Method(name, (divergence_term(name),)) for name in DIVERGENCES),
    *(Method(f'{name}_zscore', (divergence_term(name, zscore=True),)) for name in DIVERGENCES),
    # representation methods as in CRD / RepDistiller: CE + weight * loss; with PESF-KD: the PESF-KD loss + the same
    Method('pkt', CE_ONLY + (pkt_term,), features='pkt'),
    Method('rkd', CE_ONLY + (rkd_term,), features='rkd'),
    Method('at', CE_ONLY + (at_term,), features='at'),
    Method('fitnet', CE_ONLY + (fitnet_term,), features='fitnet'),
    Method('vid', CE_ONLY + (vid_term,), features='vid'),
    Method('sp', CE_ONLY + (sp_term,), features='sp'),
    Method('cc', CE_ONLY + (cc_term,), features='cc'),
    Method('ab', CE_ONLY, features='ab'),       # the AB loss trains in the init stage only (INIT_STAGES)
    Method('ft', CE_ONLY + (ft_term,), features='ft'),
    Method('fsp', CE_ONLY, features='fsp'),     # the FSP loss trains in the init stage only (INIT_STAGES)
    Method('crd', CE_ONLY + (crd_term,), features='crd'),
    Method('pesfkd_pkt', (pesfkd_term(), pkt_term), teacher_side='adapters', features='pkt'),
    Method('pesfkd_rkd', (pesfkd_term(), rkd_term), teacher_side='adapters', features='rkd'),
    Method('pesfkd_crd', (pesfkd_term(), crd_term), teacher_side='adapters', features='crd'),
)}


# ---- model, data and optimizer blocks ----

@functools.lru_cache(maxsize=None)
def trainable_children(model_key, num_classes):
    """Names of the direct children that hold parameters (for module_wise_configs)."""
    import pesf_ext  # noqa: F401
    from pesf_ext.engine.models import build_model
    import torch
    model = build_model({'key': model_key, 'kwargs': {'num_classes': num_classes}}, torch.device('cpu'), False,
                        'models')
    return tuple(name for name, child in model.named_children() if any(True for _ in child.parameters()))


def param_group(module, lr, weight_decay, is_teacher=False):
    return {'module': module, 'is_teacher': is_teacher,
            'kwargs': {'lr': lr, 'momentum': 0.9, 'weight_decay': weight_decay}}


def module_wise(model_key, num_classes, lr, weight_decay, is_teacher=False, prefix=''):
    return [param_group(prefix + name, lr, weight_decay, is_teacher)
            for name in trainable_children(model_key, num_classes)]


def optimizer(data, module_wise_configs=None):
    config = {'key': 'SGD', 'kwargs': {'lr': data.lr, 'momentum': 0.9, 'weight_decay': data.weight_decay}}
    return {**config, 'module_wise_configs': module_wise_configs} if module_wise_configs else config


def trained_model(data, key, ckpt_dir, experiment):
    """A model trained from scratch and saved to ``dst_ckpt``."""
    return {'key': key, 'kwargs': {'num_classes': data.num_classes}, 'src_ckpt': None,
            'dst_ckpt': join(alias('ckpt_root'), f'/{ckpt_dir}/{experiment}.pt')}


def models_block(data, pair, ckpt_dir, experiment, teacher_ckpt=None):
    if teacher_ckpt is None and data.teacher_from_training:
        teacher_ckpt = join(alias('ckpt_root'), f'/ce/{data.name}-{pair.teacher}.pt')
    return {'teacher_model': {'key': pair.teacher, 'kwargs': pair.teacher_kwargs or {'num_classes': data.num_classes},
                              'src_ckpt': teacher_ckpt},
            'student_model': trained_model(data, pair.student, ckpt_dir, experiment)}


def crd_dataset_wrapper():
    return note({'key': 'CRDDatasetWrapper', 'kwargs': {
        'num_negative_samples': alias('crd_num_negative_samples'), 'mode': 'exact', 'ratio': 1.0}},
        'CRD: each sample also brings its index and K negative indices')


def loader(data, dataset, train, dataset_wrapper=None):
    sampler = 'RandomSampler' if train else 'SequentialSampler'
    return {'dataset_id': alias(dataset), **({'dataset_wrapper': dataset_wrapper} if dataset_wrapper else {}),
            'sampler': {'class_or_func': import_get(f'torch.utils.data.{sampler}'), 'kwargs': None},
            'kwargs': {'batch_size': data.batch_size if train else 2 * data.batch_size,
                       'num_workers': alias('num_workers'), 'pin_memory': True, 'drop_last': False}}


def hooks(ctx, side):
    """(input, output) forward-hook paths that the representation loss reads on ``side``."""
    features = ctx.features(side)
    if ctx.method.features == 'pkt':
        return [ctx.path(side, features.head)], []
    index = 0 if side == 'student' else 1
    paired = [features.stages[pair[index]] for pair in ctx.stage_pairs()] if features.stages else []
    if ctx.method.features == 'at':
        return [], [ctx.path(side, stage) for stage in paired]
    if ctx.method.features == 'sp':
        return [], [ctx.path(side, features.stages[-1])]
    if ctx.method.features == 'fitnet':
        return [], ['regressor'] if side == 'student' else [features.stages[FITNET_HINT]]
    if ctx.method.features == 'vid':
        outputs = [ctx.path(side, stage) for stage in paired]
        return [], outputs + [f'regressor_dict.stage{i}' for i in range(1, len(paired) + 1)] \
            if side == 'student' else outputs
    if ctx.method.features == 'rkd':
        return [], [ctx.path(side, features.pool)]
    if ctx.method.features == 'cc':
        return [], [ctx.path(side, features.pool), 'linear']
    if ctx.method.features == 'ft':
        return [], [ctx.path(side, features.stages[-1]), 'translator' if side == 'student' else 'paraphraser']
    if ctx.method.crd:
        return ['empty'] if side == 'student' else [], [ctx.path(side, features.pool), 'normalizer']
    return [], []


def linear4crd(ctx, side):
    """torchdistill's Linear4CRD: an embedding head ('normalizer') on the pooled feature."""
    return {'key': 'Linear4CRD', 'kwargs': {
        'input_module_path': f'model.{ctx.features(side).pool}',
        'linear_kwargs': {'in_features': ctx.features(side).dim, 'out_features': alias('crd_feature_dim'),
                          'bias': True},
        'power': 2}}


def side_block(ctx, side, wrapper=None, requires_grad=True, frozen_modules=(), requires_grad_note=None):
    """``train.teacher`` / ``train.student``: ``wrapper`` is an auxiliary model wrapper (or None)."""
    inputs, outputs = hooks(ctx, side)
    forward_proc = 'forward_batch_supp_dict' if ctx.method.crd else \
        'forward_two_views' if ctx.method.two_views else 'forward_batch_only'
    block = {'forward_proc': forward_proc, 'sequential': []}
    if wrapper:
        block['auxiliary_model_wrapper'] = wrapper
    return {**block, 'forward_hook': {'input': inputs, 'output': outputs},
            'requires_grad': note(requires_grad, requires_grad_note) if requires_grad_note else requires_grad,
            'frozen_modules': list(frozen_modules)}


def student_block(ctx):
    if ctx.method.features == 'fitnet':
        return side_block(ctx, 'student', hint_regressor(ctx))
    if ctx.method.features == 'vid':
        return side_block(ctx, 'student', vid_distributor(ctx))
    if ctx.method.features == 'cc':
        return side_block(ctx, 'student', note(linear4cckd(ctx, 'student'), "CC's student embedding (RepDistiller "
                                                                           'LinearEmbed, no normalisation)'))
    if ctx.method.features == 'ft':
        return side_block(ctx, 'student', student4ft(ctx))
    if ctx.method.learned_temperature:
        block = side_block(ctx, 'student', curriculum_temperature())
        block['forward_hook']['output'] = note(['temperature'], "the learned temperature, read by CTKDLoss")
        return block
    return side_block(ctx, 'student', linear4crd(ctx, 'student') if ctx.method.crd else None)


def teacher_block(ctx):
    data, pair, method = ctx.data, ctx.pair, ctx.method
    if method.teacher_side == 'adapters':
        adapters = [{'modules': list(pair.adapter_modules),
                     'kind': note('bottleneck', 'PESF-KD eq. 6: h + relu(h W_down) W_up, W_up zero-initialised'),
                     'bottleneck': 32}]
        if method.features in ('pkt', 'crd'):  # RKDLoss computes its teacher side under no_grad
            adapters = note(adapters, f"The {method.features.upper()} loss reads the adapted teacher's features "
                                      'with grad, so its gradient reaches the adapters too (the released PESF-KD code '
                                      'adapts the logits only).', above=True)
        kwargs = {'adapters': adapters, 'input_shape': list(data.input_shape)}
        if method.crd:
            kwargs['wrapper'] = note(linear4crd(ctx, 'teacher'),
                                     "CRD's embedding head on the adapted teacher (trains too)")
        trained = 'the adapters and the CRD head train' if method.crd else 'only the adapters train'
        return side_block(ctx, 'teacher', {'key': 'AdapterTeacher', 'kwargs': kwargs},
                          requires_grad_note=f'the teacher forward runs with grad, {trained}')
    if method.teacher_side == 'head':
        head = ctx.features('teacher').head
        adapters = [{'modules': [head], 'kind': note('head', "the released code's placement: logits - A(feature), "
                                                             'A = Linear(d, K) -> Linear(K, r) -> ReLU -> Linear(r, K), '
                                                             'last layer zero-initialised (eq. 8 loss, unlike '
                                                             'pesfkd_released)'),
                     'bottleneck': 32}]
        return side_block(ctx, 'teacher', {'key': 'AdapterTeacher', 'kwargs': {
            'adapters': adapters, 'input_shape': list(data.input_shape)}},
            requires_grad_note='the teacher forward runs with grad, only the head adapter trains')
    if method.teacher_side == 'released':
        head = ctx.features('teacher').head
        adapters = [{'modules': [head], 'kind': note('head', 'logits - A(feature), A = Linear(d, K) -> Linear(K, r) -> '
                                                             'ReLU -> Linear(r, K)'),
                     'bottleneck': 32, 'zero_init': note(False, "released code: PyTorch's default init, not zero")}]
        block = side_block(ctx, 'teacher', {'key': 'AdapterTeacher', 'kwargs': {
            'adapters': adapters, 'input_shape': list(data.input_shape)}},
            requires_grad_note='the teacher forward runs with grad, only the head adapter trains')
        block['forward_hook']['output'] = note([f'adapters.{head}'], "the adapter's delta: PESFKDLoss subtracts it "
                                                                      'to get the pre-adapter logits')
        return block
    if method.crd:
        wrapper = note(linear4crd(ctx, 'teacher'), "CRD trains the teacher's embedding head ('normalizer') only")
        return side_block(ctx, 'teacher', wrapper, frozen_modules=['model'])
    if method.features == 'cc':
        wrapper = note(linear4cckd(ctx, 'teacher'), "CC trains the teacher's embedding ('linear') with the student "
                                                   '(RepDistiller: embed_t in its trainable list)')
        return side_block(ctx, 'teacher', wrapper, frozen_modules=['model'])
    if method.features == 'ft':
        return side_block(ctx, 'teacher', paraphraser_teacher(ctx, False), frozen_modules=['model'],
                          requires_grad_note='the paraphraser keeps requires_grad (checkpoints), gets no gradient')
    return side_block(ctx, 'teacher', requires_grad=method.teacher_side == 'full')


def distillation_optimizer(ctx):
    data, pair, method = ctx.data, ctx.pair, ctx.method
    groups = module_wise(pair.student, data.num_classes, data.lr, data.weight_decay, prefix=ctx.path('student', ''))
    if method.crd:
        groups.append(param_group('normalizer', data.lr, data.weight_decay))
    if method.learned_temperature:
        groups.append(param_group('temperature', data.lr, data.weight_decay))
    if method.features == 'fitnet':
        groups.append(param_group('regressor', data.lr, data.weight_decay))
    if method.features == 'vid':
        groups.append(param_group('regressor_dict', data.lr, data.weight_decay))  # CTKD: in the student's SGD
    if method.features == 'cc':
        groups += [param_group('linear', data.lr, data.weight_decay),
                   param_group('linear', data.lr, data.weight_decay, is_teacher=True)]
    if method.features == 'ft':
        groups.append(param_group('translator', data.lr, data.weight_decay))
    if method.teacher_side in ('adapters', 'head', 'released'):
        adapter_lr = note(ADAPTER_LR, ADAPTER_LR_NOTE, above=True)
        groups.append(param_group('adapters', adapter_lr, data.weight_decay, is_teacher=True))
    elif method.teacher_side == 'full':
        groups += module_wise(pair.teacher, data.num_classes, FTKD_TEACHER_LR, data.weight_decay, is_teacher=True,
                              prefix=ctx.path('teacher', ''))
    if method.crd:
        groups.append(param_group('normalizer', data.lr, data.weight_decay, is_teacher=True))
    config = optimizer(data, groups)
    if method.two_views and data.mlkd_max_grad_norm:
        config['max_grad_norm'] = note(data.mlkd_max_grad_norm, 'not in the reference: MLKD diverges here without it '
                                                                 '(tools/make_configs.py, FASHION_MNIST)')
    if method.teacher_side == 'released':
        config['grad_accum_step'] = note(RELEASED_ACCUMULATION, 'released code: one optimizer step every 4 batches')
    return config


def settings(data, crd=False, staged=False):
    block = {'ckpt_root': anchor('ckpt_root', data.ckpt_root), 'num_workers': anchor('num_workers', data.num_workers),
             'num_epochs': anchor('num_epochs', data.num_epochs)}
    if staged:
        block['init_epochs'] = note(anchor('init_epochs', data.init_epochs),
                                    'train.stage1 (init); num_epochs is train.stage2 (RepDistiller: 30, then 240)')
    if crd:
        block['crd_num_samples'] = note(
            anchor('crd_num_samples', data.train_size),
            'CRD memory: one row per train image, so crd_num_samples must equal the train set size (change it together '
            'with num_train_samples); K negatives per sample and embedding size as in CRD (Tian et al., 2020)',
            above=True)
        block['crd_num_negative_samples'] = anchor('crd_num_negative_samples', 16384)
        block['crd_feature_dim'] = anchor('crd_feature_dim', 128)
    return block


def config(data, description, models, train, crd=False, datasets=None):
    """A whole config: header, dependencies, settings, datasets, ``models``, ``train`` (after its loaders), test."""
    header = [description, 'Generated by tools/make_configs.py; run with',
              '  python tools/image_classification.py --config <this file>']
    staged = 'stage1' in train
    train = {'log_freq': data.log_freq, **({} if staged else {'num_epochs': alias('num_epochs')}), **train}
    if data.epoch_metrics:
        train['post_epoch_process'] = note('epoch_metrics_post_epoch_process',
                                           'gap, KL, agreement, PL, CKA per epoch (docs/analysis.md)')
    return dump_config({
        'dependencies': [{'name': 'pesf_ext'}], 'settings': settings(data, crd, staged),
        'datasets': datasets or data.datasets,
        'models': models, 'train': train,
        'test': {'test_data_loader': loader(data, data.test_split, train=False)}}, header)


def takd_experiment(data, pair):
    """TAKD's first link (teacher -> assistant): its experiment name, also the ckpt the second link starts from."""
    return f'{data.name}-{pair.assistant}_from_{pair.teacher}'


def rco_block(data, pair):
    """``train.rco``: the route saved by the teacher's *_teacher_ce_rco.yaml run, one anchor per equal share of the
    student's epochs, the converged teacher last."""
    route = [join(alias('ckpt_root'), f'/ce_rco/{data.name}-{pair.teacher}_ep{e}.pt') for e in data.rco_anchor_epochs]
    route.append(join(alias('ckpt_root'), f'/ce_rco/{data.name}-{pair.teacher}.pt'))
    share = data.num_epochs // len(route)
    return note({'anchors': route, 'switch_epochs': [i * share for i in range(len(route))]},
                'RCO: the teacher after epochs ' + ', '.join(map(str, data.rco_anchor_epochs)) + ' of its own run, then '
                'converged, each for an equal share of the epochs (evenly spaced: RCO chooses anchors greedily)',
                above=True)


def distillation_config(data, pair, method):
    teacher_ckpt = None
    if method.rco:
        teacher_ckpt = join(alias('ckpt_root'), f'/ce_rco/{data.name}-{pair.teacher}.pt')
    if method.chain == 'assistant':
        pair = dataclasses.replace(pair, student=pair.assistant)
    elif method.chain == 'student':
        teacher_ckpt = note(join(alias('ckpt_root'), f'/takd_assistant/{takd_experiment(data, pair)}.pt'),
                            "TAKD: the assistant trained by the *_takd_assistant.yaml config of this pair")
        pair = dataclasses.replace(pair, teacher=pair.assistant)
    ctx = Context(data, pair, method)
    experiment = f'{data.name}-{pair.student}_from_{pair.teacher}'
    dataset_wrapper = crd_dataset_wrapper() if method.crd else None
    train = {
        'pre_epoch_process': note('distillation_pre_epoch_process', 'teacher eval where frozen, train where trainable'),
        'train_data_loader': loader(data, 'train', train=True, dataset_wrapper=dataset_wrapper),
        'val_data_loader': loader(data, 'val', train=False),
        'teacher': teacher_block(ctx),
        'student': student_block(ctx),
        'optimizer': distillation_optimizer(ctx),
        'scheduler': data.scheduler,
        'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
            name: sub for term in method.terms for name, sub in term(ctx).items()}}}}
    if method.staged:
        main = {'num_epochs': alias('num_epochs'), **{key: train.pop(key) for key in (
            'teacher', 'student', 'optimizer', 'scheduler', 'criterion')}}
        del train['train_data_loader'], train['val_data_loader']
        train['pre_epoch_process'] = note('distillation_pre_epoch_process', 'teacher eval where frozen, train where '
                                                                            'trainable; the runner applies it to '
                                                                            'every stage')
        train['stage1'] = INIT_STAGES[method.features](ctx)
        train['stage2'] = main
    if method.rco:
        train['pre_epoch_process'] = note('rco_pre_epoch_process', 'distillation_pre_epoch_process, then the anchor '
                                                                   'of the epoch into the teacher')
        train['rco'] = rco_block(data, pair)
    return config(data, f'{method.name} on {data.name}: {pair.teacher} -> {pair.student}',
                  models_block(data, pair, method.name, experiment, teacher_ckpt), train, crd=method.crd,
                  datasets=data.two_view_datasets if method.two_views else None)


def training_config(data, model_key, role, rco=False):
    """Cross-entropy training; ``rco`` also saves the route (``train.anchor_epochs``) under ckpt_root/ce_rco/."""
    train = {
        'train_data_loader': loader(data, 'train', train=True), 'val_data_loader': loader(data, 'val', train=False),
        'model': {'forward_proc': 'forward_batch_only', 'sequential': [],
                  'forward_hook': {'input': [], 'output': []}, 'requires_grad': True, 'frozen_modules': []},
        'optimizer': optimizer(data), 'scheduler': data.scheduler,
        'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': ce_term(None)}}}
    if rco:
        train['anchor_epochs'] = note(list(data.rco_anchor_epochs), 'RCO: the model is also saved after these epochs '
                                                                    '(<dst_ckpt stem>_ep<N>.pt), the route')
    return config(data, f'cross-entropy training of the {role} ({model_key}) on {data.name}' +
                  (', saving its route for RCO' if rco else ''),
                  {'model': trained_model(data, model_key, 'ce_rco' if rco else 'ce', f'{data.name}-{model_key}')}, train)


# ---- which configs exist ----
FASHION_MNIST_METHODS = tuple(METHODS)                   # every method and combination
CIFAR_METHODS = ('kd', 'pesfkd', 'ftkd', 'zscore', 'dml', 'kdcl')  # every pair (PESF-KD Table I, DML/KDCL rows)
CIFAR_EXTRA_METHODS = {                                  # PESF-KD Table IV (representation KD +- PESF-KD); DKD
    'resnet56_resnet20': ('pkt', 'crd', 'rkd', 'pesfkd_pkt', 'pesfkd_crd', 'pesfkd_rkd', 'dkd', 'dkd_zscore',
                          'pesfkd_released', 'ctkd', 'ctkd_zscore', 'mlkd', 'mlkd_zscore', 'dist', 'dist_zscore',
                          'takd_assistant', 'takd', 'rco', 'at', 'sp', 'fitnet', 'vid', 'cc', 'ab', 'ft', 'fsp',
                          'ttm', 'wttm', 'luminet'),
    'resnet110_resnet32': ('at', 'sp', 'fitnet', 'vid', 'cc', 'ab', 'ft', 'fsp'),
    'vgg13_vgg8': ('dkd', 'dkd_zscore', 'ctkd', 'ctkd_zscore', 'mlkd', 'mlkd_zscore',
                   'dist', 'dist_zscore', 'at', 'sp', 'fitnet', 'vid', 'cc', 'ab', 'ft', 'fsp', 'ttm', 'wttm', 'luminet'),
    # no AB, FSP: RepDistiller's Connector and FSP assert as many features on both sides (VGG 4 stages, ResNet 3)
    'resnet56_vgg8': ('at', 'sp', 'fitnet', 'vid', 'cc', 'ft'),
}
IMAGENET_METHODS = ('kd', 'pkt', 'crd', 'rkd', 'kdcl', 'dml', 'ftkd', 'pesfkd', 'zscore', 'pesfkd_crd')  # Table II


def fashion_mnist_configs():
    pair = PAIRS_CIFAR[0]
    configs = {f'fashion_mnist/{model}_{role}_ce.yaml': training_config(FASHION_MNIST, model, role)
               for model, role in ((pair.teacher, 'teacher'), (pair.student, 'student'))}
    configs[f'fashion_mnist/{pair.teacher}_teacher_ce_rco.yaml'] = training_config(FASHION_MNIST, pair.teacher,
                                                                                  'teacher', rco=True)
    for name in FASHION_MNIST_METHODS:
        configs[f'fashion_mnist/{pair.tag}_{name}.yaml'] = distillation_config(FASHION_MNIST, pair, METHODS[name])
    return configs


def cifar100_configs():
    configs = {}
    for pair in PAIRS_CIFAR:
        teacher_path = f'cifar100/{pair.teacher}_teacher_ce.yaml'
        if teacher_path not in configs:
            configs[teacher_path] = training_config(CIFAR100, pair.teacher, 'teacher')
        if 'rco' in CIFAR_EXTRA_METHODS.get(pair.tag, ()):
            configs[f'cifar100/{pair.teacher}_teacher_ce_rco.yaml'] = training_config(CIFAR100, pair.teacher,
                                                                                       'teacher', rco=True)
        for name in CIFAR_METHODS + CIFAR_EXTRA_METHODS.get(pair.tag, ()):
            configs[f'cifar100/{pair.tag}_{name}.yaml'] = distillation_config(CIFAR100, pair, METHODS[name])
    return configs


def imagenet_configs():
    return {f'imagenet/{PAIR_IMAGENET.tag}_{name}.yaml': distillation_config(IMAGENET, PAIR_IMAGENET, METHODS[name])
            for name in IMAGENET_METHODS}


FAMILIES = (fashion_mnist_configs, cifar100_configs, imagenet_configs)   # each: () -> {path under configs/: text}


def all_configs():
    """Maps a path under configs/ to its YAML text, over every family in ``FAMILIES``."""
    configs = {}
    for family in FAMILIES:
        for rel_path, text in family().items():
            if rel_path in configs:
                raise ValueError(f'configs/{rel_path} written by two families ({family.__name__} and another)')
            configs[rel_path] = text
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
