"""A tiny BERT (built from a config, no download) and tiny GLUE files for the text-path tests."""
import os
import random

import pytest

WORDS = [f'w{i}' for i in range(60)]
SPECIAL = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']


def write_tiny_bert(path, num_layers=12):
    """A 12-layer BERT encoder with hidden size 16 and its word-level tokenizer, saved with ``save_pretrained``
    without a classifier (like bert-base-uncased: each config's num_labels sizes a new head)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    os.makedirs(path, exist_ok=True)
    vocab = os.path.join(path, 'vocab.txt')
    with open(vocab, 'w') as f:
        f.write('\n'.join(SPECIAL + WORDS) + '\n')
    BertTokenizerFast(vocab_file=vocab, do_lower_case=True).save_pretrained(path)
    config = BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=16, num_hidden_layers=num_layers,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    import torch
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


def sentence(rng, length=6):
    return ' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, length)))


def write_glue_task(data_dir, folder, rows_fn, header, num_train=24, num_dev=12, seed=0):
    rng = random.Random(seed)
    os.makedirs(os.path.join(data_dir, folder), exist_ok=True)
    for split, count in (('train', num_train), ('dev', num_dev)):
        with open(os.path.join(data_dir, folder, f'{split}.tsv'), 'w') as f:
            f.write('\t'.join(header) + '\n')
            for i in range(count):
                f.write('\t'.join(str(v) for v in rows_fn(rng, i)) + '\n')


def write_tiny_glue(data_dir):
    """RTE (string labels, HF export columns), SST-2, MRPC (original GLUE columns), STS-B (float scores), QNLI,
    QQP (original columns)."""
    write_glue_task(data_dir, 'RTE', lambda r, i: (sentence(r), sentence(r), ('entailment', 'not_entailment')[i % 2],
                                                   i), ('sentence1', 'sentence2', 'label', 'idx'))
    write_glue_task(data_dir, 'SST-2', lambda r, i: (sentence(r), i % 2), ('sentence', 'label'))
    write_glue_task(data_dir, 'MRPC', lambda r, i: (i % 2, i, i + 100, sentence(r), sentence(r)),
                    ('Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'))
    write_glue_task(data_dir, 'STS-B', lambda r, i: (sentence(r), sentence(r), round(r.uniform(0, 5), 2)),
                    ('sentence1', 'sentence2', 'score'))
    write_glue_task(data_dir, 'QNLI', lambda r, i: (i, sentence(r), sentence(r), ('entailment', 'not_entailment')[i % 2]),
                    ('index', 'question', 'sentence', 'label'))
    write_glue_task(data_dir, 'QQP', lambda r, i: (i, i, i + 1, sentence(r), sentence(r), i % 2),
                    ('id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'))
    return data_dir


@pytest.fixture(scope='session')
def tiny_bert_dir(tmp_path_factory):
    pytest.importorskip('transformers')
    return write_tiny_bert(str(tmp_path_factory.mktemp('tiny_bert')))


@pytest.fixture(scope='session')
def tiny_glue_dir(tmp_path_factory):
    return write_tiny_glue(str(tmp_path_factory.mktemp('tiny_glue')))
