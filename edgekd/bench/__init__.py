"""`edgekd benchmark`: which detector, in which precision, on this device: speed and accuracy side by side."""
