"""Houlsby adapters in every layer of a Hugging Face BERT teacher, and one PESF-KD step in a plain loop.

    python examples/hf_adapters.py

A randomly initialised small BERT stands in for your fine-tuned teacher (no download); with yours, load it with
``AutoModelForSequenceClassification.from_pretrained(...)`` and keep the patterns. The patterns put one bottleneck
adapter after the attention output projection and one after the feed-forward output projection of every layer
(Houlsby et al. 2019, the PESF-KD paper's GLUE placement): '*' matches one dotted component, so
``bert.encoder.layer.*.output.dense`` selects the feed-forward output of each layer and nothing below it. Both
targets are ``nn.Linear``, whose sizes the type tells, so no ``input_shape`` is needed.
"""
import torch
from transformers import BertConfig, BertForSequenceClassification

import pesf_ext.plain as pk

HOULSBY = [{'modules': ['bert.encoder.layer.*.attention.output.dense', 'bert.encoder.layer.*.output.dense'],
            'kind': 'bottleneck', 'bottleneck': 64, 'activation': 'gelu'}]


def small_bert(layers, seed):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def main():
    teacher, student = small_bert(layers=4, seed=0), small_bert(layers=2, seed=1)
    input_ids = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(3))
    teacher.eval()
    with torch.no_grad():
        before = teacher(input_ids=input_ids).logits
    adapters = pk.add_adapters(teacher, HOULSBY)
    with torch.no_grad():
        same = torch.equal(teacher(input_ids=input_ids).logits, before)  # zero-initialised: the teacher unchanged
    trainable, total = pk.count_parameters(adapters)[0], pk.count_parameters(teacher)[1]
    print(f'{len(adapters)} adapters, {trainable:,} trainable parameters beside {total:,} frozen ones; '
          f'adapted teacher reproduces the original logits: {same}')
    loss_fn = pk.pesfkd_loss(temperature=2.0, alpha=0.5, beta=0.5)
    optimizer = torch.optim.AdamW([{'params': student.parameters(), 'lr': 5e-5},
                                   {'params': adapters.parameters(), 'lr': 1e-3}])
    student.train()
    loss = loss_fn(student(input_ids=input_ids).logits, teacher(input_ids=input_ids).logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f'one PESF-KD step: loss {loss.item():.4f}')
    return teacher, adapters, same


if __name__ == '__main__':
    main()
