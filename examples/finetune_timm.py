"""Finetune a pretrained encoder with plain timm + PyTorch: what `pretrain finetune` does.

The pulled folder is a timm model folder (config.json in timm's format + model.safetensors), so
timm opens it by itself; nothing from this project is imported here.

    pretrain pull models:/invariant-encoder/latest --out enc/
    python examples/finetune_timm.py enc/ \
        '../shared/data/cifar10/train-{000000..000009}.tar' \
        '../shared/data/cifar10/test-{000000..000001}.tar' 10

(An encoder trained with `encoder.stem=cifar` needs `pretrain.models.encoder.apply_stem` first: see its
model card.)
"""
import sys

import timm
import torch
import torch.nn.functional as F
import webdataset as wds
from torchvision.transforms import v2 as T

folder, train_shards, test_shards = sys.argv[1:4]
num_classes = int(sys.argv[4])
# timm reads the architecture, its arguments, input size, mean and std from config.json and the
# weights from model.safetensors (never a pickle when that file is there); num_classes adds a
# fresh linear head on the pooled features.
model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=num_classes)
cfg = model.pretrained_cfg
prep = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Resize(cfg["input_size"][1:]),
                  T.Normalize(cfg["mean"], cfg["std"])])


def batches(shards, train):
    data = wds.WebDataset(shards, shardshuffle=100 if train else False).shuffle(1000 if train else 0)
    return data.decode("pil").to_tuple("jpg;png", "cls").map_tuple(prep, int).batched(64)


opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
model.train()
for images, labels in batches(train_shards, train=True):
    loss = F.cross_entropy(model(images), torch.as_tensor(labels))
    opt.zero_grad()
    loss.backward()
    opt.step()
model.eval()
correct = total = 0
with torch.no_grad():
    for images, labels in batches(test_shards, train=False):
        correct += (model(images).argmax(1) == torch.as_tensor(labels)).sum().item()
        total += len(labels)
print(f"test accuracy {correct / total:.2%} on {total} images")
