"""MNIST in a Lightning Trainer with a batch size a labkit strategy chooses: lightning_plain.py with the
lines marked # labkit changed. The AdaptiveBatchSize callback steps the strategy after every epoch, on the
epoch's mean training loss, and scales the LR by √(B_new/B_old); its loader serves the strategy's size.

Run (MNIST extracted under DATA/mnist/MNIST/raw, see examples/README.md):
    python examples/lightning_labkit.py --data DATA --epochs 2 --subset 512
"""
import labkit.strategies as s  # labkit
import lightning as L
import torch
import torch.nn.functional as F
from labkit.integrations.lightning import AdaptiveBatchSize  # labkit
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader

from mnist_plain import Net, mnist, parser


class LitNet(L.LightningModule):
    """Net trained with Adadelta and a StepLR decay, as in mnist_plain.py."""

    def __init__(self, lr: float, gamma: float):
        super().__init__()
        self.net, self.lr, self.gamma = Net(), lr, gamma

    def training_step(self, batch, batch_idx):
        data, target = batch
        loss = F.nll_loss(self.net(data), target)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        data, target = batch
        output = self.net(data)
        self.log_dict({"test_loss": F.nll_loss(output, target),
                       "accuracy": (output.argmax(dim=1) == target).float().mean()}, prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adadelta(self.parameters(), lr=self.lr)
        return [optimizer], [StepLR(optimizer, step_size=1, gamma=self.gamma)]


def main(argv=None):
    args = parser().parse_args(argv)
    L.seed_everything(args.seed)
    train_set, test_set = mnist(args)
    adaptive = AdaptiveBatchSize(s.build("loss", b_init=args.batch_size, max_batch=16 * args.batch_size))  # labkit
    train_loader = adaptive.loader(train_set, seed=args.seed)  # labkit
    test_loader = DataLoader(test_set, batch_size=args.test_batch_size)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu" if args.no_accel else "auto",
                        callbacks=[adaptive], use_distributed_sampler=False)  # labkit
    trainer.fit(LitNet(args.lr, args.gamma), train_loader, test_loader)
    print({name: round(value.item(), 4) for name, value in trainer.callback_metrics.items()})


if __name__ == "__main__":
    main()
