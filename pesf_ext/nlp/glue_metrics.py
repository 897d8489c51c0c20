"""GLUE task metrics with numpy/scipy/scikit-learn (no download, unlike Hugging Face ``evaluate``).

Each is the definition GLUE uses: accuracy; F1 of the positive class (MRPC, QQP); Matthews correlation (CoLA);
Pearson and Spearman correlation of the predicted and gold similarity scores (STS-B). Returned in percent, as the
papers' tables are.
"""
import numpy as np


# scipy.stats and sklearn.metrics (over a second of start-up) are imported by the metric that needs them, when a
# GLUE evaluation first runs: not by every run that imports pesf_ext
def f1(pred, gold):
    from sklearn.metrics import f1_score
    return float(f1_score(gold, pred, pos_label=1, average='binary', zero_division=0))


def matthews(pred, gold):
    from sklearn.metrics import matthews_corrcoef
    return float(matthews_corrcoef(gold, pred))


def pearson(pred, gold):
    from scipy import stats
    return float(stats.pearsonr(pred, gold)[0])


def spearman(pred, gold):
    from scipy import stats
    return float(stats.spearmanr(pred, gold)[0])


METRIC_FUNCTIONS = {
    'accuracy': lambda pred, gold: float(np.mean(pred == gold)),
    'f1': f1,
    'matthews': matthews,
    'pearson': pearson,
    'spearman': spearman,
}


def predictions(logits):
    """Class ids (argmax) of classification logits; the score itself for a one-output regression head."""
    logits = np.asarray(logits)
    if logits.ndim == 1 or logits.shape[-1] == 1:
        return logits.reshape(-1)
    return logits.argmax(axis=-1)


def glue_metrics(logits, labels, names):
    """{name: value in %} for the metric ``names`` plus 'score', their mean (the GLUE convention for a task with
    two metrics, used to select the best checkpoint). A correlation of a constant prediction is reported as 0."""
    pred, gold = predictions(logits), np.asarray(labels).reshape(-1)
    results = {}
    for name in names:
        value = METRIC_FUNCTIONS[name](pred, gold)
        results[name] = 100.0 * (0.0 if np.isnan(value) else value)
    results['score'] = float(np.mean([results[name] for name in names]))
    return results


__all__ = ['METRIC_FUNCTIONS', 'glue_metrics', 'predictions']
