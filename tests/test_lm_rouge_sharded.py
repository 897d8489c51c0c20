"""ROUGE-L generations are batched (left padding) and split over ranks: batched greedy texts equal per-prompt ones
(GPT-2's learned positions and Qwen2's rotary ones), and 3 gloo processes give the one-process per-prompt scores
in dataset order."""
import os

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

pytest.importorskip('transformers')
datasets = pytest.importorskip('datasets')

from pesf_ext.lm import data as lm_data  # noqa: E402
from pesf_ext.lm.metrics import generation_rouge_l, greedy_responses, rouge_l, rouge_l_scores  # noqa: E402
from _dist_run import free_port  # noqa: E402

NUM_PROMPTS, NEW_TOKENS = 7, 6  # 7 prompts over 3 ranks: shards of 3, 2, 2


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory):
    return lm_data.offline_tokenizer_path(vocab_size=300, cache_dir=str(tmp_path_factory.mktemp('tok')),
                                          max_bytes=60_000)


def tiny_model(family, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    if family == 'gpt2':
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                          bos_token_id=eos, eos_token_id=eos)).eval()
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, eos_token_id=eos)).eval()


def prompts(tokenizer):
    texts = ['def f(x):', 'import os\nprint(os.sep)', 'return', 'class A(object):\n    pass\n', 'for i in range(3):',
             'x = [1, 2, 3]', 'with open(name) as f:\n    data = f.read()']
    return [tokenizer(text)['input_ids'] for text in texts[:NUM_PROMPTS]]


def instruction_set(tokenizer, model):
    """Rows as the causal-LM data builds them: input_ids (prompt + response), prompt_length, reference (every
    other one the model's own greedy response, so that some scores are above 0)."""
    rows, own = [], greedy_responses(model, prompts(tokenizer), tokenizer, 'cpu', NEW_TOKENS, batch_size=1)
    for i, ids in enumerate(prompts(tokenizer)):
        reference = 'return x' if i % 2 else own[i]
        rows.append({'input_ids': ids + tokenizer(reference)['input_ids'], 'prompt_length': len(ids),
                     'reference': reference})
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize('family', ['gpt2', 'qwen2'])
def test_batched_greedy_equals_one_prompt_at_a_time(tokenizer_dir, family):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model, ids = tiny_model(family, tokenizer), prompts(tokenizer)
    assert len({len(p) for p in ids}) > 3  # prompts of different lengths: batches are padded
    alone = greedy_responses(model, ids, tokenizer, 'cpu', NEW_TOKENS, batch_size=1)
    assert greedy_responses(model, ids, tokenizer, 'cpu', NEW_TOKENS, batch_size=4) == alone
    # a response that ends early inside a batch: stop at a token the first response generates third
    first = model.generate(input_ids=torch.tensor([ids[0]]), do_sample=False, max_new_tokens=NEW_TOKENS,
                           pad_token_id=tokenizer.pad_token_id)[0, len(ids[0]):].tolist()
    stop = first[2]
    alone = greedy_responses(model, ids, tokenizer, 'cpu', NEW_TOKENS, batch_size=1, eos_token_id=stop)
    assert alone[0] == tokenizer.decode(first[:first.index(stop) + 1], skip_special_tokens=True)
    assert greedy_responses(model, ids, tokenizer, 'cpu', NEW_TOKENS, batch_size=NUM_PROMPTS,
                            eos_token_id=stop) == alone


def test_scores_are_per_prompt_rouge_l(tokenizer_dir):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model('gpt2', tokenizer)
    data = instruction_set(tokenizer, model)
    texts = greedy_responses(model, prompts(tokenizer), tokenizer, 'cpu', NEW_TOKENS, batch_size=1)
    expected = [rouge_l(text, row['reference']) for text, row in zip(texts, data)]
    scores = rouge_l_scores(model, data, tokenizer, 'cpu', NUM_PROMPTS, NEW_TOKENS, batch_size=3)
    assert scores.tolist() == expected
    mean = generation_rouge_l(model, data, tokenizer, 'cpu', NUM_PROMPTS, NEW_TOKENS, batch_size=3)
    assert mean == pytest.approx(100.0 * sum(expected) / NUM_PROMPTS)


def worker(rank, world, port, out_dir, tokenizer_dir):
    from transformers import AutoTokenizer
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = tiny_model('gpt2', tokenizer)
        data = instruction_set(tokenizer, model)
        calls = []
        generate = model.generate

        def counting_generate(*args, **kwargs):
            calls.append(kwargs['input_ids'].shape[0])
            return generate(*args, **kwargs)

        model.generate = counting_generate
        scores = rouge_l_scores(model, data, tokenizer, 'cpu', NUM_PROMPTS, NEW_TOKENS, batch_size=2)
        mean = generation_rouge_l(model, data, tokenizer, 'cpu', NUM_PROMPTS, NEW_TOKENS, batch_size=2)
        torch.save({'scores': scores, 'mean': mean, 'calls': calls}, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_three_processes_give_the_one_process_scores(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = tiny_model('gpt2', tokenizer)
    data = instruction_set(tokenizer, model)
    expected = rouge_l_scores(model, data, tokenizer, 'cpu', NUM_PROMPTS, NEW_TOKENS, batch_size=1)
    assert expected.max() > 0  # some overlap: the order of the gathered scores is checked
    mp.spawn(worker, args=(3, free_port(), str(tmp_path), tokenizer_dir), nprocs=3, join=True)
    for rank in range(3):
        out = torch.load(tmp_path / f'rank{rank}.pt', weights_only=False)
        assert out['scores'].tolist() == expected.tolist(), rank
        assert out['mean'] == 100.0 * float(expected.mean())
        shard = len(range(rank, NUM_PROMPTS, 3))  # this rank's prompts only, two per generate call
        assert out['calls'] == [min(2, shard - start) for start in range(0, shard, 2)] * 2, rank
