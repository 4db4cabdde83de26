"""The trainer's configs, installed with nf as the package `nf.configs` (so an installed nf finds
them by name: `nf-train --config=quickstart`, `--config=nfnet_imagenet:f3`). Each file's docstring
gives its run command and expected result."""
