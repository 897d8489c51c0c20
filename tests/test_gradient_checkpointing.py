"""speed.gradient_checkpointing: the same loss and gradients with fewer bytes kept for the backward (tiny LLaMA and
Qwen2 students, a LoRA teacher); a frozen teacher is left alone; a model without support is one ConfigError line."""
import pytest
import torch
from torch import nn

transformers = pytest.importorskip('transformers')
pytest.importorskip('peft')

from pesf_ext.engine.errors import ConfigError  # noqa: E402
from pesf_ext.engine.fsdp import enable_gradient_checkpointing  # noqa: E402
from pesf_ext.engine.speed import speed_options  # noqa: E402

VOCAB, LENGTH = 64, 24


def tiny(family):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    sizes = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    if family == 'llama':
        return LlamaForCausalLM(LlamaConfig(**sizes))
    return Qwen2ForCausalLM(Qwen2Config(**sizes, tie_word_embeddings=True))


def lora_teacher(family):
    from pesf_ext.lm.lora import LoRATeacher
    torch.manual_seed(1)
    teacher = LoRATeacher(tiny(family), torch.device('cpu'), r=4, lora_alpha=8)
    for name, p in teacher.named_parameters():  # LoRA's B starts at zero: make the adapters matter
        if 'lora_B' in name:
            nn.init.normal_(p, std=0.1)
    return teacher


def batch():
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(2))
    return {'input_ids': ids, 'labels': ids}


def loss_grads_and_saved_bytes(model):
    """The loss, the gradients of every trainable parameter and the bytes autograd keeps for the backward."""
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch()).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, saved[0]


def check_same_with_fewer_bytes(build):
    plain, checkpointed = build(), build()
    assert enable_gradient_checkpointing(checkpointed, 'student') is True
    loss, grads, plain_bytes = loss_grads_and_saved_bytes(plain)
    loss_ckpt, grads_ckpt, ckpt_bytes = loss_grads_and_saved_bytes(checkpointed)
    assert torch.allclose(loss, loss_ckpt, rtol=0, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], rtol=1e-5, atol=1e-7), name
        assert grads[name].abs().sum() > 0, name
    assert ckpt_bytes < 0.7 * plain_bytes, (ckpt_bytes, plain_bytes)
    return plain_bytes, ckpt_bytes


@pytest.mark.parametrize('family', ['llama', 'qwen2'])
def test_student_same_loss_and_gradients_fewer_saved_bytes(family):
    def build():
        return tiny(family).train()
    check_same_with_fewer_bytes(build)


@pytest.mark.parametrize('family', ['llama', 'qwen2'])
def test_lora_teacher_adapters_same_gradients_fewer_saved_bytes(family):
    """LoRATeacher keeps its frozen base (blocks included) in eval mode; the blocks are still checkpointed, and the
    adapters get the same gradients without forcing the embeddings' output to require grad."""
    def build():
        return lora_teacher(family).train()
    check_same_with_fewer_bytes(build)
    teacher = build()
    enable_gradient_checkpointing(teacher, 'teacher')
    network = teacher.model.get_base_model()
    assert getattr(network, '_require_grads_hook', None) is None
    assert not any(m.training for m in network.model.layers)  # the pre-hook restores the eval flag after forward
    loss_grads_and_saved_bytes(teacher)
    assert not any(m.training for m in network.model.layers)


def test_frozen_teacher_is_left_alone():
    teacher = tiny('qwen2').eval().requires_grad_(False)
    assert enable_gradient_checkpointing(teacher, 'teacher') is False
    assert not any(getattr(m, 'gradient_checkpointing', False) for m in teacher.modules())


def test_model_without_support_is_a_config_error():
    with pytest.raises(ConfigError, match=r'^speed.gradient_checkpointing: the student \(Sequential\) does not '):
        enable_gradient_checkpointing(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), 'student')


def test_yaml_lists_and_bad_names():
    options = speed_options({'speed': {'gradient_checkpointing': ['student', 'teacher'], 'fsdp': 'teacher'}})
    assert options.gradient_checkpointing == ('student', 'teacher') and options.fsdp == ('teacher',)
    assert 'gradient_checkpointing=student,teacher' in options.describe()
    with pytest.raises(ConfigError, match=r'^speed.gradient_checkpointing: unknown model `students`'):
        speed_options({'speed': {'gradient_checkpointing': ['students']}})
    with pytest.raises(ConfigError, match=r'^speed.fsdp: a list of models'):
        speed_options({'speed': {'fsdp': True}})
