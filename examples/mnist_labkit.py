"""MNIST with a batch size a labkit strategy chooses: mnist_plain.py with 6 lines changed (marked # labkit).
The loss-based strategy grows the batch while the training loss falls; the LR follows by √(B_new/B_old).

Run (MNIST extracted under DATA/mnist/MNIST/raw, see examples/README.md):
    python examples/mnist_labkit.py --data DATA                          # 14 epochs on 60000 images
    python examples/mnist_labkit.py --data DATA --epochs 2 --subset 512  # a few seconds on a CPU
"""
import argparse
import os

import labkit.strategies as s  # labkit
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from labkit.batching import StrategyBatchSampler  # labkit
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms


class Net(nn.Module):
    """pytorch/examples' MNIST network: two 3×3 convolutions, max-pooling, dropout, two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):                     # (B, 1, 28, 28) -> log-probabilities (B, 10)
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def train(model, device, train_loader, optimizer):
    """One epoch; returns the mean training loss over its batches and the number of steps."""
    model.train()
    total, steps = torch.zeros((), device=device), 0
    for data, target in train_loader:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        total += loss.detach()                # no .item(): a sync point per step on a GPU
        steps += 1
    return (total / steps).item(), steps


def test(model, device, test_loader):
    """Mean test loss and accuracy."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            loss += F.nll_loss(output, target, reduction="sum").item()
            correct += (output.argmax(dim=1) == target).sum().item()
    return loss / len(test_loader.dataset), correct / len(test_loader.dataset)


def mnist(args):
    """The training and test sets from ARGS.data/mnist (torchvision's layout), the first --subset of each."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    root = os.path.join(args.data, "mnist")
    sets = [datasets.MNIST(root, train=train, download=False, transform=transform) for train in (True, False)]
    return [Subset(dataset, range(min(args.subset, len(dataset)))) if args.subset else dataset for dataset in sets]


def parser():
    """The command-line flags every MNIST example takes."""
    p = argparse.ArgumentParser(description="MNIST example")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--test-batch-size", type=int, default=1000, help="test batch size (default 1000)")
    p.add_argument("--epochs", type=int, default=14, help="epochs to train (default 14)")
    p.add_argument("--lr", type=float, default=1.0, help="Adadelta learning rate (default 1.0)")
    p.add_argument("--gamma", type=float, default=0.7, help="LR decay per epoch (default 0.7)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--no-accel", action="store_true", help="train on the CPU even with a GPU")
    p.add_argument("--data", default=os.environ.get("LABKIT_DATA", "data"),
                   help="folder holding mnist/MNIST/raw (default: $LABKIT_DATA, else ./data)")
    p.add_argument("--subset", type=int, default=0, help="use the first N training and test images (0: all)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_accel else "cpu")

    train_set, test_set = mnist(args)
    strategy = s.build("loss", b_init=args.batch_size, max_batch=16 * args.batch_size)  # labkit
    train_loader = DataLoader(train_set, batch_sampler=StrategyBatchSampler(strategy, len(train_set)))  # labkit
    test_loader = DataLoader(test_set, batch_size=args.test_batch_size)

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    coupling = s.LRCoupling(optimizer, strategy.batch_size, rule="sqrt")  # labkit
    for epoch in range(1, args.epochs + 1):
        loss, steps = train(model, device, train_loader, optimizer)
        test_loss, accuracy = test(model, device, test_loader)
        print(f"epoch {epoch}: train loss {loss:.4f} in {steps} steps, test loss {test_loss:.4f}, "
              f"accuracy {accuracy:.1%}, lr {optimizer.param_groups[0]['lr']:.3g}")
        scheduler.step()
        coupling.step(strategy.step(loss=loss))  # labkit


if __name__ == "__main__":
    main()
