"""MNIST in a Hugging Face accelerate loop with a batch size a labkit strategy chooses: accelerate_plain.py
with the lines marked # labkit changed. adaptive_loader shards each global batch over the processes; agree
averages the training loss over them, rank 0 decides, and every process takes the same batch size and LR.

Run (MNIST extracted under DATA/mnist/MNIST/raw, see examples/README.md), on one process or several:
    python examples/accelerate_labkit.py --data DATA --epochs 2 --subset 512
    torchrun --nproc_per_node 2 examples/accelerate_labkit.py --data DATA --no-accel   # 2 CPU processes (gloo)
"""
import labkit.strategies as s  # labkit
import torch
import torch.nn.functional as F
import torch.optim as optim
from accelerate import Accelerator
from labkit.integrations.accelerate import adaptive_loader, agree  # labkit
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader

from mnist_plain import Net, mnist, parser, test


def main(argv=None):
    args = parser().parse_args(argv)
    torch.manual_seed(args.seed)
    accelerator = Accelerator(cpu=args.no_accel)

    train_set, test_set = mnist(args)
    strategy = s.build("loss", b_init=args.batch_size, max_batch=16 * args.batch_size)  # labkit
    train_loader = adaptive_loader(accelerator, train_set, strategy, seed=args.seed)  # labkit
    test_loader = DataLoader(test_set, batch_size=args.test_batch_size)

    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    model, optimizer = accelerator.prepare(model, optimizer)  # labkit
    coupling = s.LRCoupling(optimizer, strategy.batch_size, rule="sqrt")  # labkit
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
        agree(strategy, loss=loss, coupling=coupling)  # labkit


if __name__ == "__main__":
    main()
