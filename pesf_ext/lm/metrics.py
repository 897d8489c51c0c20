"""Held-out metrics of causal LMs, counted over the tokens whose label is not -100 (token-weighted):
perplexity, next-token top-1 accuracy, and for a teacher-student pair the top-1 agreement, KL(p_t || p_s) and the
sharpness gap S(z_t) - S(z_s) (PESF-KD, eq. 3, per token); ROUGE-L of greedy generations (Lin, 2004)."""
import logging
import math
import re

import torch
from torchdistill.misc.log import MetricLogger

from ..engine.distributed import (ShardSampler, all_reduce_sum, gather_in_order, get_rank, get_world_size,
                                  shard_eval_loader)
from ..engine.fsdp import Lockstep, generation_kwargs, lockstep_batches
from ..engine.loop import inference_model, move_to, split_batch
from ..losses.divergences import align_for_causal_lm
from ..losses.functional import position_kl, sharpness_gap

logger = logging.getLogger(__name__)


@torch.inference_mode()
def evaluate_lm(models, data_loader, device, header='Test:', log_freq=1000, metric_fn=None, vocab_size=None):
    """Per model: 'perplexity' = exp(mean NLL), 'nll', 'top1' (%), and 'score' = -NLL (higher is better: selects the
    best student). With a 'teacher' and a 'student': 'agreement' (% tokens with the same argmax), 'kl' (mean
    KL(p_t || p_s)) and 'sharpness_gap'. Same call as :func:`pesf_ext.engine.loop.evaluate` (``metric_fn`` unused).

    ``vocab_size`` V (the shared tokenizer's size): every figure is over the first V logit columns, as the
    training losses (:func:`~pesf_ext.losses.divergences.align_for_causal_lm`): output rows past the tokenizer are
    padding. None: the smallest width of the models' logits.

    With torchrun each rank scores its own unpadded shard (:func:`shard_eval_loader`), so every held-out token is
    counted exactly once and the sums over ranks equal a single process's."""
    data_loader, sharded = shard_eval_loader(data_loader)
    nets = {name: inference_model(model) for name, model in models.items()}
    for net in nets.values():
        net.eval()
    names = list(nets)
    sums = torch.zeros(2 * len(names) + 4, dtype=torch.float64)  # per model: nll, correct; pair: agree, kl, gap; n
    metric_logger = MetricLogger(delimiter='  ')
    for batch, counted in metric_logger.log_every(lockstep_batches(data_loader, nets.values(), device), log_freq,
                                                  header):
        inputs, labels, _ = split_batch(batch)
        inputs, labels = move_to(inputs, device), move_to(labels, device)
        rows = {}
        outputs = {name: net(**inputs).logits for name, net in nets.items()}
        if not counted:  # FSDP (speed.fsdp): a dummy forward keeping this rank in step with the others
            continue
        width = vocab_size or min(logits.shape[-1] for logits in outputs.values())
        for name, logits in outputs.items():
            logits, _, shifted, mask = align_for_causal_lm(logits, logits, labels, causal_shift=True,
                                                           vocab_size=width)
            rows[name] = logits[mask].float()
            target = shifted[mask]
        for i, name in enumerate(names):
            z = rows[name]
            sums[2 * i] += torch.nn.functional.cross_entropy(z, target, reduction='sum').item()
            sums[2 * i + 1] += (z.argmax(-1) == target).sum().item()
        if 'teacher' in rows and 'student' in rows:
            z_t, z_s = rows['teacher'], rows['student']
            sums[-4] += (z_t.argmax(-1) == z_s.argmax(-1)).sum().item()
            log_t, log_s = torch.log_softmax(z_t, -1), torch.log_softmax(z_s, -1)
            sums[-3] += position_kl(log_t, log_s).sum().item()
            sums[-2] += sharpness_gap(z_t, z_s).sum().item()
        sums[-1] += target.numel()
    flat = all_reduce_sum(sums.tolist(), device) if sharded else sums.tolist()
    count = max(flat[-1], 1)
    results = {}
    for i, name in enumerate(names):
        nll = flat[2 * i] / count
        results[name] = {'perplexity': math.exp(min(nll, 700.0)), 'nll': nll, 'top1': 100.0 * flat[2 * i + 1] / count,
                         'score': -nll}
    if 'teacher' in nets and 'student' in nets:
        results.update(agreement=100.0 * flat[-4] / count, kl=flat[-3] / count, sharpness_gap=flat[-2] / count)
    results['tokens'] = int(flat[-1])
    for name in names:
        logger.info('%s %s: %s', header, name, '  '.join(f'{k} {v:.4f}' for k, v in results[name].items()))
    return results


def rouge_tokens(text):
    """ROUGE's tokenisation (as Google's rouge-score): lower-case, runs of [a-z0-9] only."""
    return re.findall(r'[a-z0-9]+', text.lower())


def lcs_length(a, b):
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len a * len b))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate, reference):
    """ROUGE-L F1 (Lin, 2004): P = LCS / |candidate|, R = LCS / |reference|, F = 2PR / (P + R); 0 when empty."""
    cand, ref = rouge_tokens(candidate), rouge_tokens(reference)
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def left_padded(prompts, pad_id, device):
    """(input_ids, attention_mask) of token-id lists padded on the LEFT to the longest: a decoder-only model
    continues every row from its last column, and the mask keeps the padding out of attention (Hugging Face's
    ``generate`` derives position ids from it)."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def until_end(ids, end_ids):
    """``ids`` up to and including the first of ``end_ids`` (batched generation pads rows that ended early)."""
    for position, token in enumerate(ids):
        if token in end_ids:
            return ids[:position + 1]
    return ids


@torch.inference_mode()
def greedy_responses(model, prompts, tokenizer, device, max_new_tokens=128, batch_size=8, eos_token_id=None):
    """Greedy continuations (decoded text) of token-id ``prompts``, ``batch_size`` at a time, left-padded; each
    equals the continuation of its prompt generated alone. ``eos_token_id`` (an id or a list; default the
    tokenizer's) ends a response."""
    model = inference_model(model).eval()
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    end_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(end_ids, default=0)
    texts = []
    chunks = [prompts[start:start + batch_size] for start in range(0, len(prompts), max(batch_size, 1))]
    for chunk, counted in Lockstep(chunks, [model], device, lambda: [[pad]]):  # FSDP: as many calls on every rank
        ids, mask = left_padded(chunk, pad, device)
        output = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=pad, eos_token_id=eos, **generation_kwargs(model))
        if counted:
            texts += [tokenizer.decode(until_end(row, end_ids), skip_special_tokens=True)
                      for row in output[:, ids.shape[1]:].tolist()]
    return texts


def rouge_l_scores(model, dataset, tokenizer, device, num_samples=50, max_new_tokens=128, batch_size=8,
                   eos_token_id=None):
    """ROUGE-L F1 of the greedy response to each of the first ``num_samples`` prompts, in dataset order (float64).
    With torchrun each rank generates for its own prompts ``rank, rank + world, ...`` (:class:`ShardSampler`, no
    padding) and the scores are gathered back in order (:func:`gather_in_order`); every rank must call it."""
    count = min(num_samples, len(dataset))
    mine = [dataset[i] for i in ShardSampler(count, get_rank(), get_world_size())]
    texts = greedy_responses(model, [row['input_ids'][:row['prompt_length']] for row in mine], tokenizer, device,
                             max_new_tokens, batch_size, eos_token_id)
    scores = torch.tensor([rouge_l(text, row['reference']) for text, row in zip(texts, mine)], dtype=torch.float64)
    return gather_in_order(scores)


def generation_rouge_l(model, dataset, tokenizer, device, num_samples=50, max_new_tokens=128, batch_size=8,
                       eos_token_id=None):
    """Mean ROUGE-L (x100) of greedy continuations of the first ``num_samples`` prompts of an instruction dataset
    (columns input_ids, prompt_length, reference) against their reference responses: prompts batched
    (``batch_size``, left padding) and split over ranks (:func:`rouge_l_scores`); every rank gets the same mean."""
    scores = rouge_l_scores(model, dataset, tokenizer, device, num_samples, max_new_tokens, batch_size, eos_token_id)
    return 100.0 * float(scores.mean()) if len(scores) else 0.0


__all__ = ['evaluate_lm', 'rouge_l', 'lcs_length', 'generation_rouge_l', 'greedy_responses', 'rouge_l_scores']
