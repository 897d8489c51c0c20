"""LumiNet: KD on logits standardized per class over the batch (the per-class sibling of Z-score's per-sample)."""
import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss, check_weight, linear_warmup
from .functional import batch_standardized_kl, check_choice, is_regression

BATCH_STATISTICS_CHOICES = ('local', 'global')


def gathered_rows(tensor):
    """The rows of ``tensor`` from every process, concatenated in rank order; gradients flow back to each process's
    own rows (``torch.distributed.nn.functional.all_gather``). ``tensor`` itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return torch.cat(all_gather(tensor), dim=0)


@register_mid_level_loss
class LumiNetLoss(LogitPairLoss):
    """LumiNet ('perceptual' KD), teacher detached.

    .. math:: L = \\alpha \\cdot CE(y, z_s) + w(e) \\cdot \\beta \\cdot
              KL(\\mathrm{softmax}(\\hat{z}_t / \\tau) \\| \\mathrm{softmax}(\\hat{z}_s / \\tau)),
              \\quad \\hat{z}_{i,k} = \\frac{z_{i,k} - \\mu_k}{\\sqrt{\\sigma_k^2 + \\epsilon}}

    :math:`\\mu_k`, :math:`\\sigma_k^2`: mean and population variance of class k's logit over the batch, each
    network its own (:func:`~pesf_ext.losses.functional.batch_standardize_logits`), eps 1e-5 inside the root. As
    the authors' code (ismail31416/LumiNet ``mdistiller/distillers/Luminet.py``): the KL is 'batchmean' and has
    **no** :math:`\\tau^2`; they weight it by their ``SOLVER.ALPHA`` squared, so their ALPHA 31 is ``beta: 961``
    here; CE weight ``SOLVER.CE_WEIGHT`` (``alpha`` here); warm-up :math:`w(e) = \\min(e / E_{warm}, 1)` over
    ``warmup_epochs`` (theirs: 20 of 240; the epoch comes from :meth:`set_epoch`, as for :class:`DKDLoss`).
    Their defaults (``mdistiller/engine/cfg.py``): CE 2, ALPHA 31, T 4; VGG13 -> VGG8: CE 1.3, ALPHA 11, T 2.

    **The batch is part of the loss.** ``batch_statistics`` says whose rows give :math:`\\mu, \\sigma` when several
    processes train together (DDP):

    - 'local' (default): each process's own rows. The authors' set-up: one GPU with batch 64 on CIFAR-100, and
      ``nn.DataParallel`` on ImageNet, where each replica computes the loss on its share of the batch.
    - 'global': the rows of every process (an autograd-aware all-gather, so each process's loss also sends
      gradient to the others' student logits), i.e. the statistics one process would compute on the whole batch.
      Needs equal per-process batch sizes (``DistributedSampler`` pads the last shard so they are).

    Without a process group both are the same. No ``logit_standardization`` switch: Z-score (per sample) and this
    per-class standardization each remove the logit scale that makes a target sharp; chained, the second undoes the
    first's unit row std, a combination neither paper defines or measures.

    Md Ismail Hossain, M M Lutfe Elahi, Sameera Ramasinghe, Ali Cheraghian, Fuad Rahman, Nabeel Mohammed, Shafin
    Rahman: `"LumiNet: The Bright Side of Perceptual Knowledge Distillation" <https://arxiv.org/abs/2310.03669>`_
    (arXiv 2023)

    Arguments: see :class:`pesf_ext.losses.base.LogitPairLoss` (``alpha``: CE weight, ``beta``: weight of the
    un-scaled KL); ``eps`` is added to the variance. Class logits only. ``last_terms`` keys: 'student_ce',
    'student_kl' (without the warm-up factor).

    .. code-block:: yaml

        criterion:
          key: 'LumiNetLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            temperature: 4.0
            alpha: 2.0      # CE weight
            beta: 961.0     # the authors' ALPHA 31, squared
            warmup_epochs: 20
            batch_statistics: 'local'
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature, alpha=None, beta=None, reduction='batchmean', eps=1e-5, warmup_epochs=0,
                 batch_statistics='local'):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, reduction, eps=eps)
        check_choice('batch_statistics', batch_statistics, BATCH_STATISTICS_CHOICES)
        self.eps = eps
        self.warmup_epochs = check_weight('warmup_epochs', warmup_epochs)
        self.batch_statistics = batch_statistics
        self.epoch = None

    def set_epoch(self, epoch):
        """Sets the epoch :math:`e` of the warm-up factor (called by a pre-epoch process)."""
        self.epoch = epoch

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        if is_regression(z_s):
            raise ValueError('LumiNetLoss needs class logits (N, K >= 2); a regression head has no class columns')
        z_t = z_t.detach()
        stats_s = stats_t = None
        if self.batch_statistics == 'global':
            stats_s, stats_t = gathered_rows(z_s), gathered_rows(z_t)
        kd_factor = linear_warmup(self.epoch, self.warmup_epochs, 'LumiNetLoss with warmup_epochs > 0')
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', kd_factor * self.beta, lambda: batch_standardized_kl(
                z_t, z_s, self.temperature, self.reduction, self.eps, stats_t, stats_s)),
        ], reference=z_s)

    def extra_repr(self):
        return (f'{super().extra_repr()}, eps={self.eps}, warmup_epochs={self.warmup_epochs}, '
                f'batch_statistics={self.batch_statistics!r}')
