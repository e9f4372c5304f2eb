"""Small conv building blocks shared by the student networks."""

from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def up_conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """x2 upsampling with a learned transposed conv, as in RD's decoder."""
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 2, 2, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels),
                                  nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.body(x))
