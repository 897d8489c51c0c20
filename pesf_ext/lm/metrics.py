"""Held-out metrics of causal LMs, counted over the tokens whose label is not -100 (token-weighted):
perplexity, next-token top-1 accuracy, and for a teacher-student pair the top-1 agreement, KL(p_t || p_s) and the
sharpness gap S(z_t) - S(z_s) (PESF-KD, eq. 3, per token); ROUGE-L of greedy generations (Lin, 2004)."""
import logging
import math
import re

import torch
from torchdistill.misc.log import MetricLogger

from ..engine.distributed import all_reduce_sum, shard_eval_loader
from ..engine.loop import inference_model, move_to, split_batch
from ..losses.divergences import align_for_causal_lm
from ..losses.functional import position_kl, sharpness_gap

logger = logging.getLogger(__name__)


@torch.inference_mode()
def evaluate_lm(models, data_loader, device, header='Test:', log_freq=1000, metric_fn=None):
    """Per model: 'perplexity' = exp(mean NLL), 'nll', 'top1' (%), and 'score' = -NLL (higher is better: selects the
    best student). With a 'teacher' and a 'student': 'agreement' (% tokens with the same argmax), 'kl' (mean
    KL(p_t || p_s)) and 'sharpness_gap'. Same call as :func:`pesf_ext.engine.loop.evaluate` (``metric_fn`` unused).

    With torchrun each rank scores its own unpadded shard (:func:`shard_eval_loader`), so every held-out token is
    counted exactly once and the sums over ranks equal a single process's."""
    data_loader, sharded = shard_eval_loader(data_loader)
    nets = {name: inference_model(model) for name, model in models.items()}
    for net in nets.values():
        net.eval()
    names = list(nets)
    sums = torch.zeros(2 * len(names) + 4, dtype=torch.float64)  # per model: nll, correct; pair: agree, kl, gap; n
    metric_logger = MetricLogger(delimiter='  ')
    for batch in metric_logger.log_every(data_loader, log_freq, header):
        inputs, labels, _ = split_batch(batch)
        inputs, labels = move_to(inputs, device), move_to(labels, device)
        rows = {}
        for name, net in nets.items():
            logits = net(**inputs).logits
            logits, _, shifted, mask = align_for_causal_lm(logits, logits, labels, causal_shift=True)
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


@torch.inference_mode()
def generation_rouge_l(model, dataset, tokenizer, device, num_samples=50, max_new_tokens=128):
    """Mean ROUGE-L (x100) of greedy continuations of the first ``num_samples`` prompts of an instruction dataset
    (columns input_ids, prompt_length, reference) against their reference responses."""
    model = inference_model(model).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = []
    for i in range(min(num_samples, len(dataset))):
        example = dataset[i]
        prompt = torch.as_tensor(example['input_ids'][:example['prompt_length']], device=device)[None]
        output = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(output[0, prompt.shape[1]:], skip_special_tokens=True)
        scores.append(rouge_l(text, example['reference']))
    return 100.0 * sum(scores) / max(len(scores), 1)


__all__ = ['evaluate_lm', 'rouge_l', 'lcs_length', 'generation_rouge_l']
