"""Finetune a pretrained encoder with plain timm + PyTorch: what `pretrain finetune` does.

    python examples/finetune_timm.py models:/invariant-encoder@latest \
        '../shared/data/cifar10/train-{000000..000009}.tar' \
        '../shared/data/cifar10/test-{000000..000001}.tar' 10
"""
import sys

import torch
import torch.nn.functional as F
import webdataset as wds
from torchvision.transforms import v2 as T

from pretrain.hub import load_encoder

model_uri, train_shards, test_shards, num_classes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = load_encoder(model_uri)  # a timm model; weights read with safetensors, nothing unpickled
model.reset_classifier(num_classes)  # timm's own linear head on the pooled features
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
