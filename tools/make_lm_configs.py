"""Writes the causal-LM configs from one table, so every method of a pair shares data, models and schedule.

- ``configs/causal_lm/``: GPU set-ups that download their models and data from the Hugging Face hub:
  Qwen2.5-1.5B-Instruct -> Qwen2.5-0.5B and GPT-2 XL -> GPT-2 on databricks-dolly-15k (instruction data, loss on
  the response tokens, ROUGE-L of greedy generations on held-out prompts). GPT-2 XL is fine-tuned on the same data
  first (``gpt2_xl_dolly_teacher_sft.yaml``), as MiniLLM and DistiLLM do; the Qwen teacher is instruction-tuned already.
  Two larger pairs for 8 GPUs with torchrun (FSDP on both models, gradient checkpointing, a chunked loss):
  Llama-3.1-8B-Instruct -> Llama-3.2-1B-Instruct and Qwen2.5-7B-Instruct -> Qwen2.5-0.5B-Instruct, with KD, PESF-KD
  (LoRA on every teacher block, ``_pesfkd``; on the last two, ``_pesfkd_last2``) and FT-KD.
- ``configs/causal_lm_offline/``: what runs anywhere without internet: the Python standard library's source as
  text (split by file), a byte-level BPE tokenizer trained on it, a 4-layer GPT-2-style teacher trained first
  (``gpt2_4l_stdlib_teacher_ce.yaml``) and a 2-layer student distilled on a smaller transfer set.

``python tools/make_lm_configs.py`` rewrites them; ``tests/test_lm_configs.py`` checks that the committed files are
what this script writes and trains every config for two steps with tiny models of the same architectures.
"""
import copy
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))

from yaml_writer import dump_config, import_call, import_get  # noqa: E402

# method -> (title, TokenKDLoss kwargs beyond the shared ones, teacher side: 'frozen' | 'lora' | 'full')
METHODS = {
    'kd': ('token-level KD, forward KL (Hinton et al.)', {'divergence': 'forward_kl'}, 'frozen'),
    'rkl': ('reverse KL (MiniLLM, token level)', {'divergence': 'reverse_kl'}, 'frozen'),
    'jsd': ('generalized JSD, beta 0.5 (GKD)', {'divergence': 'jsd', 'jsd_beta': 0.5}, 'frozen'),
    'skew_kl': ('skew forward KL, lambda 0.1 (DistiLLM)', {'divergence': 'skew_forward_kl', 'skew': 0.1}, 'frozen'),
    'skew_rkl': ('skew reverse KL, lambda 0.1 (DistiLLM)', {'divergence': 'skew_reverse_kl', 'skew': 0.1}, 'frozen'),
    'taid': ('TAID, t from 0.4 (Shing et al.)', {'divergence': 'taid', 'taid': {
        't_start': 0.4, 't_end': 1.0, 'rate': 0.0005, 'momentum_decay': 0.99, 'total_steps': None}}, 'frozen'),
    'zscore': ('Z-score KD, forward KL on standardized logits, tau 2 (Sun et al.)',
               {'divergence': 'forward_kl', 'logit_standardization': True, 'temperature': 2.0}, 'frozen'),
    'pesfkd': ('PESF-KD: LoRA on the frozen teacher, eqs. 7-8 at token level', {'teacher_update': 'adapters'}, 'lora'),
    'ftkd': ('FT-KD: the whole teacher fine-tuned online', {'teacher_update': 'full'}, 'full'),
    'pesfkd_last2': ('PESF-KD: LoRA on the last 2 teacher blocks, eqs. 7-8 at token level', {
        'teacher_update': 'adapters'}, 'lora_last2'),
}
DEFAULT_METHODS = ('kd', 'rkl', 'jsd', 'skew_kl', 'skew_rkl', 'taid', 'zscore', 'pesfkd', 'ftkd')
BIG_METHODS = ('kd', 'pesfkd', 'pesfkd_last2', 'ftkd')
DOLLY = {
    'kind': 'instruction',
    'hub_name': 'databricks/databricks-dolly-15k',
    'prompt_template': 'Below is an instruction that describes a task, paired with an input that provides further '
                       'context. Write a response that appropriately completes the request.\n\n'
                       '### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n',
    'empty_field_templates': {'context': 'Below is an instruction that describes a task. Write a response that '
                                         'appropriately completes the request.\n\n### Instruction:\n{instruction}'
                                         '\n\n### Response:\n'},
    'response_field': 'response',
    'max_length': 512,
    'held_out': {'validation': 500, 'test': 500, 'seed': 0},
    'max_samples': {'train': None, 'validation': 500, 'test': 500},
    'dataset_id_map': {'train': 'dolly/train', 'validation': 'dolly/val', 'test': 'dolly/test'},
}
STDLIB = {
    'kind': 'text',
    'data_files': {split: import_call('pesf_ext.lm.data.stdlib_source_files', {'split': split})
                   for split in ('train', 'validation', 'test')},
    'block_size': 128,
    'max_samples': {'train': None, 'validation': 400, 'test': 400},
    'dataset_id_map': {'train': 'stdlib/train', 'validation': 'stdlib/val', 'test': 'stdlib/test'},
}
OFFLINE_TOKENIZER = import_call('pesf_ext.lm.data.offline_tokenizer_path', {'vocab_size': 1024})


def hub_model(label, name, **extra):
    return {'key': label, 'config_kwargs': {'pretrained_model_name_or_path': name},
            'tokenizer_kwargs': {'pretrained_model_name_or_path': name}, 'model_kwargs': {
                'pretrained_model_name_or_path': name, **extra}}


def offline_model(label, layers, width, heads):
    return {'key': label, 'config_kwargs': {'model_type': 'gpt2', 'n_layer': layers, 'n_embd': width, 'n_head': heads,
                                            'n_positions': 128},
            'tokenizer_kwargs': {'pretrained_model_name_or_path': copy.deepcopy(OFFLINE_TOKENIZER)},
            'model_kwargs': {}}


# pair name -> set-up shared by its methods
PAIRS = {
    'causal_lm/qwen2.5_1.5b_0.5b_dolly': dict(student_ce='qwen2.5_0.5b_dolly_student_ce', teacher_ce=None,
        teacher=hub_model('Qwen2.5-1.5B-Instruct', 'Qwen/Qwen2.5-1.5B-Instruct'),
        student=hub_model('Qwen2.5-0.5B', 'Qwen/Qwen2.5-0.5B'), data=DOLLY, body='model',
        ckpt_root='./resource/ckpt/causal_lm/qwen2.5_dolly', epochs=3, batch=8, eval_batch=16, lr=2e-5,
        teacher_lr=1e-4, ft_teacher_lr=1e-5, amp='bf16', rouge_samples=200,
        note='GPU (one H100/H200: about 20 GB for KD, more for FT-KD); downloads the models and the data'),
    'causal_lm/gpt2_xl_gpt2_dolly': dict(student_ce='gpt2_dolly_student_ce', teacher_ce='gpt2_xl_dolly_teacher_sft',
        teacher=hub_model('gpt2-xl', 'openai-community/gpt2-xl'), student=hub_model('gpt2', 'openai-community/gpt2'),
        data=DOLLY, body='transformer', ckpt_root='./resource/ckpt/causal_lm/gpt2_dolly', epochs=3, batch=8,
        eval_batch=16, lr=5e-5, teacher_lr=1e-4, ft_teacher_lr=1e-5, amp='bf16', rouge_samples=200,
        note='GPU; downloads the models and the data; run gpt2_xl_dolly_teacher_sft.yaml first (teacher fine-tuned on '
             'the same data)'),
    'causal_lm_offline/gpt2_4l_gpt2_2l_stdlib': dict(student_ce='gpt2_2l_stdlib_student_ce',
                                                     teacher_ce='gpt2_4l_stdlib_teacher_ce',
        teacher=offline_model('gpt2-4l-stdlib', 4, 256, 4), student=offline_model('gpt2-2l', 2, 128, 2),
        data=STDLIB, body='transformer', ckpt_root='./resource/ckpt/causal_lm_offline/stdlib', epochs=10, batch=16,
        eval_batch=32, lr=1e-3, teacher_lr=1e-3, ft_teacher_lr=1e-4, amp=None, rouge_samples=0,
        teacher_samples=8000, teacher_epochs=1, transfer_samples=256,
        note='CPU, offline: Python standard library source as text; run gpt2_4l_stdlib_teacher_ce.yaml first'),
}
# 8 GPUs (80 GB) with torchrun: both models sharded by FSDP, activations recomputed in backward, the loss over chunks
# of tokens (the bytes behind these choices: the Memory section of docs/causal_lm.md, tools/lm_benchmark.py --memory)
FSDP8 = {'fsdp': ['student', 'teacher'], 'loss_chunk_tokens': 256, 'nproc': 8}
BIG_NOTE = ('8 GPUs of 80 GB (H100/A100) with torchrun, FSDP over both models; downloads the models and the data'
            '{gated}')
BIG_PAIRS = {
    # one tokenizer and one 128,256-row output layer for both (Llama 3 vocabulary)
    'causal_lm/llama3.1_8b_3.2_1b_dolly': dict(
        teacher=hub_model('Llama-3.1-8B-Instruct', 'meta-llama/Llama-3.1-8B-Instruct'),
        student=hub_model('Llama-3.2-1B-Instruct', 'meta-llama/Llama-3.2-1B-Instruct'),
        ckpt_root='./resource/ckpt/causal_lm/llama3_dolly', lr=1e-5, ft_teacher_lr=5e-6,
        note=BIG_NOTE.format(gated=' (gated: accept the Llama license on the hub, then `huggingface-cli login`)')),
    # one tokenizer of 151,665 ids; output rows padded past it: 152,064 (7B), 151,936 (0.5B)
    'causal_lm/qwen2.5_7b_0.5b_dolly': dict(
        teacher=hub_model('Qwen2.5-7B-Instruct', 'Qwen/Qwen2.5-7B-Instruct'),
        student=hub_model('Qwen2.5-0.5B-Instruct', 'Qwen/Qwen2.5-0.5B-Instruct'),
        ckpt_root='./resource/ckpt/causal_lm/qwen2.5_7b_dolly', lr=2e-5, ft_teacher_lr=5e-6,
        note=BIG_NOTE.format(gated='')),
}
for _pair, _setup in BIG_PAIRS.items():
    _setup.update(student_ce=None, teacher_ce=None, data=DOLLY, body='model', epochs=3, batch=4, eval_batch=8,
                  teacher_lr=1e-4, amp='bf16', rouge_samples=200, methods=BIG_METHODS, speed=FSDP8,
                  teacher_untied=['lm_head'])  # the 7B/8B teachers' output layers are untied, the students' tied
PAIRS.update(BIG_PAIRS)


def loader(dataset_id, batch, shuffle):
    sampler = 'torch.utils.data.RandomSampler' if shuffle else 'torch.utils.data.SequentialSampler'
    return {'dataset_id': dataset_id, 'sampler': {'class_or_func': import_get(sampler), 'kwargs': None},
            'kwargs': {'batch_size': batch, 'num_workers': 0, 'pin_memory': True, 'drop_last': False},
            'collate_fn': 'CausalLMCollator', 'requires_supp': False}


def side(frozen_modules=()):
    return {'forward_proc': 'forward_batch_as_kwargs', 'sequential': [], 'forward_hook': {'input': [], 'output': []},
            'requires_grad': True, 'frozen_modules': list(frozen_modules)}


def teacher_ckpt(pair, setup):
    return f'{setup["ckpt_root"]}/teacher/{setup["teacher"]["key"]}.pt' if setup['teacher_ce'] else None


def common(setup, data):
    ids = data['dataset_id_map']
    result = {'dependencies': [{'name': 'pesf_ext'}, {'name': 'pesf_ext.lm'}], 'datasets': {'lm': data}}
    if setup['amp']:
        result['speed'] = {'amp': setup['amp']}
    return result, ids


def multi_gpu_speed(setup, teacher_side):
    """``speed`` of a pair run over several GPUs: FSDP on both models, gradient checkpointing on each model that
    backpropagates (the student; the teacher too unless it is frozen), the loss over chunks of tokens."""
    fsdp = setup['speed']
    return {'amp': setup['amp'], 'fsdp': list(fsdp['fsdp']),
            'gradient_checkpointing': ['student'] + ([] if teacher_side == 'frozen' else ['teacher']),
            'loss_chunk_tokens': fsdp['loss_chunk_tokens']}


def schedule(setup, epochs, module_wise, lr):
    return {'optimizer': {'key': 'optimizer_no_decay', 'kwargs': {'optimizer_key': 'AdamW', 'lr': lr,
                                                                   'weight_decay': 0.01},
                          'module_wise_configs': module_wise, 'filters_params': True, 'max_grad_norm': 1.0,
                          'grad_accum_step': 1},
            'scheduler': {'key': 'get_linear_schedule_with_warmup', 'kwargs': {'num_warmup_steps': 0,
                                                                               'num_training_steps': None},
                          'scheduling_step': 1}}


def test_section(setup, ids):
    section = {'test_data_loader': loader(ids['test'], setup['eval_batch'], False)}
    if setup['rouge_samples']:
        section['rouge_samples'] = setup['rouge_samples']
    return section


def ce_config(pair, setup, which):
    """Next-token CE alone: the teacher's fine-tuning (``which`` = 'teacher') or the student alone ('student')."""
    data = copy.deepcopy(setup['data'])
    samples = setup.get('teacher_samples' if which == 'teacher' else 'transfer_samples')
    if samples:
        data['max_samples']['train'] = samples
    config, ids = common(setup, data)
    model = copy.deepcopy(setup[which])
    model['src_ckpt'] = None
    model['dst_ckpt'] = (teacher_ckpt(pair, setup) if which == 'teacher' else
                         f'{setup["ckpt_root"]}/student_ce/{setup["student"]["key"]}.pt')
    config['models'] = {'model': model}
    epochs = setup.get('teacher_epochs', setup['epochs']) if which == 'teacher' else setup['epochs']
    lr = setup['ft_teacher_lr'] if which == 'teacher' and 'offline' not in pair else setup['lr']
    train = {'log_freq': 50, 'num_epochs': epochs,
             'train_data_loader': loader(ids['train'], setup['batch'], True),
             'val_data_loader': loader(ids['validation'], setup['eval_batch'], False),
             'model': side()}
    train.update(schedule(setup, epochs, [], lr))
    train['criterion'] = {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {'lm': {
        'criterion': {'key': 'NextTokenLoss', 'kwargs': {}},
        'criterion_wrapper': {'key': 'SimpleLossWrapper', 'kwargs': {
            'input': {'is_from_teacher': False, 'module_path': '.', 'io': 'output'}, 'target': {'uses_label': True}}},
        'weight': 1.0}}}}
    config['train'] = train
    config['test'] = test_section(setup, ids)
    return config


def kd_config(pair, setup, method):
    title, extra, teacher_side = METHODS[method]
    data = copy.deepcopy(setup['data'])
    if setup.get('transfer_samples'):
        data['max_samples']['train'] = setup['transfer_samples']
    config, ids = common(setup, data)
    teacher = copy.deepcopy(setup['teacher'])
    teacher['src_ckpt'] = teacher_ckpt(pair, setup)
    student = copy.deepcopy(setup['student'])
    student['src_ckpt'] = None
    student['dst_ckpt'] = f'{setup["ckpt_root"]}/{method}/{student["key"]}_from_{teacher["key"]}.pt'
    config['models'] = {'teacher_model': teacher, 'student_model': student}
    teacher_train = side()
    module_wise = [{'module': setup['body'], 'is_teacher': False, 'kwargs': {'lr': setup['lr']}}]
    if setup.get('speed'):
        config['speed'] = multi_gpu_speed(setup, teacher_side)
    if teacher_side == 'frozen':
        teacher_train['requires_grad'] = False
    elif teacher_side.startswith('lora'):
        last_layers = int(teacher_side[len('lora_last'):]) if teacher_side.startswith('lora_last') else None
        teacher_train['auxiliary_model_wrapper'] = {'key': 'LoRATeacher', 'kwargs': {
            'r': 16, 'lora_alpha': 32, 'lora_dropout': 0.0, 'target_modules': None, 'last_layers': last_layers}}
        module_wise.append({'module': 'model', 'is_teacher': True, 'kwargs': {'lr': setup['teacher_lr']}})
    else:
        for module in [setup['body']] + setup.get('teacher_untied', []):  # an untied output layer is outside the body
            module_wise.append({'module': module, 'is_teacher': True, 'kwargs': {'lr': setup['ft_teacher_lr']}})
    train = {'log_freq': 50, 'num_epochs': setup['epochs'],
             'train_data_loader': loader(ids['train'], setup['batch'], True),
             'val_data_loader': loader(ids['validation'], setup['eval_batch'], False),
             'teacher': teacher_train, 'student': side()}
    train.update(schedule(setup, setup['epochs'], module_wise, setup['lr']))
    kwargs = {'student_module_path': '.', 'student_module_io': 'output', 'teacher_module_path': '.',
              'teacher_module_io': 'output', 'temperature': 1.0, 'alpha': 0.5, 'beta': 0.5,
              'divergence': 'forward_kl', 'teacher_update': 'frozen'}
    kwargs.update(copy.deepcopy(extra))
    train['criterion'] = {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {method: {
        'criterion': {'key': 'TokenKDLoss', 'kwargs': kwargs}, 'weight': 1.0}}}}
    config['train'] = train
    config['test'] = test_section(setup, ids)
    return config, title


def header(path, title, note, nproc=None):
    launcher = f'torchrun --nproc_per_node={nproc}' if nproc else 'python'
    return [title, 'Generated by tools/make_lm_configs.py; run with',
            f'  {launcher} tools/causal_lm.py --config {path} --seed 0', note + '.']


def all_configs():
    """{path relative to the repository: (config dict, header lines)}."""
    files = {}
    for pair, setup in PAIRS.items():
        folder, prefix = pair.split('/')
        teacher_label, student_label = setup['teacher']['key'], setup['student']['key']
        nproc = (setup.get('speed') or {}).get('nproc')
        for method in setup.get('methods', DEFAULT_METHODS):
            path = f'configs/{folder}/{prefix}_{method}.yaml'
            config, title = kd_config(pair, setup, method)
            files[path] = (config, header(path, f'{title}: {teacher_label} -> {student_label}', setup['note'], nproc))
        if not setup['student_ce']:
            continue
        path = f'configs/{folder}/{setup["student_ce"]}.yaml'
        files[path] = (ce_config(pair, setup, 'student'), header(
            path, f'{student_label} trained alone (next-token CE) on the same data', setup['note']))
        if setup['teacher_ce']:
            path = f'configs/{folder}/{setup["teacher_ce"]}.yaml'
            files[path] = (ce_config(pair, setup, 'teacher'), header(
                path, f'the teacher {teacher_label} trained on the data (next-token CE)', setup['note']))
    return files


def main():
    for path, (config, lines) in all_configs().items():
        full = os.path.join(ROOT, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'w') as f:
            f.write(dump_config(config, lines))
        print(path)


if __name__ == '__main__':
    main()
