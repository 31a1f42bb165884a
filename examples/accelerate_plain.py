"""MNIST in a Hugging Face accelerate loop with a fixed batch size: the baseline that accelerate_labkit.py
changes. Net, the evaluation, the data and the flags come from mnist_plain.py.

Run (MNIST extracted under DATA/mnist/MNIST/raw, see examples/README.md), on one process or several:
    python examples/accelerate_plain.py --data DATA --epochs 2 --subset 512
    torchrun --nproc_per_node 2 examples/accelerate_plain.py --data DATA --no-accel   # 2 CPU processes (gloo)
"""
import torch
import torch.nn.functional as F
import torch.optim as optim
from accelerate import Accelerator
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader

from mnist_plain import Net, mnist, parser, test


def main(argv=None):
    args = parser().parse_args(argv)
    torch.manual_seed(args.seed)
    accelerator = Accelerator(cpu=args.no_accel)

    train_set, test_set = mnist(args)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=args.test_batch_size)

    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, steps = torch.zeros((), device=accelerator.device), 0
        for data, target in train_loader:      # on accelerator.device already
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            accelerator.backward(loss)
            optimizer.step()
            total += loss.detach()
            steps += 1
        loss = total / steps                    # this process's mean loss
        test_loss, accuracy = test(model, accelerator.device, test_loader)
        accelerator.print(f"epoch {epoch}: train loss {accelerator.reduce(loss, 'mean').item():.4f} in {steps} "
                          f"steps, test loss {test_loss:.4f}, accuracy {accuracy:.1%}, "
                          f"lr {optimizer.param_groups[0]['lr']:.3g}")
        scheduler.step()


if __name__ == "__main__":
    main()
