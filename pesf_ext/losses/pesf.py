"""PESF-KD: parameter-efficient, student-friendly KD (student and teacher adapters trained together)."""
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss, check_weight, extract_logits, linear_warmup
from .functional import check_choice

TEACHER_KL_CHOICES = ('reverse', 'shared', 'released')


@register_mid_level_loss
class PESFKDLoss(LogitPairLoss):
    """PESF-KD loss: student KD loss plus the loss of the teacher's adapters, summed so one backward serves both.

    Student (eq. 7), adapter-adjusted teacher logits :math:`z_{ta}` detached:

    .. math:: L_s = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\tau^2 KL(p^\\tau_{ta} \\| p^\\tau_s)

    ``teacher_kl='reverse'`` (paper eq. 8, default), student logits detached:

    .. math:: L_{ta} = \\alpha_t \\cdot CE(y, z_{ta}) + \\beta_t \\cdot \\tau^2 KL(p^\\tau_s \\| p^\\tau_{ta})

    ``teacher_kl='shared'`` (a variant, in neither the paper nor the released code): no reverse KL; instead
    :math:`z_{ta}` is *not* detached in the student's KL term, so the adapters also receive that term's gradient,
    and :math:`L_{ta} = \\alpha_t \\cdot CE(y, z_{ta})`. ``teacher_beta`` does not exist in this mode.

    ``teacher_kl='released'``: the training step of the authors' released CV code (``train_distill`` in
    github.com/1170300319/PESF-KD ``cv/helper/loops.py``). The student learns from the teacher's logits *before*
    the adapter, :math:`z_t = z_{ta} - \\Delta` (``delta_module_path``: the head adapter, whose output is the
    delta it adds), and the adapter side is RepDistiller's ``DistillKL(z_s, z_ta)``, the gradient reaching
    :math:`z_{ta}` through the *target* distribution:

    .. math:: L_s = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\tau^2 KL(p^\\tau(c(z_t)) \\| p^\\tau_s), \\quad
              L_{ta} = \\alpha_t \\cdot CE(y, z_{ta}) + \\beta_t \\cdot \\tau^2 KL(p^\\tau_{ta} \\| p^\\tau(c(z_s)))

    with :math:`z_t` and :math:`z_s` detached where they are held fixed and :math:`c` the label correction when
    ``target_correction='swap'`` (the released code always applies it). So the adapters never change what the
    student learns from. Released defaults: ``alpha`` = gamma = 1, ``beta`` = its ``-a``, ``teacher_alpha`` = 1,
    ``teacher_beta`` = ``beta`` (one ``-a`` weighs both KL terms). Classification heads only.

    ``teacher_warmup_epochs`` :math:`E_{warm} > 0` (not in the papers; default 0 = off) ramps the adapters' KL
    term linearly, :math:`\\beta_t \\cdot \\min(e / E_{warm}, 1)`, as DKD ramps its terms: early in training the
    student is far from the teacher, and a large adapter lr lets the reverse KL drag the teacher onto it. The epoch
    :math:`e` (1-based) comes from :meth:`set_epoch`, which ``distillation_pre_epoch_process`` calls. Measured in
    docs/RESULTS.md (question 2): on Fashion-MNIST it does not rescue the larger adapter lrs.

    The sum :math:`L_s + L_{ta}` is returned: student and adapters have disjoint parameters, so one backward
    gives each its own gradient. Frozen teacher parameters get none, which keeps PESF-KD cheap.

    Jun Rao, Xv Meng, Liang Ding, Shuhan Qi, Xuebo Liu, Min Zhang, Dacheng Tao: `"Parameter-Efficient and
    Student-Friendly Knowledge Distillation" <https://arxiv.org/abs/2205.15308>`_ @ IEEE TMM (2023)

    Weights follow torchdistill: ``alpha`` is the CE weight, ``beta`` (default ``1 - alpha``) the KL weight;
    **the paper's alpha (KL weight) is ``beta`` here**, its ``1 - alpha`` is ``alpha``.
    ``teacher_alpha``/``teacher_beta`` default to the student's. ``target_correction='swap'`` label-corrects the
    logits each KL term is held to (the teacher's for the student; in 'reverse' mode the student's for the
    adapters; in 'released' mode the detached student input of the adapter term). Other arguments: see
    :class:`pesf_ext.losses.base.LogitPairLoss`. ``last_terms`` keys: 'student_ce', 'student_kl', 'teacher_ce',
    'teacher_kl'.

    .. code-block:: yaml

        criterion:
          key: 'WeightedSumLoss'
          kwargs:
            sub_terms:
              pesf:
                criterion:
                  key: 'PESFKDLoss'
                  kwargs:
                    student_module_path: '.'
                    student_module_io: 'output'
                    teacher_module_path: '.'
                    teacher_module_io: 'output'
                    temperature: 4.0
                    alpha: 0.1        # CE weight (paper: 1 - alpha)
                    beta: 0.9         # KL weight (paper: alpha)
                    teacher_kl: 'reverse'
                weight: 1.0
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature, alpha=None, beta=None, reduction='batchmean', teacher_alpha=None, teacher_beta=None,
                 teacher_kl='reverse', logit_standardization=False, std='unbiased', eps=1e-7, target_correction=None,
                 delta_module_path=None, delta_module_io='output', teacher_warmup_epochs=0):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, reduction, logit_standardization, std, eps, target_correction)
        check_choice('teacher_kl', teacher_kl, TEACHER_KL_CHOICES)
        if teacher_kl == 'shared' and teacher_beta is not None:
            raise ValueError("teacher_beta is unused when teacher_kl='shared' (no reverse KL); leave it None")
        if (teacher_kl == 'released') != (delta_module_path is not None):
            raise ValueError("delta_module_path (the head adapter, e.g. 'adapters.fc') is needed with "
                             "teacher_kl='released' and only there")
        self.teacher_kl = teacher_kl
        self.delta_module_path = delta_module_path
        self.delta_module_io = delta_module_io
        self.teacher_alpha = check_weight('teacher_alpha', self.alpha if teacher_alpha is None else teacher_alpha)
        self.teacher_beta = 0.0 if teacher_kl == 'shared' else \
            check_weight('teacher_beta', self.beta if teacher_beta is None else teacher_beta)
        self.teacher_warmup_epochs = check_weight('teacher_warmup_epochs', teacher_warmup_epochs)
        if teacher_kl == 'shared' and teacher_warmup_epochs:
            raise ValueError("teacher_warmup_epochs ramps the adapters' KL term, which teacher_kl='shared' does "
                             "not have; leave it 0")
        self.epoch = None

    def set_epoch(self, epoch):
        """Sets the 1-based epoch :math:`e` of the teacher-term warm-up (called by a pre-epoch process)."""
        self.epoch = epoch

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_ta = self.logits(student_io_dict, teacher_io_dict)
        if self.teacher_kl == 'released':
            z_t = (z_ta - extract_logits(teacher_io_dict, self.delta_module_path, self.delta_module_io)).detach()
            student_kl = lambda: self.kl(self.corrected(z_t, targets), z_s)  # noqa: E731
            teacher_kl = lambda: self.kl(z_ta, self.corrected(z_s.detach(), targets))  # noqa: E731
        else:
            kl_target = z_ta if self.teacher_kl == 'shared' else z_ta.detach()
            student_kl = lambda: self.kl(self.corrected(kl_target, targets), z_s)  # noqa: E731
            teacher_kl = lambda: self.kl(self.corrected(z_s.detach(), targets), z_ta)  # noqa: E731
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', self.beta, student_kl),
            ('teacher_ce', self.teacher_alpha, lambda: self.cross_entropy(z_ta, targets)),
            ('teacher_kl', self.teacher_beta * linear_warmup(
                self.epoch, self.teacher_warmup_epochs, 'PESFKDLoss with teacher_warmup_epochs > 0'), teacher_kl),
        ], reference=z_s)

    def extra_repr(self):
        return (f'{super().extra_repr()}, teacher_alpha={self.teacher_alpha}, teacher_beta={self.teacher_beta}, '
                f'teacher_kl={self.teacher_kl!r}, delta_module_path={self.delta_module_path!r}, '
                f'teacher_warmup_epochs={self.teacher_warmup_epochs}')
